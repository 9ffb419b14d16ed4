"""Diffusion Posterior Sampling (DPS): Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior Sampling for
General Noisy Inverse Problems", ICLR 2023 (Algorithms 1 and 2), in EDM/VE form.

DPS approximates ``p(y | x_t) ~ p(y | x0_hat(x_t))`` and, after each ancestral (DDPM) step, moves the
state down the gradient of the data misfit of the denoised estimate, differentiated through the
denoiser with autograd. It works for any (nonlinear) operator and any noise model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sciprior.physics.operator import tmap
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import PositiveFloat, PositiveInt, UnitInterval, checked
from sciprior.solvers._data import item_mean
from sciprior.solvers.common import Callback, Result, finish, prepare, sampling_sigmas, steps_bar
from sciprior.solvers.edm import ddim_noise_std, ddim_step


def _misfit_scale(problem: Problem) -> tuple[Tensor, Tensor]:
    """``(s2, nll_min)`` per row so that ``L(x) = 2 s2 (nll(x) - nll_min)`` is ``||y - A x||^2``.

    For Gaussian noise ``s2 = sigma^2`` (``effective_sigma``) and ``nll_min = 0``, so ``L`` is exactly the
    paper's squared residual. For other models ``L`` is the deviance (twice the log-likelihood ratio
    to the saturated fit ``y_eff`` of the WLS view) in squared measurement units, with
    ``s2 = 1 / mean(w)`` the average noise variance of the WLS view.
    """
    y_eff, w = problem.noise.wls(problem.y)
    s2 = 1.0 / item_mean(w)
    with torch.no_grad():
        nll_min = problem.noise.nll(problem.y, tmap(lambda t: t.detach(), y_eff))
    return s2, nll_min


@checked
def dps(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 100, zeta: PositiveFloat = 1.0,
        eta: UnitInterval = 1.0,
        sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
        num_samples: int = 1, seeds: Sequence[int] | None = None,
        callback: Callback | None = None, progress: bool = True) -> Result:
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023) on the EDM schedule.

    Each step ``sigma_i -> sigma_{i+1}`` (``karras_sigmas``):

    1. ``x0 = D(x_i, sigma_i)`` with the graph kept;
    2. ancestral step ``x' = x0 + sqrt(sigma_{i+1}^2 - c^2) (x_i - x0) / sigma_i + c z`` (DDIM in VE form,
       ``eta = 1``: the DDPM step of the paper's Algorithm 1);
    3. ``x_{i+1} = x' - zeta_i * k_i * grad_{x_i} L(x0(x_i))`` with ``L = ||y - A(x0)||^2`` and the
       paper's step size ``zeta_i = zeta / ||y - A(x0)||`` (Appendix C: constant ``zeta'`` divided by the
       residual norm; per item). ``k_i = sqrt((1 + sigma_i^2)(1 + sigma_{i+1}^2))`` maps the paper's VP
       update to VE coordinates (``x_vp = x_ve / sqrt(1 + sigma^2)``, so ``grad_vp = sqrt(1 +
       sigma_i^2) grad_ve`` and a VP shift at step i+1 is ``sqrt(1 + sigma_{i+1}^2)`` times larger in VE).

    Any noise model: ``L = 2 s^2 (nll(A x0) - nll_min)`` (see :func:`_misfit_scale`), which is exactly
    ``||y - A x0||^2`` for Gaussian noise and the deviance in squared measurement units otherwise
    (the paper's Poisson variant uses a weighted residual, the same to second order).

    ``zeta`` is per step: the paper's values (``zeta' in [0.1, 1]``) were tuned for 1000 DDPM steps;
    with fewer steps a larger ``zeta`` gives comparable total guidance. NFE = ``steps`` (plus one
    vector-Jacobian product through the denoiser per step).
    """
    setup = prepare(denoiser, problem, num_samples, seeds)
    prob = setup.problem
    s2, nll_min = _misfit_scale(prob)
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    shape = problem.image_shape
    den = setup.denoiser
    x = float(sigmas[0]) * setup.noise.randn(*shape)
    tiny = torch.finfo(x.dtype).tiny
    for i in steps_bar(steps, progress, "dps"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = den(xg, s)
            misfit = 2.0 * s2 * (prob.nll(x0) - nll_min)  # ||y - A x0||^2 per row (Gaussian noise)
            (grad,) = torch.autograd.grad(misfit.sum(), xg)
        x0 = x0.detach()
        norm = misfit.detach().abs().sqrt().clamp_min(tiny)
        c = ddim_noise_std(s, s_next, eta)
        x_next = ddim_step(x0, (x - x0) / s, s_next, c, setup.noise.randn(*shape) if c > 0 else None)
        k = math.sqrt((1.0 + s**2) * (1.0 + s_next**2))
        x = (x_next - (zeta * k) * grad / norm.reshape(-1, *([1] * (grad.dim() - 1)))).detach()
        if callback is not None:
            callback(i, x, x0, s)
    return finish(setup, x, sigmas=sigmas)
