"""DICOM images and series (pydicom): pixel values through the modality LUT, padding, and geometry.

Generic over modalities (what is specific to one, e.g. Hounsfield units and the air floor of CT, lives in that
modality's package):

- :func:`read_dicom_image`: one single-frame greyscale image -> ``stored * RescaleSlope + RescaleIntercept``
  (float64), the pixels flagged as padding (``PixelPaddingValue`` / ``PixelPaddingRangeLimit``), pixel
  spacing ``(row, column)`` in mm and the header without its pixel data;
- :func:`stack_series`: images of one series sorted along the slice normal into a ``(columns, rows,
  slices)`` volume with its NIfTI (RAS, mm) affine (:func:`dicom_affine`; slice step from the positions);
- :func:`dicom_shape`: ``(columns, rows, slices)`` from the first header only (no pixel data read).

Errors name the file and what is wrong.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sciprior.io.grid import VolumeGrid
from sciprior.io.paths import InputError


@dataclass
class DicomImage:
    """One DICOM image slice.

    Attributes:
        values: ``(H, W)`` pixel values after the modality LUT (CT: HU; converted by the modality's reader).
        padding: ``(H, W)`` bool, True where the file marks padding outside the field of view.
        pixel_spacing: ``(row spacing, column spacing)`` in mm (DICOM PixelSpacing order).
        header: the dataset without its pixel data (geometry and identifiers for writing).
        path: the file it came from (None if built in memory).
    """

    values: np.ndarray
    padding: np.ndarray
    pixel_spacing: tuple[float, float]
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


def read_dicom_image(path: str | os.PathLike, modality: str | None = None, who: str = "read_dicom") -> DicomImage:
    """Read a single-frame greyscale DICOM image (see the module docstring); ``modality`` (e.g. ``"CT"``) is
    checked against the file's Modality when given.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not DICOM, no pixel data, another modality, multi-frame or colour, pixel data that cannot
            be decoded, or no pixel spacing; the message names the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: {path} does not exist")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{who}: {path} is not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise ValueError(f"{who}: {path} has no pixel data (no PixelData element)")
    found = str(ds.get("Modality", "")).strip()
    if modality is not None and found != modality:
        raise ValueError(f"{who}: {path} is not a {modality} image (Modality {found or 'missing'!r}); "
                         f"only {modality} is read here")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{who}: {path} has {frames} frames / {ds.get('SamplesPerPixel', 1)} "
                         "samples per pixel; only single-frame greyscale slices are supported")
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises several types for missing decoders or corrupt data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise ValueError(f"{who}: {path}: cannot decode the pixel data (transfer syntax {name}): {e}") from e
    if raw.ndim != 2:
        raise ValueError(f"{who}: {path}: expected a 2D image, got pixel array of shape {raw.shape}")
    spacing = ds.get("PixelSpacing", None)
    if spacing is None or len(spacing) != 2:
        raise ValueError(f"{who}: {path} has no PixelSpacing; the physical pixel size is required")
    spacing = (float(spacing[0]), float(spacing[1]))
    if not (spacing[0] > 0 and spacing[1] > 0):
        raise ValueError(f"{who}: {path} has invalid PixelSpacing {spacing}")
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
    values = raw.astype(np.float64) * slope + intercept
    header = copy.deepcopy(ds)
    del header.PixelData
    return DicomImage(values=values, padding=padding, pixel_spacing=spacing, header=header, path=str(path))


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


@dataclass
class DicomSeries:
    """Slices of one series as a volume, NIfTI layout.

    Attributes:
        data: ``(columns, rows, slices)`` float32 values (as converted by the reader).
        affine: 4x4 RAS affine (mm) for ``data`` (:func:`dicom_affine`, slice step from the positions).
        padding: ``(columns, rows, slices)`` bool, True where the files had padding.
        meta: JSON-friendly facts (spacing, thickness, series description, file count, modality).
        slices: the images as read, sorted along the slice normal.
    """

    data: np.ndarray
    affine: np.ndarray
    padding: np.ndarray
    meta: dict
    slices: list[DicomImage]


def _orientation(header) -> list[float] | None:
    iop = header.get("ImageOrientationPatient", None)
    return None if iop is None else [float(v) for v in iop]


def _position(image: DicomImage) -> np.ndarray:
    ipp = image.header.get("ImagePositionPatient", None)
    return np.array([float(v) for v in ipp]) if ipp is not None else np.zeros(3)


