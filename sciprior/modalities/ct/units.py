"""CT units: HU <-> attenuation and the prior's HU window (the one CT intensity model of the package).

Units and conventions
- Hounsfield units: ``HU = 1000 (mu - mu_water) / mu_water`` (air -1000, water 0).
- Linear attenuation ``mu`` in 1/mm; ``mu_water = 0.0192 /mm`` by default, the value for water at
  an effective energy of about 70 keV (NIST XCOM: 0.193 cm^2/g at 70 keV). Monoenergetic model,
  no beam hardening or scatter.
- Line integrals ``p = A mu`` (projector with ``pixel_size`` in mm) are dimensionless.
- The prior works on ``x = 2 (HU - hu_min) / (hu_max - hu_min) - 1``: the HU window
  ``[hu_min, hu_max]`` (default ``[-1024, 3071]``, the 12-bit CT range) maps to ``[-1, 1]``.
  Hence ``mu = a x + b`` (affine) with ``a = mu_water (hu_max - hu_min) / 2000`` and
  ``b = mu_water (1 + (hu_max + hu_min) / 2000)``. The measurement seen in the prior's units is
  ``y = (p - b A 1) / a = A x``: :meth:`CTNormalization.sinogram_to_prior` subtracts the offset, so
  solvers work with the linear operator ``A`` on ``x`` directly (Gaussian noise std scales by
  ``1/a``, WLS weights by ``a^2``).

The default window ``[-1024, 3071]`` is the shipped CT prior's (``configs/ct/train.yaml``); the adapter, the
training reader and the sample loader all take their map from :class:`CTNormalization`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sciprior.modalities.adapter import IntensityMap, window_map

MU_WATER = 0.0192  # 1/mm, water at ~70 keV


def hu_to_mu(hu: Tensor, mu_water: float = MU_WATER) -> Tensor:
    """Linear attenuation (1/mm) from HU, clipped at 0 (nothing attenuates less than vacuum)."""
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: Tensor, mu_water: float = MU_WATER) -> Tensor:
    """HU from linear attenuation in 1/mm."""
    return 1000.0 * (mu - mu_water) / mu_water


@dataclass(frozen=True)
class CTNormalization:
    """Affine map between HU and the prior's range: ``[hu_min, hu_max]`` -> ``[-1, 1]``.

    Args:
        hu_min, hu_max: the HU window (values outside map outside [-1, 1] unless clipped).
        mu_water: attenuation of water in 1/mm (see module docstring).
    """

    hu_min: float = -1024.0
    hu_max: float = 3071.0
    mu_water: float = MU_WATER

    def __post_init__(self):
        if not self.hu_max > self.hu_min:
            raise ValueError(f"CTNormalization: hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        if not self.mu_water > 0:
            raise ValueError(f"CTNormalization: mu_water must be > 0 (1/mm), got {self.mu_water}")

    @property
    def window(self) -> tuple[float, float]:
        return float(self.hu_min), float(self.hu_max)

    def intensity_map(self) -> IntensityMap:
        """``HU = offset + scale * x``: the window's centre and half-width."""
        return window_map(*self.window, "HU", "CT HU window")

    def hu_to_prior(self, hu, clip: bool = False):
        """HU (tensor or array) -> the prior's domain, optionally clipped to [-1, 1]."""
        x = self.intensity_map().to_prior(hu)
        return x.clip(-1.0, 1.0) if clip else x

    def prior_to_hu(self, x: Tensor) -> Tensor:
        return self.intensity_map().to_physical(x)

    @property
    def mu_affine(self) -> tuple[float, float]:
        """``(a, b)`` with ``mu = a x + b`` (1/mm)."""
        a = self.mu_water * (self.hu_max - self.hu_min) / 2000.0
        b = self.mu_water * (1.0 + (self.hu_max + self.hu_min) / 2000.0)
        return a, b

    def prior_to_mu(self, x: Tensor) -> Tensor:
        """Attenuation (1/mm) of a prior-range image (no clipping: exactly affine)."""
        a, b = self.mu_affine
        return a * x + b

    def mu_to_prior(self, mu: Tensor) -> Tensor:
        a, b = self.mu_affine
        return (mu - b) / a

    def sinogram_to_prior(self, p: Tensor, op) -> Tensor:
        """Line integrals of ``mu`` -> the measurement ``A x`` of the prior image, ``(p - b A1) / a``."""
        a, b = self.mu_affine
        ones = torch.ones((1, *op.in_shape), dtype=p.dtype, device=p.device)
        return (p - b * op(ones)) / a

    def prior_to_sinogram(self, y: Tensor, op) -> Tensor:
        """Inverse of :meth:`sinogram_to_prior`: ``a y + b A1``."""
        a, b = self.mu_affine
        ones = torch.ones((1, *op.in_shape), dtype=y.dtype, device=y.device)
        return a * y + b * op(ones)
