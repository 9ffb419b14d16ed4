"""What the training readers of patient-axis modalities (CT, MRI) share: 2D slices of NIfTI / DICOM volumes.

A :class:`SliceReader` reads a file (or a directory of DICOM slices) with the same readers the reconstruction
adapters use (:func:`sciprior.io.nifti.read_nifti`, the modality's DICOM reader), so training and inference see
the same orientation and intensities: volumes in LPS voxel axes, normalised as a whole by the modality's
intensity map (:meth:`SliceReader.normalise`), cut into slices across ``slice_axis`` (2: axial, rows anterior ->
posterior, columns patient right -> left, like a DICOM ``pixel_array``), optionally resampled in-plane to
``pixel_spacing`` mm (bilinear with antialiasing), so files of different resolutions share one scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from sciprior.io.grid import VolumeGrid
from sciprior.io.nifti import read_nifti
from sciprior.io.paths import InputError, sniff


def volume_files(path: str | os.PathLike) -> tuple[str | None, list[Path]]:
    """``(kind, files)`` of a training path: one file, or the (non-hidden) files of a DICOM directory."""
    p = Path(path)
    files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"{p}: the directory holds no files")
    return sniff(files[0]), files


@dataclass
class SliceReader:
    """Base of the slice readers (see the module docstring); subclasses define :meth:`grid` and :meth:`normalise`.

    Args:
        slice_axis: LPS voxel axis the slices are cut across (0, 1, 2; 2 is axial).
        pixel_spacing: in-plane pixel size (mm) every slice is resampled to, or None (as stored).
    """

    slice_axis: int = 2
    pixel_spacing: float | None = None

    #: value (prior units) that pads examples to an aspect ratio or a patch: the background
    pad_value: ClassVar[float] = -1.0
    #: the earlier spelling of training configs these readers translate (:meth:`from_legacy`): the data module, its
    #: reader class and the data-module arguments that were the reader's
    legacy_data_module: ClassVar[str] = "SliceDataModule"
    legacy_reader: ClassVar[str] = "SliceReader"
    legacy_args: ClassVar[tuple[str, ...]] = ("intensity", "window", "percentiles", "clip", "axcodes", "slice_axis",
                                              "image_reader", "pixel_spacing")

    def __post_init__(self) -> None:
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis!r}")
        if self.pixel_spacing is not None and not self.pixel_spacing > 0:
            raise ValueError(f"pixel_spacing must be > 0 mm or null, got {self.pixel_spacing!r}")

    def grid(self, path: str) -> VolumeGrid:  # pragma: no cover - abstract
        """The file (or DICOM directory) as an LPS volume in physical units."""
        raise NotImplementedError

    def normalise(self, data: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Physical units -> the prior's domain, for the whole volume at once."""
        raise NotImplementedError

    def read(self, path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The slices ``(N, 1, H, W)`` of ``path`` and their voxel size (slice, row, column) in mm."""
        return self.grid(path).training_slices(self.normalise, self.slice_axis, self.pixel_spacing,
                                               f"{type(self).__name__}: {path}")

    def __call__(self, path: str) -> np.ndarray:
        return self.read(path)[0]

    def nifti_or_dicom(self, path: str, read_dicom) -> VolumeGrid:
        """Read ``path`` as NIfTI, or as DICOM with ``read_dicom(files, key)``; errors name the file."""
        kind, files = volume_files(path)
        if kind == "nifti" and len(files) == 1:
            return read_nifti(files[0], key=type(self).__name__)
        if kind == "dicom":
            return read_dicom(files, key=type(self).__name__)
        raise InputError(f"{type(self).__name__}: {str(path)!r} is neither a NIfTI file nor DICOM (a file or a "
                         "directory of one series)")


__all__ = ["SliceReader", "volume_files"]