def stack_series(slices: Sequence[DicomImage], who: str = "read_dicom") -> DicomSeries:
    """Sort the images of one series along their slice normal and stack them (see :class:`DicomSeries`).

    All must share size, spacing and orientation (else ValueError naming the offending file).
    """
    slices = list(slices)
    if not slices:
        raise ValueError(f"{who}: no files given")
    first = slices[0]
    iop = _orientation(first.header)
    f_row = np.array(iop[:3]) if iop is not None else np.array([1.0, 0.0, 0.0])
    f_col = np.array(iop[3:]) if iop is not None else np.array([0.0, 1.0, 0.0])
    normal = np.cross(f_row, f_col)
    for s in slices[1:]:
        if s.values.shape != first.values.shape or not np.allclose(s.pixel_spacing, first.pixel_spacing):
            raise ValueError(f"{who}: {s.path} has size {s.values.shape} / spacing {s.pixel_spacing}, unlike "
                             f"{first.path} ({first.values.shape} / {first.pixel_spacing})")
        s_iop = _orientation(s.header)
        if (s_iop is None) != (iop is None) or (iop is not None and not np.allclose(s_iop, iop, atol=1e-4)):
            raise ValueError(f"{who}: {s.path} has a different ImageOrientationPatient than {first.path}")
    slices.sort(key=lambda s: float(_position(s) @ normal))
    affine = dicom_affine(first.header, first.pixel_spacing, first.slice_thickness)
    if len(slices) > 1:
        step = (_position(slices[-1]) - _position(slices[0])) / (len(slices) - 1)
        if np.linalg.norm(step) < 1e-6:
            raise ValueError(f"{who}: {len(slices)} files share one position ({first.path}, ...): not one series "
                             "of distinct slices")
        affine[:3, 2] = np.diag([-1.0, -1.0, 1.0]) @ step
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ _position(slices[0])
    data = np.stack([s.values.T for s in slices], axis=-1)
    padding = np.stack([s.padding.T for s in slices], axis=-1)
    meta = {"pixel_spacing_mm": list(first.pixel_spacing), "slice_thickness_mm": first.slice_thickness,
            "series_description": str(first.header.get("SeriesDescription", "")), "num_files": len(slices),
            "modality": str(first.header.get("Modality", "")).strip(), "padding_pixels": int(padding.sum())}
    return DicomSeries(data=data.astype(np.float32), affine=affine, padding=padding, meta=meta, slices=slices)


def read_dicom_grid(paths: Sequence[Path], read_image: Callable[[Path], DicomImage] = read_dicom_image,
                    key: str = "input") -> VolumeGrid:
    """A DICOM file or series as an LPS :class:`~sciprior.io.grid.VolumeGrid` with the affine from the DICOM
    position, orientation and spacing; ``read_image`` reads one file (default: values after the modality LUT;
    a modality passes its own, e.g. CT in HU). Errors name ``key`` and the file."""
    try:
        series = stack_series([read_image(Path(p)) for p in paths])
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{key}: {e}") from e
    meta = {f"dicom_{k}": v for k, v in series.meta.items()}
    return VolumeGrid.from_array(series.data, series.affine, meta={"source": "dicom", "file": str(paths[0]), **meta})


def dicom_shape(paths: Sequence[Path], key: str = "input", modality: str | None = None) -> tuple[int, int, int]:
    """``(X, Y, Z)`` = (columns, rows, slices) of a DICOM file or series from the first header only (axial
    slices with the standard orientation: columns run R -> L, rows A -> P). With ``modality`` (e.g. ``"CT"``) the
    header's Modality must be that one. Refused naming the file: no Rows/Columns, pixel data shorter than declared
    (a truncated file), another modality."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(paths[0]), defer_size=1024)  # large values (the pixels) are not read
    except Exception as e:  # pydicom raises several types
        raise InputError(f"{key}: cannot read the DICOM header of {str(paths[0])!r}: {e}") from e
    missing = [f"{tag} {name}" for name, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"))
               if name not in ds]
    if missing:
        raise InputError(f"{key}: the DICOM file {str(paths[0])!r} has no {' and no '.join(missing)}: it holds no "
                         "image (a structured report, a presentation state, or a damaged header?)")
    found = str(ds.get("Modality", "")).strip()
    if modality is not None and found != modality:
        raise InputError(f"{key}: the DICOM file {str(paths[0])!r} is not a {modality} image (Modality "
                         f"{found or 'missing'!r})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise InputError(f"{key}: the DICOM file {str(paths[0])!r} declares an empty image ({rows} x {cols})")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_pixel_data_length(ds, paths[0], rows, cols, frames, key)
    n = len(paths) if len(paths) > 1 else frames
    return cols, rows, n


def _check_pixel_data_length(ds: Any, path: Path, rows: int, cols: int, frames: int, key: str) -> None:
    """An uncompressed PixelData element shorter than Rows x Columns x BitsAllocated x samples x frames (a truncated
    or damaged file) is refused naming the file; the element's length is read from its header, not its bytes."""
    el = ds.get_item(0x7FE00010, keep_deferred=True) if "PixelData" in ds else None
    if el is None:
        raise InputError(f"{key}: the DICOM file {str(path)!r} has no pixel data (no (7FE0,0010) PixelData element)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or ts.is_encapsulated or el.length == 0xFFFFFFFF:  # compressed: the decoder checks it
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = rows * cols * frames * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
    size = path.stat().st_size
    if el.value_tell is not None and el.value_tell + el.length > size:
        raise InputError(f"{key}: the DICOM file {str(path)!r} ends at byte {size} inside its pixel data (which "
                         f"would end at byte {el.value_tell + el.length}): the file is truncated")
    if el.length < expected:
        raise InputError(f"{key}: the DICOM file {str(path)!r} holds {el.length} bytes of pixel data but its header "
                         f"declares {rows} x {cols} x {frames} frame(s) at {bits} bits ({expected} bytes): the file "
                         "is truncated or damaged")


__all__ = ["DicomImage", "DicomSeries", "dicom_affine", "dicom_shape", "read_dicom_grid", "read_dicom_image",
           "stack_series"]
