"""The denoiser contract, EDM convention (Karras et al. 2022, "Elucidating the design space...").

A prior enters every solver as ``D(x, sigma)``: the MMSE estimate of the clean image ``x0`` from
``x = x0 + sigma * n``, ``n ~ N(0, I)``, with ``sigma`` in the units of the image (the prior's
domain, typically scaled so that the data have standard deviation about ``sigma_data``).
Shapes: ``x`` is (B, C, H, W) or (B, C, D, H, W); ``sigma`` a float, a 0-d tensor or a (B,) tensor.
The score is ``(D(x, sigma) - x) / sigma^2`` (Tweedie).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sciprior.linalg import bcast


def sigma_batch(sigma: float | Tensor, x: Tensor) -> Tensor:
    """``sigma`` as a (B,) tensor on ``x``'s device and dtype."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    s = s.reshape(-1)
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma has {s.shape[0]} entries for a batch of {x.shape[0]}")
    return s


class Denoiser(nn.Module):
    """Base class of every prior: ``forward(x, sigma) -> x0_hat`` with the shape of ``x``.

    Attributes:
        sigma_data: standard deviation of the data in the prior's units.
        sigma_min, sigma_max: the noise range the prior was trained for (sampling schedules use it).
        image_shape: (C, H, W) or (C, D, H, W) the prior expects, or None if any shape works.
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    image_shape: tuple[int, ...] | None = None

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_range(self, sigma_data: float, sigma_min: float, sigma_max: float, image_shape=None) -> None:
        """Set the data scale, the trained noise range and the expected image shape (None: any)."""
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2``."""
        s = bcast(sigma_batch(sigma, x), x)
        return (self(x, sigma) - x) / s**2


class CountingDenoiser(Denoiser):
    """Wraps a denoiser and counts network function evaluations (one per batched call)."""

    def __init__(self, inner: Denoiser):
        super().__init__()
        self.inner = inner
        self.nfe = 0
        self.set_range(inner.sigma_data, inner.sigma_min, inner.sigma_max, inner.image_shape)

    def forward(self, x, sigma):
        self.nfe += 1
        return self.inner(x, sigma)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True, dtype: torch.dtype = torch.float64) -> Tensor:
    """EDM noise levels ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Decreasing, ``steps`` values from sigma_max to sigma_min, plus a trailing 0 if ``append_zero``.
    """
    if steps < 1:
        raise ValueError(f"karras_sigmas: steps must be >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"karras_sigmas: need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(steps, dtype=dtype) / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    if steps == 1:
        s = torch.tensor([sigma_max], dtype=dtype)
    return torch.cat([s, s.new_zeros(1)]) if append_zero else s
