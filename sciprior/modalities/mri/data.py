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
from sciprior.modalities.mri.intensity import SCALE_PERCENTILE, foreground_scale
from sciprior.modalities.slices import SliceReader


@dataclass
class MRSlices(SliceReader):
    """Magnitude slices of MR image volumes (NIfTI, DICOM) on [-1, 1], clipped to [-1, 1] when ``clip``.

    ``scale: volume`` (the map of the MRI adapter's magnitude model for image inputs): the volume's
    ``percentiles`` mapped onto -1 and 1. ``scale: slice`` (the map of measured k-space, where a slice has no
    volume around it): every slice, after resampling, on its own, ``2 |m| / s - 1`` with ``s`` the
    :func:`~sciprior.modalities.mri.intensity.foreground_scale` of the slice (0 stays -1).

    ``output: complex`` (``scale: slice`` only) gives 2-channel (real, imaginary) images ``|m| / s * exp(i phi)``
    for the complex image model, background 0: a magnitude volume has no phase, so each slice gets a smooth random
    phase ``phi`` (a random plane plus a random quadratic bowl, up to ``max_phase`` radians across the slice, drawn
    from ``phase_seed`` and the slice index), the kind of phase a coil-combined complex image has (B0 and
    transmit/receive phase are smooth; the ESPIRiT reference phase is arbitrary but smooth).

    Args:
        scale: ``volume`` or ``slice`` (see above).
        output: ``magnitude`` (1 channel) or ``complex`` (2 channels, see above).
        max_phase: largest phase excursion (radians) of the synthetic phase of ``output: complex``.
        phase_seed: seed of the synthetic phases.
        percentiles: (low, high) percentiles of the whole volume mapped to -1 and 1 ((0, 100): min and max).
        scale_percentile: percentile of the slice's foreground that becomes 1 (``scale: slice``).
        clip: clip the normalised values to [-1, 1].
        slice_axis, pixel_spacing: see :class:`~sciprior.modalities.slices.SliceReader`.
    """

    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: bool = False
    scale: Literal["volume", "slice"] = "volume"
    scale_percentile: float = SCALE_PERCENTILE
    output: Literal["magnitude", "complex"] = "magnitude"
    max_phase: float = 3.14159
    phase_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.percentiles = tuple(float(v) for v in self.percentiles)
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}")
        if self.scale not in ("volume", "slice"):
            raise ValueError(f"scale must be volume or slice, got {self.scale!r}")
        if not 0 < self.scale_percentile <= 100:
            raise ValueError(f"scale_percentile must be in (0, 100], got {self.scale_percentile}")
        if self.output not in ("magnitude", "complex"):
            raise ValueError(f"output must be magnitude or complex, got {self.output!r}")
        if self.output == "complex" and self.scale != "slice":
            raise ValueError("output: complex needs scale: slice (the map of measured k-space)")
        if not 0 <= self.max_phase <= 10:
            raise ValueError(f"max_phase must be in [0, 10] radians, got {self.max_phase}")

    @property
    def pad_value(self) -> float:  # type: ignore[override]
        """Background: -1 for magnitude images, 0 for complex ones."""
        return 0.0 if self.output == "complex" else -1.0

    def smooth_phase(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """The synthetic phase (radians, ``shape``) of slice ``index`` for ``output: complex``."""
        rng = np.random.default_rng([self.phase_seed, index])
        yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
        a, b, c, d = rng.uniform(-1, 1, 4)
        phi = a * xx + b * yy + c * (xx**2 + yy**2) + d
        return self.max_phase * phi / 2.0

    def read(self, path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        if self.scale == "volume":
            return super().read(path)
        planes, voxel = self.grid(path).training_slices(lambda d: np.abs(d), self.slice_axis, self.pixel_spacing,
                                                        f"{type(self).__name__}: {path}")
        if self.output == "complex":
            n, _, h, w = planes.shape
            out = np.zeros((n, 2, h, w), dtype=np.float32)
            for i, m in enumerate(planes):
                s = foreground_scale(m, self.scale_percentile)
                if s > 0:
                    z = (m[0] / s) * np.exp(1j * self.smooth_phase(i, (h, w)))
                    out[i, 0], out[i, 1] = z.real, z.imag
            return (np.clip(out, -1.0, 1.0) if self.clip else out), voxel
        out = np.full_like(planes, -1.0)
        for i, m in enumerate(planes):
            s = foreground_scale(m, self.scale_percentile)
            if s > 0:
                out[i] = 2.0 * m / s - 1.0
        return (np.clip(out, -1.0, 1.0) if self.clip else out), voxel

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
