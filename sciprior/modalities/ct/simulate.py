"""Simulated CT acquisitions: photon counts (low dose), post-log line integrals, Gaussian line-integral noise.

Counts ``I ~ Poisson(i0 exp(-p))`` with :class:`~sciprior.physics.noise.TransmissionPoisson` (``i0`` incident
photons per detector element and view; clinical ~1e5-1e6, low dose ~1e3-1e4); ``post_log`` turns counts into
line integrals ``log(i0 / max(I, 1))``. :func:`simulate_scan` is what the CT adapter measures a slice with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sciprior.physics.noise import Gaussian, TransmissionPoisson


def simulate_scan(p: Tensor, i0: float | None, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """A measurement of the line integrals ``p`` (dimensionless): photon counts ``Poisson(i0 exp(-p))`` when
    ``i0`` is set, else ``p`` plus Gaussian noise of std ``sigma``. Noise is drawn from ``generator`` (CPU)."""
    noise = TransmissionPoisson(i0) if i0 is not None else Gaussian(sigma)
    with torch.no_grad():
        return noise.sample(p, generator)


def simulate_counts(op, mu: Tensor, i0: float, generator: torch.Generator | None = None) -> Tensor:
    """Low-dose acquisition: photon counts ``Poisson(I0 exp(-A mu))``, shape of the sinogram.

    ``mu`` in 1/mm (``(B, 1, H, W)``); ``i0`` incident photons per detector element and view
    (clinical ~1e5-1e6; low dose ~1e3-1e4).
    """
    if not torch.isfinite(mu).all():
        raise ValueError(f"simulate_counts({op.name}): the attenuation image contains NaN/Inf")
    if (mu < 0).any():
        raise ValueError(f"simulate_counts({op.name}): negative attenuation (min {float(mu.min()):.3g} /mm)")
    with torch.no_grad():
        return simulate_scan(op(mu), i0, 0.0, generator)


def post_log(counts: Tensor, i0: float, min_count: float = 1.0) -> Tensor:
    """Counts -> line integrals ``log(I0 / max(I, min_count))`` (zero counts are floored)."""
    if not torch.isfinite(counts).all():
        n_bad = int((~torch.isfinite(counts)).sum())
        raise ValueError(f"post_log: the counts contain {n_bad} NaN/Inf values")
    if (counts < 0).any():
        raise ValueError("post_log: counts must be >= 0")
    return TransmissionPoisson(i0, min_count=min_count).post_log(counts)


def low_dose_sinogram(op, mu: Tensor, i0: float, generator: torch.Generator | None = None,
                      min_count: float = 1.0) -> tuple[Tensor, Tensor]:
    """Simulate counts and return ``(post-log sinogram, counts)``; the WLS weights are the counts."""
    counts = simulate_counts(op, mu, i0, generator)
    return post_log(counts, i0, min_count), counts
