"""Unconditional EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", NeurIPS, Algorithm 2) and the small VE step helpers the guided samplers share.

Convention (EDM / variance exploding): ``x_t = x0 + sigma * n`` with ``sigma`` in the prior's image
units; ``D(x, sigma) = E[x0 | x_t]``. The probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``.

``edm_sampler`` is the sanity-check "solver": it ignores the measurement and draws from the prior,
using the problem only for its image shape and batch size (``num_samples`` prior draws per item).
``edm_sample`` does the same without a problem. :func:`reverse_sde` and :func:`pf_ode` are the unconditional
inner loops of the plug-and-play samplers (PnP-DM, DAPS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import NonNegativeFloat, PositiveFloat, PositiveInt, checked
from sciprior.solvers.common import Callback, ItemNoise, Result, finish, prepare, sampling_sigmas, steps_bar


def ddim_noise_std(sigma: float, sigma_next: float, eta: float) -> float:
    """Fresh-noise std of a DDIM step from ``sigma`` to ``sigma_next`` in VE form (Song et al. 2021).

    ``eta = 1`` gives the DDPM ancestral step (the std of ``q(x_next | x_t, x0)``,
    ``sigma_next * sqrt(1 - sigma_next^2 / sigma^2)``), ``eta = 0`` the deterministic DDIM step.
    (VP form: ``x_vp = x_ve / sqrt(1 + sigma^2)``; DDIM's eta carries over unchanged.)
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sigma_next <= 0:
        return 0.0
    return eta * sigma_next * math.sqrt(max(1.0 - sigma_next**2 / sigma**2, 0.0))


def ddim_step(x0: Tensor, eps: Tensor, sigma_next: float, noise_std: float, noise: Tensor | None) -> Tensor:
    """``x_next = x0 + sqrt(sigma_next^2 - c^2) * eps + c * noise`` with ``c = noise_std`` (VE DDIM).

    ``eps`` is the (unit-variance) noise direction, usually ``(x_t - x0) / sigma``. ``sigma_next = 0``
    returns ``x0``.
    """
    if sigma_next <= 0:
        return x0
    out = x0 + math.sqrt(max(sigma_next**2 - noise_std**2, 0.0)) * eps
    if noise_std > 0:
        if noise is None:
            raise ValueError("ddim_step: noise_std > 0 needs a noise tensor")
        out = out + noise_std * noise
    return out


def _heun_loop(den: Denoiser, noise: ItemNoise, image_shape: tuple[int, ...], sigmas: Tensor,
               s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
               callback: Callback | None, progress: bool) -> Tensor:
    """Karras et al. (2022) Algorithm 2: Heun's 2nd-order method with optional churn."""
    steps = len(sigmas) - 1
    x = float(sigmas[0]) * noise.randn(*image_shape)
    gamma_max = math.sqrt(2.0) - 1.0
    for i in steps_bar(steps, progress, "edm"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / steps, gamma_max) if (s_churn > 0 and s_tmin <= s <= s_tmax) else 0.0
        s_hat = s * (1.0 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * noise.randn(*image_shape)
        x0 = den(x, s_hat)
        d = (x - x0) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:  # second-order correction
            d2 = (x_next - den(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d2)
        if callback is not None:
            callback(i, x_next, x0, s)
        x = x_next
    return x


@checked
def edm_sampler(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 40, s_churn: NonNegativeFloat = 0.0,
                s_tmin: NonNegativeFloat = 0.0, s_tmax: float = float("inf"), s_noise: NonNegativeFloat = 1.0,
                sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None,
                rho: PositiveFloat = 7.0, num_samples: int = 1, seeds: Sequence[int] | None = None,
                callback: Callback | None = None, progress: bool = True) -> Result:
    """Draw prior samples with the EDM Heun sampler (ignores ``problem.y``; a sanity check).

    Karras et al. 2022, Algorithm 2 (``s_churn = 0``: the deterministic Algorithm 1). The problem
    supplies the image shape and the batch size B; the result holds ``num_samples`` prior samples per
    item, seeded per item.

    Args:
        steps: number of noise levels N of the schedule ``karras_sigmas`` (rho, sigma range).
            NFE = 2 N - 1 (Heun: two evaluations per step, one on the last step to sigma = 0).
        s_churn, s_tmin, s_tmax, s_noise: EDM stochasticity: on levels in ``[s_tmin, s_tmax]`` the
            state is re-noised from ``sigma`` up to ``sigma (1 + gamma)``, ``gamma = min(s_churn/N,
            sqrt(2) - 1)``, with noise scaled by ``s_noise``.
    Returns:
        :class:`Result` with samples ``(B, S, *image_shape)``.
    """
    setup = prepare(denoiser, problem, num_samples, seeds)
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    with torch.no_grad():
        x = _heun_loop(setup.denoiser, setup.noise, problem.image_shape, sigmas, s_churn, s_tmin, s_tmax,
                       s_noise, callback, progress)
    return finish(setup, x, sigmas=sigmas)


@checked
def edm_sample(denoiser: Denoiser, shape: Sequence[int], *, steps: PositiveInt = 40, s_churn: NonNegativeFloat = 0.0,
               s_tmin: NonNegativeFloat = 0.0, s_tmax: float = float("inf"), s_noise: NonNegativeFloat = 1.0,
               sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
               seeds: Sequence[int] | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, callback: Callback | None = None,
               progress: bool = False) -> Tensor:
    """Unconditional generation without a problem: returns ``shape = (B, *image_shape)`` samples.

    Sample ``b`` is drawn from its own generator seeded with ``seeds[b]`` (default ``b``), so it does
    not depend on the batch. Same algorithm and arguments as :func:`edm_sampler` (NFE = 2 steps - 1).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"edm_sample: shape must be (B, *image_shape), got {shape}")
    b, image_shape = shape[0], shape[1:]
    if denoiser.image_shape is not None and tuple(denoiser.image_shape) != image_shape:
        raise ValueError(f"edm_sample: the prior expects images of shape {tuple(denoiser.image_shape)}, "
                         f"got {image_shape}")
    seeds = list(range(b)) if seeds is None else list(seeds)
    if len(seeds) != b:
        raise ValueError(f"edm_sample: got {len(seeds)} seeds for a batch of {b}")
    noise = ItemNoise(seeds, 1, device, dtype)
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    with torch.no_grad():
        return _heun_loop(denoiser, noise, image_shape, sigmas, s_churn, s_tmin, s_tmax, s_noise,
                          callback, progress)


def reverse_sde(denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: ItemNoise) -> Tensor:
    """Sample ``p(x0 | x_{sigmas[0]} = x)`` with the reverse VE SDE, ``len(sigmas) - 1`` denoiser calls.

    Discretised in ``t = sigma^2`` (the reverse-diffusion predictor of Song et al. 2021, ICLR):
    ``x' = x + (s^2 - s'^2) * score(x, s) + sqrt(s^2 - s'^2) * n`` with
    ``score = (D(x, s) - x) / s^2``. For a Gaussian prior the transition mean is exact and the
    variance is off by a factor ``(v + s^2) / (v + s'^2)`` per step (v: prior variance), so the
    sampler is nearly exact whenever the start level is small against the prior's scale.
    ``sigmas`` is decreasing and may end with 0.
    """
    shape = x.shape[1:]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoiser(x, s)
        dt = s * s - s_next * s_next
        x = x + (dt / (s * s)) * (d - x) + math.sqrt(dt) * noise.randn(*shape).to(x)
    return x


def pf_ode(denoiser: Denoiser, x: Tensor, sigmas: Tensor) -> Tensor:
    """Euler steps of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` along ``sigmas``.

    ``len(sigmas) - 1`` denoiser calls; a final level 0 makes the last step return ``D(x, s)``.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoiser(x, s)
        x = d + (s_next / s) * (x - d)
    return x
