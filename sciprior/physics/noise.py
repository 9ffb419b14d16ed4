"""Noise models (likelihoods): what a measurement is, given the noiseless ``A x``.

Noise convention: ``sigma`` is the standard deviation in the units of the measurement, which is
the forward operator applied to an image in the prior's units. For complex measurements the real
and imaginary parts each have standard deviation ``sigma`` (so ``E|n|^2 = 2 sigma^2``).

Each model can
- ``sample(clean, generator)``: draw a measurement from the noiseless ``A x``;
- ``nll(y, ax)``: negative log-likelihood per batch item (shape (B,)), up to a constant in ``ax``;
- ``wls(y)``: the weighted-least-squares view ``(y_eff, w)`` with
  ``nll(y, ax) ~= 0.5 * sum w * |ax - y_eff|^2`` (exact for Gaussian; the usual second-order
  approximation for Poisson and transmission data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sciprior.physics.operator import Measurement, tmap


def _randn_like(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``t`` (complex: each part N(0,1)), drawn on the generator's
    device and moved, so a seed gives the same noise on any device."""
    gdev = generator.device if generator is not None else t.device
    real_dtype = t.real.dtype if t.is_complex() else t.dtype
    if t.is_complex():
        n = torch.complex(torch.randn(t.shape, generator=generator, dtype=real_dtype, device=gdev),
                          torch.randn(t.shape, generator=generator, dtype=real_dtype, device=gdev))
    else:
        n = torch.randn(t.shape, generator=generator, dtype=real_dtype, device=gdev)
    return n.to(t.device)


def check_finite(y: Measurement, who: str) -> None:
    for t in (y if isinstance(y, tuple) else (y,)):
        if not torch.isfinite(t).all():
            n = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{who}: the measurement contains {n} NaN/Inf values (shape {tuple(t.shape)})")


class NoiseModel(nn.Module):
    def sample(self, clean: Measurement, generator: torch.Generator | None = None) -> Measurement:
        raise NotImplementedError

    def nll(self, y: Measurement, ax: Measurement) -> Tensor:
        raise NotImplementedError

    def wls(self, y: Measurement) -> tuple[Measurement, Measurement]:
        raise NotImplementedError


def _sum_items(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


class Gaussian(NoiseModel):
    """Additive white Gaussian noise, real or complex; ``sigma`` per (real/imag) component.

    ``sigma=0`` is allowed for noiseless problems; then ``nll`` uses ``sigma_floor`` so that
    gradient-based solvers still see a finite weight.
    """

    def __init__(self, sigma: float, sigma_floor: float = 1e-3):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"Gaussian: sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.sigma_floor = float(sigma_floor)

    @property
    def effective_sigma(self) -> float:
        return max(self.sigma, self.sigma_floor)

    def sample(self, clean, generator=None):
        if self.sigma == 0:
            return tmap(lambda t: t.clone(), clean)
        return tmap(lambda t: t + self.sigma * _randn_like(t, generator), clean)

    def nll(self, y, ax):
        if isinstance(y, tuple):
            raise TypeError("Gaussian.nll got a tuple measurement; use StackedNoise for stacked operators")
        r = ax - y
        r2 = (r.conj() * r).real if r.is_complex() else r * r
        return 0.5 * _sum_items(r2) / self.effective_sigma**2

    def wls(self, y):
        w = torch.full_like(y.real if y.is_complex() else y, 1.0 / self.effective_sigma**2)
        return y, w


class Poisson(NoiseModel):
    """Photon counting: ``y = Poisson(gain * ax) / gain`` (``ax >= 0`` is the mean in image units).

    ``gain`` is counts per unit of ``ax``: large gain means little noise.
    """

    def __init__(self, gain: float, eps: float = 1e-6):
        super().__init__()
        if gain <= 0:
            raise ValueError(f"Poisson: gain must be > 0, got {gain}")
        self.gain, self.eps = float(gain), float(eps)

    def sample(self, clean, generator=None):
        rate = (self.gain * clean).clamp_min(0)
        gdev = generator.device if generator is not None else rate.device
        return torch.poisson(rate.to(gdev), generator=generator).to(rate.device) / self.gain

    def nll(self, y, ax):
        lam = (self.gain * ax).clamp_min(self.eps)
        return _sum_items(lam - self.gain * y * torch.log(lam))

    def wls(self, y):
        # variance of y is ax / gain ~= y / gain
        return y, self.gain / y.clamp_min(1.0 / self.gain)


class TransmissionPoisson(NoiseModel):
    """X-ray transmission: counts ``I ~ Poisson(i0 * exp(-ax))`` with incident (blank-scan) count ``i0``.

    ``i0`` is a float, or a tensor of per-ray counts broadcasting against the measurement (e.g. ``(1, V, K)``
    against ``(B, 1, V, K)``): a blank scan, or an image model with an offset whose line integrals are folded
    into it (``i0 = I0 exp(-A beta)`` for ``mu = alpha x + beta``). The measurement handed to solvers is the raw
    count ``I``. ``post_log(I)`` gives line integrals ``p = log(i0 / I)``; the WLS view weights them by ``I``
    (their inverse variance). Low dose = small ``i0``. ``ax`` is in line-integral units (attenuation times length).
    """

    def __init__(self, i0: float | Tensor, min_count: float = 1.0):
        super().__init__()
        if isinstance(i0, Tensor):
            if not bool((i0 > 0).all()):
                raise ValueError("TransmissionPoisson: the blank scan i0 must be > 0 everywhere")
            self.register_buffer("i0", i0)
        else:
            if i0 <= 0:
                raise ValueError(f"TransmissionPoisson: I0 must be > 0, got {i0}")
            self.i0 = float(i0)
        self.min_count = float(min_count)

    def sample(self, clean, generator=None):
        rate = self.i0 * torch.exp(-clean)
        gdev = generator.device if generator is not None else rate.device
        return torch.poisson(rate.to(gdev), generator=generator).to(rate.device)

    def nll(self, y, ax):
        # -log p(I | ax) = I0 e^{-ax} + I ax + const
        return _sum_items(self.i0 * torch.exp(-ax) + y * ax)

    def post_log(self, counts: Tensor) -> Tensor:
        """Line integrals ``log(i0 / max(I, min_count))``."""
        return torch.log(self.i0 / counts.clamp_min(self.min_count))

    def wls(self, y):
        return self.post_log(y), y.clamp_min(self.min_count)


class StackedNoise(NoiseModel):
    """One noise model per operator of a :class:`~sciprior.physics.operator.StackedOperator`."""

    def __init__(self, models: Sequence[NoiseModel]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def _check(self, y):
        if not isinstance(y, tuple) or len(y) != len(self.models):
            raise ValueError(f"StackedNoise: expected a tuple of {len(self.models)} measurements")

    def sample(self, clean, generator=None):
        self._check(clean)
        return tuple(m.sample(c, generator) for m, c in zip(self.models, clean))

    def nll(self, y, ax):
        self._check(y)
        return sum(m.nll(yi, ai) for m, yi, ai in zip(self.models, y, ax))

    def wls(self, y):
        self._check(y)
        pairs = [m.wls(yi) for m, yi in zip(self.models, y)]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
