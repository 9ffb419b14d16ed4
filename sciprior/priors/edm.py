"""EDM preconditioning and training loss (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1 and Eq. 7-8).

``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))`` with

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

``F`` is any network called as ``F(x_in, c_noise)`` with ``c_noise`` a (B,) tensor: MONAI's
``DiffusionModelUNet(x, timesteps)`` takes it as is (see :mod:`sciprior.priors.networks`).
The training loss draws ``ln(sigma) ~ N(P_mean, P_std^2)`` and weights the squared error by
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, which makes the effective
target of ``F`` unit-variance at every noise level. Units: ``sigma`` and ``sigma_data`` are in the
units of the (normalised) image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sciprior.linalg import bcast
from sciprior.priors.base import Denoiser, sigma_batch
from sciprior.priors.networks import unet_size_multiple


def randn_like(x: Tensor, generator: torch.Generator | None = None,
               shape: Sequence[int] | None = None) -> Tensor:
    """Standard normal noise with ``x``'s dtype and device (``shape`` defaults to ``x.shape``).

    With a generator, the noise is drawn on the generator's device and moved to ``x``'s, so a CPU
    generator gives the same numbers whatever device ``x`` lives on.
    """
    shape = tuple(x.shape if shape is None else shape)
    if generator is None:
        return torch.randn(shape, dtype=x.dtype, device=x.device)
    return torch.randn(shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)


def _net_dtype(net: nn.Module, fallback: torch.dtype) -> torch.dtype:
    p = next(net.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else fallback


class EDMDenoiser(Denoiser):
    """EDM-preconditioned denoiser around a network ``F(x_in, c_noise)``.

    Args:
        net: the raw network; its output has the shape of its input.
        sigma_data: standard deviation of the training data (image units).
        sigma_min, sigma_max: noise range the prior is meant for (sampling schedules use it).
        image_shape: (C, H, W) or (C, D, H, W) of the images the prior was trained on, or None.
        P_mean, P_std: log-normal training distribution of sigma.

    The network runs in its own parameter dtype; ``D`` is returned in the dtype and on the
    device of ``x``. ``sigma = 0`` is allowed and gives ``D = x`` (``c_out = 0``).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, image_shape: Sequence[int] | None = None,
                 P_mean: float = -1.2, P_std: float = 1.2):  # noqa: N803 - the paper's names
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"EDMDenoiser: sigma_data must be > 0, got {sigma_data}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDMDenoiser: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if P_std <= 0:
            raise ValueError(f"EDMDenoiser: P_std must be > 0, got {P_std}")
        self.net = net
        self.set_range(sigma_data, sigma_min, sigma_max, image_shape)
        if self.image_shape is not None and len(self.image_shape) not in (3, 4):
            raise ValueError(f"EDMDenoiser: image_shape must be (C, H, W) or (C, D, H, W), "
                             f"got {self.image_shape}")
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)

    # -- preconditioning ---------------------------------------------------------------------
    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for a tensor of noise levels (same shape as ``sigma``)."""
        sd = self.sigma_data
        var = sigma**2 + sd**2
        c_skip = sd**2 / var
        c_out = sigma * sd / var.sqrt()
        c_in = var.rsqrt()
        # sigma = 0 would give -inf; any finite value is harmless there because c_out = 0.
        c_noise = sigma.clamp_min(torch.finfo(sigma.dtype).tiny).log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """EDM weighting ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (4, 5):
            raise ValueError(f"EDMDenoiser: x must be (B, C, H, W) or (B, C, D, H, W), "
                             f"got shape {tuple(x.shape)}")
        if self.image_shape is not None and (x.dim() - 1 != len(self.image_shape)
                                             or x.shape[1] != self.image_shape[0]):
            raise ValueError(f"EDMDenoiser: x of shape {tuple(x.shape)} does not match image_shape "
                             f"{self.image_shape} (channels and number of spatial dims)")
        m = unet_size_multiple(self.net)
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"EDMDenoiser: spatial shape {tuple(x.shape[2:])} must be multiples of {m} for "
                             f"this UNet ({len(self.net.block_out_channels)} levels)")

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``D(x, sigma)``: x (B, C, ...) noisy images, sigma a float, 0-d or (B,) tensor."""
        self._check_input(x)
        s = sigma_batch(sigma, x)
        c_skip, c_out, c_in, c_noise = self.preconditioning(s)
        dt = _net_dtype(self.net, x.dtype)
        f = self.net((bcast(c_in, x) * x).to(dt), c_noise.to(dt))
        if f.shape != x.shape:
            raise ValueError(f"EDMDenoiser: network output {tuple(f.shape)} differs from input "
                             f"{tuple(x.shape)}")
        return bcast(c_skip, x) * x + bcast(c_out, x) * f.to(x.dtype)

    # -- training ------------------------------------------------------------------------------
    def _weighted_errors(self, x0: Tensor, sigma: Tensor, noise: Tensor, weighted: bool = True) -> Tensor:
        """Per-item mean over pixels of ``lambda(sigma) (D(x0 + sigma n, sigma) - x0)^2``; (B,)."""
        d = self(x0 + bcast(sigma, x0) * noise, sigma)
        err = ((d - x0) ** 2).reshape(x0.shape[0], -1).mean(1)
        return self.loss_weight(sigma) * err if weighted else err

    def sample_sigma(self, batch: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(batch,) training noise levels, ``ln(sigma) ~ N(P_mean, P_std^2)``."""
        return (self.P_mean + self.P_std * randn_like(like, generator, (batch,))).exp()

    def loss(self, x0: Tensor, generator: torch.Generator | None = None,
             per_item: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """EDM training loss on a batch of clean images ``x0`` (B, C, ...).

        Per item: ``lambda(sigma) * mean_pixels (D(x0 + sigma n) - x0)^2`` with a fresh
        ``sigma ~ logN(P_mean, P_std^2)`` and ``n ~ N(0, I)`` (EDM sums over pixels; the mean only
        rescales). Returns the batch mean (a scalar), and the (B,) per-item losses if ``per_item``.
        For an exact denoiser and i.i.d. N(0, sigma_data^2) pixels its expectation is exactly 1.
        """
        sigma = self.sample_sigma(x0.shape[0], x0, generator)
        noise = randn_like(x0, generator)
        items = self._weighted_errors(x0, sigma, noise)
        return (items.mean(), items) if per_item else items.mean()

    def denoise_loss_at(self, x0: Tensor, sigmas: Sequence[float] | Tensor,
                        generator: torch.Generator | None = None, weighted: bool = True) -> Tensor:
        """Validation losses at fixed noise levels: a (S,) tensor, one batch-mean per sigma.

        ``weighted=True`` gives the EDM-weighted loss (comparable with :meth:`loss`),
        ``weighted=False`` the plain per-pixel MSE of ``D`` (image units squared).
        """
        sig = torch.as_tensor(sigmas, dtype=x0.dtype).reshape(-1).to(x0.device)
        if (sig <= 0).any():
            raise ValueError(f"denoise_loss_at: sigmas must be > 0, got {sig.tolist()}")
        out = []
        for s in sig:
            noise = randn_like(x0, generator)
            out.append(self._weighted_errors(x0, s.expand(x0.shape[0]), noise, weighted).mean())
        return torch.stack(out)
