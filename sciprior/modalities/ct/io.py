"""CT DICOM in Hounsfield units: reading slices and series, and writing a derived CT slice.

Reading (:func:`read_ct_dicom`): one single-frame CT image -> ``HU = stored * RescaleSlope + RescaleIntercept``
(the generic reader, :func:`sciprior.io.dicom.read_dicom_image`). Pixels outside the scanner's reconstruction
field of view carry padding (``PixelPaddingValue``, or values such as -2000 / -3024 HU); they are flagged in
``padding`` and, like every value below ``hu_floor`` (default -1024 HU, air), set to ``hu_floor`` so the
image is physical (attenuation >= 0). :func:`read_ct_grid` reads a file or series as an LPS
:class:`~sciprior.io.grid.VolumeGrid` (the reconstruction adapter and the training reader both use it).

Writing: :func:`write_ct_dicom` writes a derived CT image with the reference's geometry and patient/study
attributes (new series and instance UIDs), atomically. Errors name the file and what is wrong.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sciprior.io.atomic import atomic_write
from sciprior.io.dicom import DicomImage, DicomSeries, read_dicom_grid, read_dicom_image, stack_series
from sciprior.io.grid import VolumeGrid

#: below this (HU) a value can only be padding outside the reconstructed field of view
PADDING_HU_THRESHOLD = -1500.0


def read_ct_dicom(path: str | os.PathLike, hu_floor: float = -1024.0) -> DicomImage:
    """One CT slice in HU (``values``: ``(H, W)`` float32; padding and values below the floor set to the floor).

    Raises FileNotFoundError (missing) or ValueError (not DICOM, not CT, multi-frame, undecodable, no pixel
    spacing), naming the file.
    """
    img = read_dicom_image(path, modality="CT", who="read_ct_dicom")
    padding = img.padding | (img.values < PADDING_HU_THRESHOLD)
    hu = np.where(padding, hu_floor, np.maximum(img.values, hu_floor)).astype(np.float32)
    return dataclasses.replace(img, values=hu, padding=padding)


def read_ct_series(paths: str | os.PathLike | Sequence[str | os.PathLike], hu_floor: float = -1024.0) -> DicomSeries:
    """CT DICOM files of one series (one file or several slices) as a ``(columns, rows, slices)`` HU volume,
    sorted along the slice normal (:func:`sciprior.io.dicom.stack_series`)."""
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_ct_series: no files given")
    return stack_series([read_ct_dicom(p, hu_floor=hu_floor) for p in paths], who="read_ct_series")


def read_ct_grid(paths: Sequence[Path], key: str = "input") -> VolumeGrid:
    """A CT DICOM file or series in HU as an LPS :class:`VolumeGrid` with the affine from the DICOM position,
    orientation and spacing; errors as :class:`~sciprior.io.paths.InputError` naming ``key``."""
    return read_dicom_grid(paths, read_ct_dicom, key)


def write_ct_dicom(path: str | os.PathLike, hu: np.ndarray, reference: DicomImage,
                   pixel_spacing: tuple[float, float] | None = None,
                   series_description: str = "sciprior reconstruction") -> Path:
    """Write ``hu`` ``(H, W)`` as a derived CT slice with the reference's geometry and identifiers.

    Stored as unsigned 16-bit with ``RescaleSlope 1``, ``RescaleIntercept -1024`` (HU rounded and
    clipped to ``[-1024, 64511]``). ``pixel_spacing`` overrides the reference's (e.g. after
    resampling); new SeriesInstanceUID / SOPInstanceUID mark the file as a new, derived series.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise ValueError(f"write_ct_dicom: expected a 2D HU image, got shape {hu.shape} (for {path})")
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"write_ct_dicom: the image for {path} contains NaN/Inf")
    path = Path(path)
    ds = copy.deepcopy(reference.header)
    spacing = tuple(float(v) for v in (pixel_spacing or reference.pixel_spacing))
    stored = np.clip(np.rint(hu + 1024.0), 0, 65535).astype(np.uint16)
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.PixelSpacing = [f"{spacing[0]:.10g}"[:16], f"{spacing[1]:.10g}"[:16]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.RescaleType = "HU"
    for key in ("PixelPaddingValue", "PixelPaddingRangeLimit", "NumberOfFrames", "SmallestImagePixelValue",
                "LargestImagePixelValue"):
        if key in ds:
            delattr(ds, key)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SeriesDescription = series_description
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset(getattr(ds, "file_meta", FileMetaDataset()))
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")   # CT Image Storage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


__all__ = ["PADDING_HU_THRESHOLD", "read_ct_dicom", "read_ct_grid", "read_ct_series", "write_ct_dicom"]
