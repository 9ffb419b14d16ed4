"""The :class:`Problem` that solvers consume, and its data-consistency residual."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sciprior.linalg import real_dtype
from sciprior.physics.noise import Gaussian, NoiseModel, check_finite
from sciprior.physics.operator import Measurement, Operator, batch_size, norm_sq, repeat_batch, tmap


@dataclass
class Problem:
    """An inverse problem: find ``x`` (B, *image_shape) from ``y = noise(operator(x))``.

    Attributes:
        operator: forward model (linear for most solvers).
        y: measurement, (B, *out_shape) or a tuple for stacked operators.
        noise: the likelihood.
        image_shape: shape of one image without batch, e.g. (1, 64, 64).
        reference: optional ground truth (B, *image_shape) for metrics.
        metadata: free-form (file names, spacing, units, ...).
    """

    operator: Operator
    y: Measurement
    noise: NoiseModel
    image_shape: tuple[int, ...]
    reference: Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        check_finite(self.y, f"Problem({self.operator.name})")
        if self.reference is not None and tuple(self.reference.shape[1:]) != self.image_shape:
            raise ValueError(f"Problem: reference shape {tuple(self.reference.shape)} does not match "
                             f"image_shape {self.image_shape}")
        if self.operator.in_shape is not None and self.operator.in_shape != self.image_shape:
            raise ValueError(f"Problem: {self.operator.name} takes images of shape {self.operator.in_shape}, "
                             f"but image_shape is {self.image_shape}")
        self.operator.check_measurement(self.y)

    @property
    def batch_size(self) -> int:
        return batch_size(self.y)

    @classmethod
    def simulate(cls, operator: Operator, x: Tensor, noise: NoiseModel,
                 generator: torch.Generator | None = None, **metadata) -> Problem:
        """Measure a known image ``x``: ``y = noise.sample(operator(x))``; ``x`` becomes the reference.

        Entries outside the operator's :meth:`~sciprior.physics.operator.Operator.measured_support`
        (unsampled k-space, masked pixels) stay zero: they are not measured, so they get no noise.
        """
        with torch.no_grad():
            y = noise.sample(operator(x), generator)
            support = operator.measured_support()
            if support is not None:
                def keep(t: Tensor, m: Tensor | float) -> Tensor:
                    return t * (m.to(device=t.device, dtype=t.real.dtype) if isinstance(m, Tensor) else m)

                y = tmap(keep, y, support)
        return cls(operator, y, noise, tuple(x.shape[1:]), reference=x, metadata=dict(metadata))

    def nll(self, x: Tensor) -> Tensor:
        """Negative log-likelihood of images ``x`` (B, *image_shape), shape (B,)."""
        return self.noise.nll(self.y, self.operator(x))

    def grad_nll(self, x: Tensor) -> Tensor:
        """Gradient of :meth:`nll` with respect to ``x`` (autograd; exact for any operator)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.nll(x).sum(), x)
        return g

    def repeat(self, n: int) -> Problem:
        """The same problem with every item repeated ``n`` times (item-major), for several samples."""
        ref = self.reference.repeat_interleave(n, dim=0) if self.reference is not None else None
        return Problem(self.operator, repeat_batch(self.y, n), self.noise, self.image_shape, ref,
                       dict(self.metadata))


def noise_residual(problem: Problem) -> Tensor | None:
    """The relative residual ``||n|| / ||y||`` (per item, shape (B,)) that the noise alone gives, for Gaussian
    noise with ``sigma > 0``: ``sigma sqrt(m) / ||y||`` with ``m`` the measured real components (entries of ``y``
    that are not exactly zero, twice for complex data: unsampled k-space is stored as zeros). A result fitting the
    data far worse than this does not fit the data; None for other noise models (their WLS view is not white)."""
    if type(problem.noise) is not Gaussian or problem.noise.sigma <= 0:
        return None
    y = problem.y
    if not isinstance(y, Tensor):
        return None
    off = problem.metadata.get("measurement_offset")
    full = y + off if isinstance(off, Tensor) else y
    per_entry = 2 if full.is_complex() else 1  # real components of one entry
    measured = (y.reshape(y.shape[0], -1) != 0).sum(1).double() * per_entry
    den = norm_sq(full).clamp_min(1e-300).sqrt().double()
    return problem.noise.sigma * measured.sqrt() / den


def data_consistency(problem: Problem, x: Tensor) -> Tensor:
    """Relative data-consistency residual per item, ``||A x - y|| / ||y||`` (shape (B,)).

    ``y`` is the noise model's weighted-least-squares data (``y`` itself for Gaussian noise, the
    post-log line integrals for CT counts) with the measurement offset of the intensity map added back
    to both (``problem.metadata["measurement_offset"]``), so the ratio is relative to the data as
    measured. Rows of ``x`` beyond the problem's batch (posterior samples) are not accepted: pass the
    mean or one sample per item.
    """
    y_eff, _ = problem.noise.wls(problem.y)
    with torch.no_grad():
        ax = problem.operator(x.to(real_dtype(y_eff)))
    r = tmap(torch.sub, ax, y_eff)
    off = problem.metadata.get("measurement_offset")
    full = tmap(torch.add, y_eff, off) if off is not None else y_eff
    num = norm_sq(r).clamp_min(0).sqrt()
    den = norm_sq(full).clamp_min(1e-300).sqrt()
    return (num / den).double()
