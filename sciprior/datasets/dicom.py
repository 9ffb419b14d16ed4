"""CT DICOM reading and writing (pydicom), and NIfTI output with the DICOM geometry (nibabel).

Reading (:func:`read_ct_dicom`): one single-frame CT image -> Hounsfield units
``HU = stored * RescaleSlope + RescaleIntercept``. Pixels outside the scanner's reconstruction
field of view carry padding (``PixelPaddingValue``, or values such as -2000 / -3024 HU); they are
flagged in ``fov_mask`` (False) and, like every value below ``hu_floor`` (default -1024 HU, air),
set to ``hu_floor`` so the image is physical (attenuation >= 0). Pixel spacing (row, column) in mm,
slice thickness, position and orientation are kept with the header for writing results back.

Writing: :func:`write_ct_dicom` writes a derived CT image with the reference's geometry and patient/
study attributes (new series and instance UIDs); :func:`write_nifti` writes the image with an affine
built from the DICOM position, orientation and spacing (converted from DICOM's LPS to NIfTI's RAS).
Both write to a temporary file and rename it (a killed job leaves no half-written file).
Errors name the file and what is wrong.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Below this (HU) a value can only be padding outside the reconstructed field of view.
PADDING_HU_THRESHOLD = -1500.0


@dataclass
class CTSlice:
    """One CT slice read from DICOM.

    Attributes:
        hu: ``(H, W)`` float32 Hounsfield units (padding and values below the floor set to the floor).
        pixel_spacing: ``(row spacing, column spacing)`` in mm (DICOM PixelSpacing order).
        fov_mask: ``(H, W)`` bool, False where the file had padding outside the field of view.
        header: the DICOM dataset without its pixel data (geometry and identifiers for writing).
        path: the file it came from (None if built in memory).
    """

    hu: np.ndarray
    pixel_spacing: tuple[float, float]
    fov_mask: np.ndarray
    header: object
    path: str | None = None

    @property
    def slice_thickness(self) -> float:
        v = self.header.get("SliceThickness", None)
        return float(v) if v not in (None, "") else 1.0

    @property
    def is_isotropic(self) -> bool:
        return abs(self.pixel_spacing[0] - self.pixel_spacing[1]) <= 1e-6 * max(self.pixel_spacing)

    def affine(self) -> np.ndarray:
        """4x4 NIfTI (RAS) affine for data laid out as ``(column, row, slice)``, see :func:`dicom_affine`."""
        return dicom_affine(self.header, self.pixel_spacing, self.slice_thickness)


def _describe(path) -> str:
    return str(path) if path is not None else "<dataset>"


def read_ct_dicom(path: str | os.PathLike, hu_floor: float = -1024.0) -> CTSlice:
    """Read a single-frame CT DICOM file into HU (see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not DICOM, no pixel data, not CT, multi-frame or colour, pixel data that cannot
            be decoded, or missing pixel spacing; the message names the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_ct_dicom: {path} does not exist")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise ValueError(f"read_ct_dicom: {path} is not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise ValueError(f"read_ct_dicom: {path} has no pixel data (no PixelData element)")
    modality = str(ds.get("Modality", "")).strip()
    if modality != "CT":
        raise ValueError(f"read_ct_dicom: {path} is not a CT image (Modality {modality or 'missing'!r}); "
                         "only CT is read here")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"read_ct_dicom: {path} has {frames} frames / {ds.get('SamplesPerPixel', 1)} "
                         "samples per pixel; only single-frame greyscale CT slices are supported")
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises several types for missing decoders or corrupt data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise ValueError(f"read_ct_dicom: {path}: cannot decode the pixel data "
                         f"(transfer syntax {name}): {e}") from e
    if raw.ndim != 2:
        raise ValueError(f"read_ct_dicom: {path}: expected a 2D image, got pixel array of shape {raw.shape}")
    spacing = ds.get("PixelSpacing", None)
    if spacing is None or len(spacing) != 2:
        raise ValueError(f"read_ct_dicom: {path} has no PixelSpacing; the physical pixel size is required")
    spacing = (float(spacing[0]), float(spacing[1]))
    if not (spacing[0] > 0 and spacing[1] > 0):
        raise ValueError(f"read_ct_dicom: {path} has invalid PixelSpacing {spacing}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    padding = np.zeros(raw.shape, dtype=bool)
    pad = ds.get("PixelPaddingValue", None)
    if pad is not None:
        lim = ds.get("PixelPaddingRangeLimit", None)
        if lim is not None:
            lo, hi = sorted((int(pad), int(lim)))
            padding = (raw >= lo) & (raw <= hi)
        else:
            padding = raw == int(pad)
    hu = raw.astype(np.float64) * slope + intercept
    padding |= hu < PADDING_HU_THRESHOLD
    hu = np.where(padding, hu_floor, np.maximum(hu, hu_floor)).astype(np.float32)
    header = copy.deepcopy(ds)
    del header.PixelData
    return CTSlice(hu=hu, pixel_spacing=spacing, fov_mask=~padding, header=header, path=str(path))


def dicom_affine(header, pixel_spacing: tuple[float, float], slice_thickness: float = 1.0) -> np.ndarray:
    """NIfTI (RAS, mm) affine of a slice stored as ``data[column, row, slice]``.

    DICOM: pixel ``(row r, column c)`` sits at ``IPP + c * dc * F_row + r * dr * F_col`` in LPS, with
    ``ImageOrientationPatient = F_row, F_col`` and ``PixelSpacing = (dr, dc)``; RAS flips x and y.
    Without position/orientation an axial identity orientation at the origin is assumed.
    """
    iop = header.get("ImageOrientationPatient", None) if header is not None else None
    ipp = header.get("ImagePositionPatient", None) if header is not None else None
    f_row = np.array([float(v) for v in iop[:3]]) if iop is not None else np.array([1.0, 0.0, 0.0])
    f_col = np.array([float(v) for v in iop[3:]]) if iop is not None else np.array([0.0, 1.0, 0.0])
    origin = np.array([float(v) for v in ipp]) if ipp is not None else np.zeros(3)
    normal = np.cross(f_row, f_col)
    lps = np.eye(4)
    lps[:3, 0] = f_row * pixel_spacing[1]
    lps[:3, 1] = f_col * pixel_spacing[0]
    lps[:3, 2] = normal * slice_thickness
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def write_ct_dicom(path: str | os.PathLike, hu: np.ndarray, reference: CTSlice,
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
    tmp = _atomic_target(path)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_nifti(path: str | os.PathLike, image: np.ndarray, reference: CTSlice | None = None,
                pixel_spacing: tuple[float, float] | None = None,
                slice_thickness: float | None = None) -> Path:
    """Write ``image`` ``(H, W)`` (or ``(H, W, D)``) to NIfTI with the DICOM geometry kept.

    The data are stored as ``(column, row[, slice])`` with the affine of :func:`dicom_affine`, so voxel
    sizes (``header.get_zooms()``) equal ``(column spacing, row spacing, slice thickness)`` in mm.
    """
    import nibabel as nib

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"write_nifti: expected (H, W) or (H, W, D), got shape {np.shape(image)} "
                         f"(for {path})")
    if reference is None and pixel_spacing is None:
        raise ValueError(f"write_nifti: give a reference CTSlice or pixel_spacing for {path}")
    spacing = tuple(float(v) for v in (pixel_spacing or reference.pixel_spacing))
    thick = float(slice_thickness if slice_thickness is not None
                  else (reference.slice_thickness if reference is not None else 1.0))
    affine = dicom_affine(reference.header if reference is not None else None, spacing, thick)
    nii = nib.Nifti1Image(np.ascontiguousarray(np.transpose(img, (1, 0, 2))), affine)
    nii.header.set_xyzt_units("mm")
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        nib.save(nii, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@dataclass
class DicomVolume:
    """A CT series as one volume, NIfTI layout.

    Attributes:
        data: ``(columns, rows, slices)`` float32 HU (see :func:`read_ct_dicom` for padding).
        affine: 4x4 RAS affine (mm) for ``data`` (:func:`dicom_affine`, slice step from the positions).
        fov_mask: ``(columns, rows, slices)`` bool, False where the files had padding.
        meta: JSON-friendly facts (spacing, thickness, series description, file count).
        slices: the slices as read, sorted along the slice normal.
    """

    data: np.ndarray
    affine: np.ndarray
    fov_mask: np.ndarray
    meta: dict
    slices: list[CTSlice]


def read_dicom_volume(paths, hu_floor: float = -1024.0) -> DicomVolume:
    """Read CT DICOM files of one series (one file or several slices) into a :class:`DicomVolume`.

    Slices are sorted by their position along the slice normal; all must share size, spacing and
    orientation (else ValueError naming the offending file).
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_dicom_volume: no files given")
    slices = [read_ct_dicom(p, hu_floor=hu_floor) for p in paths]
    first = slices[0]
    iop = first.header.get("ImageOrientationPatient", None)
    f_row = np.array([float(v) for v in iop[:3]]) if iop is not None else np.array([1.0, 0.0, 0.0])
    f_col = np.array([float(v) for v in iop[3:]]) if iop is not None else np.array([0.0, 1.0, 0.0])
    normal = np.cross(f_row, f_col)

    def position(s: CTSlice) -> np.ndarray:
        ipp = s.header.get("ImagePositionPatient", None)
        return np.array([float(v) for v in ipp]) if ipp is not None else np.zeros(3)

    for s in slices[1:]:
        if s.hu.shape != first.hu.shape or not np.allclose(s.pixel_spacing, first.pixel_spacing):
            raise ValueError(f"read_dicom_volume: {s.path} has size {s.hu.shape} / spacing "
                             f"{s.pixel_spacing}, unlike {first.path} "
                             f"({first.hu.shape} / {first.pixel_spacing})")
        s_iop = s.header.get("ImageOrientationPatient", None)
        if (s_iop is None) != (iop is None) or (iop is not None and not np.allclose(
                [float(v) for v in s_iop], [float(v) for v in iop], atol=1e-4)):
            raise ValueError(f"read_dicom_volume: {s.path} has a different ImageOrientationPatient "
                             f"than {first.path}")
    slices.sort(key=lambda s: float(position(s) @ normal))
    affine = dicom_affine(first.header, first.pixel_spacing, first.slice_thickness)
    if len(slices) > 1:
        step = (position(slices[-1]) - position(slices[0])) / (len(slices) - 1)
        if np.linalg.norm(step) < 1e-6:
            raise ValueError(f"read_dicom_volume: {len(slices)} files share one position "
                             f"({first.path}, ...): not one series of distinct slices")
        affine[:3, 2] = np.diag([-1.0, -1.0, 1.0]) @ step
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ position(slices[0])
    data = np.stack([s.hu.T for s in slices], axis=-1)
    mask = np.stack([s.fov_mask.T for s in slices], axis=-1)
    meta = {"pixel_spacing_mm": list(first.pixel_spacing), "slice_thickness_mm": first.slice_thickness,
            "series_description": str(first.header.get("SeriesDescription", "")), "num_files": len(slices),
            "modality": "CT", "padding_pixels": int((~mask).sum())}
    return DicomVolume(data=data.astype(np.float32), affine=affine, fov_mask=mask, meta=meta, slices=slices)
