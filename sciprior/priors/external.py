"""Adapters that plug networks trained with other parameterisations into ``D(x, sigma)``.

Both use the identity between variance-exploding (EDM) and scaled diffusions (Karras et al. 2022,
Sec. 2 and App. C; Song et al. 2021): a noisy image ``x = x0 + sigma n`` is a rescaled
``x_t = s(t) x``, so a network trained on ``x_t`` sees ``s(t) x`` at the matching ``t``.

- :class:`EpsilonDenoiser`: DDPM nets (Ho et al. 2020) trained on
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (e.g. with MONAI's ``DDPMScheduler``), predicting
  ``eps`` (default), ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022) or ``x0``.
  ``sigma(t) = sqrt((1 - abar_t) / abar_t)``, ``x_t = x / sqrt(1 + sigma^2)``.
- :class:`FlowDenoiser`: rectified-flow / flow-matching velocity nets (Liu et al. 2023; Lipman et
  al. 2023) trained on ``x_t = (1 - t) x0 + t eps`` with target ``v = eps - x0``:
  ``t = sigma / (1 + sigma)``, ``x_t = x / (1 + sigma)``, ``D = x_t - t v``.

Networks are called ``net(x_t, t)`` with ``t`` a (B,) tensor, as MONAI's ``DiffusionModelUNet``
takes its ``timesteps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from sciprior.linalg import bcast
from sciprior.priors.base import Denoiser, sigma_batch
from sciprior.priors.edm import _net_dtype

PredictionType = Literal["epsilon", "v_prediction", "sample"]


class EpsilonDenoiser(Denoiser):
    """A discrete-time DDPM network as an EDM denoiser.

    Args:
        net: ``net(x_t, t) -> prediction`` with ``t`` the timestep index (0 = least noise).
        alphas_cumprod: (T,) the training schedule's ``abar_t``, strictly decreasing in (0, 1)
            (e.g. ``DDPMScheduler(...).alphas_cumprod``).
        prediction_type: what the net predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        timestep_mode: how a noise level off the table becomes a timestep.
            ``"interp"`` (default): a fractional ``t``, linear in ``log sigma`` between the two
            neighbouring table entries (exact on the table; networks with a sinusoidal time embedding,
            like MONAI's, accept fractional t). ``"nearest"``: the table entry closest in
            ``log sigma``, passed as an integer (long) tensor, for nets that index an embedding
            table; exact only when sigma is on the table (sample with ``self.sigma_table``).
            Outside the table, ``t`` is clamped to ``[0, T-1]`` while the input scaling still uses
            the requested sigma.
        sigma_data: standard deviation of the training data (e.g. 0.5 for images in [-1, 1]).
        image_shape: (C, H, W) or (C, D, H, W), or None.
    """

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor | Sequence[float],
                 prediction_type: PredictionType = "epsilon",
                 timestep_mode: Literal["interp", "nearest"] = "interp",
                 sigma_data: float = 0.5, image_shape: Sequence[int] | None = None):
        super().__init__()
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        if abar.numel() < 2:
            raise ValueError(f"EpsilonDenoiser: alphas_cumprod needs at least 2 entries, got {abar.numel()}")
        if (abar <= 0).any() or (abar >= 1).any():
            raise ValueError("EpsilonDenoiser: alphas_cumprod must lie strictly inside (0, 1)")
        if not (abar[1:] < abar[:-1]).all():
            raise ValueError("EpsilonDenoiser: alphas_cumprod must be strictly decreasing")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"EpsilonDenoiser: unknown prediction_type {prediction_type!r}")
        if timestep_mode not in ("interp", "nearest"):
            raise ValueError(f"EpsilonDenoiser: unknown timestep_mode {timestep_mode!r}")
        self.net = net
        self.prediction_type = prediction_type
        self.timestep_mode = timestep_mode
        self.register_buffer("log_sigmas", 0.5 * (torch.log1p(-abar) - torch.log(abar)), persistent=False)
        self.set_range(sigma_data, self.log_sigmas[0].exp(), self.log_sigmas[-1].exp(), image_shape)

    @property
    def sigma_table(self) -> Tensor:
        """(T,) noise levels of the discrete timesteps, increasing with t (float64)."""
        return self.log_sigmas.double().exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Timesteps for noise levels (same shape; float64, or long in ``"nearest"`` mode)."""
        ls = self.log_sigmas.double()  # stays float64 even after module.float()
        log_s = torch.as_tensor(sigma, dtype=torch.float64, device=ls.device).log()
        if self.timestep_mode == "nearest":
            return (log_s.unsqueeze(-1) - ls).abs().argmin(-1)
        log_s = log_s.clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s.contiguous()).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise levels of (fractional) timesteps in ``[0, T-1]``, linear in ``log sigma`` (float64)."""
        ls = self.log_sigmas.double()
        t = torch.as_tensor(t, dtype=torch.float64, device=ls.device).clamp(0, ls.numel() - 1)
        lo = t.floor().long().clamp(max=ls.numel() - 2)
        w = t - lo
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        s = sigma_batch(sigma, x)
        t = self.sigma_to_t(s.detach().to(self.log_sigmas.device)).to(x.device)
        scale = bcast((1 + s**2).rsqrt(), x)  # sqrt(abar) at the requested sigma
        x_t = scale * x
        dt = _net_dtype(self.net, x.dtype)
        out = self.net(x_t.to(dt), t.to(dt) if t.is_floating_point() else t).to(x.dtype)
        if out.shape != x.shape:
            raise ValueError(f"EpsilonDenoiser: network output {tuple(out.shape)} differs from input "
                             f"{tuple(x.shape)}")
        sb = bcast(s, x)
        if self.prediction_type == "epsilon":
            return x - sb * out
        if self.prediction_type == "v_prediction":
            return scale * (x_t - sb * out)  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return out


class FlowDenoiser(Denoiser):
    """A rectified-flow velocity network as an EDM denoiser.

    Convention: ``x_t = (1 - t) x0 + t eps`` (t = 0 data, t = 1 noise), ``v = eps - x0``.
    ``D(x, sigma) = x_t - t v(x_t, t)`` with ``t = sigma / (1 + sigma)``, ``x_t = x / (1 + sigma)``.

    Args:
        net: ``net(x_t, time_scale * t) -> v``.
        time_scale: factor applied to ``t`` before the network (e.g. 1000 for nets trained on
            timesteps in [0, 1000]).
        sigma_data, sigma_min, sigma_max, image_shape: as for every :class:`Denoiser`.
    """

    def __init__(self, net: nn.Module, time_scale: float = 1.0, sigma_data: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, image_shape: Sequence[int] | None = None):
        super().__init__()
        if time_scale <= 0:
            raise ValueError(f"FlowDenoiser: time_scale must be > 0, got {time_scale}")
        self.net = net
        self.time_scale = float(time_scale)
        self.set_range(sigma_data, sigma_min, sigma_max, image_shape)

    @staticmethod
    def sigma_to_t(sigma: Tensor) -> Tensor:
        """``t = sigma / (1 + sigma)`` in [0, 1)."""
        return sigma / (1 + sigma)

    @staticmethod
    def t_to_sigma(t: Tensor) -> Tensor:
        """``sigma = t / (1 - t)`` for t in [0, 1)."""
        return t / (1 - t)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        s = sigma_batch(sigma, x)
        t = self.sigma_to_t(s)
        x_t = x / bcast(1 + s, x)
        dt = _net_dtype(self.net, x.dtype)
        v = self.net(x_t.to(dt), (self.time_scale * t).to(dt)).to(x.dtype)
        if v.shape != x.shape:
            raise ValueError(f"FlowDenoiser: network output {tuple(v.shape)} differs from input "
                             f"{tuple(x.shape)}")
        return x_t - bcast(t, x) * v
