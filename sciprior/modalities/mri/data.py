"""MRI training data: magnitude slices of image volumes, and complex or magnitude slices of fastMRI k-space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from sciprior.io.dicom import read_dicom_grid
from sciprior.io.grid import VolumeGrid
from sciprior.modalities.adapter import percentile_window, window_map
from sciprior.modalities.mri.coils import acs_combine
from sciprior.modalities.mri.fastmri import center_crop, read_fastmri
from sciprior.modalities.mri.fourier import ifft2c
from sciprior.modalities.slices import SliceReader


@dataclass
class MRSlices(SliceReader):
    """Magnitude slices of MR image volumes (NIfTI, DICOM): the volume's ``percentiles`` mapped onto [-1, 1] (the
    map of the MRI adapter's magnitude model), clipped to [-1, 1] when ``clip``.

    Args:
        percentiles: (low, high) percentiles of the whole volume mapped to -1 and 1 ((0, 100): min and max).
        clip: clip the normalised values to [-1, 1].
        slice_axis, pixel_spacing: see :class:`~sciprior.modalities.slices.SliceReader`.
    """

    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.percentiles = tuple(float(v) for v in self.percentiles)
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}")

    def grid(self, path: str) -> VolumeGrid:
        return self.nifti_or_dicom(path, read_dicom_grid)

    def normalise(self, data: np.ndarray) -> np.ndarray:
        lo, hi = percentile_window(data, self.percentiles)
        x = window_map(lo, hi, "a.u.", "MR magnitude").to_prior(data)
        return np.clip(x, -1.0, 1.0) if self.clip else x

    @classmethod
    def from_legacy(cls, reader: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of an earlier version's ``SliceReader(intensity="percentile" or "minmax", ...)``."""
        if reader != "SliceReader" or args.get("axcodes", "LPS") != "LPS":
            return None
        if args.get("intensity", "percentile") == "percentile":  # the old reader's default
            p = list(args.get("percentiles", (0.5, 99.5)))
        elif args.get("intensity") == "minmax":
            p = [0.0, 100.0]
        else:
            return None
        return {"percentiles": p, "clip": bool(args.get("clip", False)), "slice_axis": int(args.get("slice_axis", 2)),
                "pixel_spacing": args.get("pixel_spacing")}


@dataclass
class KSpaceSlices:
    """Complex or magnitude images of fastMRI-layout HDF5 k-space (``kspace``: (slices, [coils,] H, W) complex).

    Each slice is the centred inverse FFT of its k-space; multi-coil data are combined with sensitivities from the
    central ``acs_lines`` columns (:func:`~sciprior.modalities.mri.coils.acs_combine`), giving a complex image
    whose magnitude approximates the RSS image. Images are centre-cropped to ``crop`` and scaled so that the
    ``scale_percentile`` percentile of the volume's magnitude is 1.

    Args:
        output: ``complex``: 2 channels (real, imaginary), values mostly in [-1, 1]; ``magnitude``: 1 channel, the
            magnitude mapped from [0, 1] to [-1, 1].
        crop: centre crop (H, W), or None.
        scale_percentile: percentile of the magnitude that becomes 1.
        acs_lines: central k-space columns used for the coil sensitivities.
    """

    output: Literal["complex", "magnitude"] = "complex"
    crop: tuple[int, int] | None = (320, 320)
    scale_percentile: float = 99.0
    acs_lines: int = 24

    #: examples are padded with the complex background, 0
    pad_value: ClassVar[float] = 0.0
    legacy_data_module: ClassVar[str] = "FastMRIDataModule"
    legacy_reader: ClassVar[str] = "FastMRIReader"
    legacy_args: ClassVar[tuple[str, ...]] = ("output", "crop", "scale_percentile", "acs_lines")

    def __post_init__(self) -> None:
        if self.output not in ("complex", "magnitude"):
            raise ValueError(f"output must be complex or magnitude, got {self.output!r}")
        if not 0 < self.scale_percentile <= 100:
            raise ValueError(f"scale_percentile must be in (0, 100], got {self.scale_percentile}")
        if self.acs_lines < 2:
            raise ValueError(f"acs_lines must be >= 2, got {self.acs_lines}")
        self.crop = tuple(int(v) for v in self.crop) if self.crop is not None else None

    def __call__(self, path: str) -> np.ndarray:
        vol = read_fastmri(path)  # validates the layout; names the file and key at fault
        k = vol.kspace  # (S, C, H, W) complex64
        imgs = ifft2c(k)
        imgs = acs_combine(k, imgs, self.acs_lines) if vol.multicoil else imgs[:, 0]
        if self.crop is not None:
            h, w = imgs.shape[-2:]
            imgs = center_crop(imgs, (min(self.crop[0], h), min(self.crop[1], w)))
        imgs = imgs.numpy()
        scale = float(np.percentile(np.abs(imgs), self.scale_percentile))
        imgs = imgs / (scale if scale > 0 else 1.0)
        if self.output == "complex":
            out = np.stack([imgs.real, imgs.imag], axis=1)
        else:
            out = (2.0 * np.abs(imgs) - 1.0)[:, None]
        return np.ascontiguousarray(out.astype(np.float32))

    @classmethod
    def from_legacy(cls, reader: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of an earlier version's ``FastMRIReader``."""
        if reader != "FastMRIReader":
            return None
        return {k: args[k] for k in ("output", "crop", "scale_percentile", "acs_lines") if k in args}


__all__ = ["KSpaceSlices", "MRSlices"]
