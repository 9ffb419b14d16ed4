"""Decomposed Diffusion Sampling (DDS): Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating
Large-Scale Inverse Problems", ICLR 2024.

Each step: denoise (Tweedie), then a few conjugate-gradient (CG) steps on the data term in the Krylov
subspace around the denoised image, then DDIM-like re-noising to the next noise level. No gradient
through the network is needed, so it is cheap and works well with 20-50 NFE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sciprior.linalg import conjugate_gradient
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval, checked
from sciprior.solvers._data import DataTerm
from sciprior.solvers.common import (
    Callback,
    ItemNoise,
    Result,
    finish,
    prepare,
    prior_variance,
    sampling_sigmas,
    steps_bar,
)
from sciprior.solvers.edm import ddim_step


@checked
def dds(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 50, eta: UnitInterval = 0.85,
        cg_iters: NonNegativeInt = 5,
        gamma: PositiveFloat | None = None, sigma_data: PositiveFloat | None = None,
        sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
        num_samples: int = 1, seeds: Sequence[int] | None = None,
        callback: Callback | None = None, progress: bool = True) -> Result:
    """Decomposed Diffusion Sampling (Chung, Lee & Ye, ICLR 2024), in EDM/VE form.

    At each level ``sigma_i`` of the EDM schedule (``karras_sigmas``):

    1. ``x0 = D(x, sigma_i)`` and ``eps = (x - x0) / sigma_i``;
    2. data consistency by ``cg_iters`` CG steps started at ``x0`` (so the update lies in the Krylov
       subspace ``x0 + K(A^H A, r0)``, which keeps it near the data manifold):

       - noiseless Gaussian data (``sigma_y = 0``): CG on ``A^H A x = A^H y``;
       - otherwise the proximal form ``(I + g A^H W A) x = x0 + g A^H W y_eff`` with the WLS view
         ``(y_eff, W)`` of the noise model (``W = I / sigma_y^2`` for Gaussian noise: then
         ``g = gamma_DDS * sigma_y^2`` in the paper's notation).
         ``gamma=None`` (default) uses the Bayesian weight ``g = r_t^2 = sigma^2 sigma_d^2 /
         (sigma^2 + sigma_d^2)``, so that the exact solution is the posterior mean of ``x0`` under the
         approximation ``x0 | x_t ~ N(x0_hat, r_t^2 I)``. A float ``gamma`` is the paper's fixed weight
         on ``||A x - y||^2`` relative to ``||x - x0_hat||^2`` (with ``W`` normalised to mean 1);
    3. re-noise as in the DDS/DDNM code: ``x_next = x0c + sigma_{i+1} (sqrt(1 - eta^2) eps + eta z)``
       (``eta`` is the fraction of *fresh* noise; the VP update ``sqrt(abar') x0c + sqrt(1 - abar')
       (...)`` becomes this under ``x_vp = x_ve / sqrt(1 + sigma^2)``). The last step returns ``x0c``.

    NFE = ``steps`` (no network gradients). Needs a linear operator; any noise model via its WLS view.
    """
    setup = prepare(denoiser, problem, num_samples, seeds)
    prob = setup.problem
    data = DataTerm.linear(prob, "dds")
    noiseless = isinstance(prob.noise, Gaussian) and prob.noise.sigma == 0
    if gamma is not None:
        if gamma <= 0:
            raise ValueError(f"dds: gamma must be > 0, got {gamma}")
        data = data.normalized()
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"dds: eta must be in [0, 1], got {eta}")
    sd = float(sigma_data if sigma_data is not None else denoiser.sigma_data)
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    shape = problem.image_shape
    den = setup.denoiser
    op = data.op
    with torch.no_grad():
        rhs0 = op.adjoint(prob.y) if noiseless else data.rhs()

        def data_step(x0: Tensor, s: float) -> Tensor:
            if noiseless:
                return conjugate_gradient(op.normal, rhs0, x0, iters=cg_iters)
            g = prior_variance(s, sd) if gamma is None else float(gamma)
            return conjugate_gradient(lambda u: u + g * data.normal(u), x0 + g * rhs0, x0, iters=cg_iters)

        x = decomposed_sampling(den, setup.noise, shape, sigmas, eta, data_step, callback, progress, "dds")
    return finish(setup, x, sigmas=sigmas)


def decomposed_sampling(den: Denoiser, noise: ItemNoise, shape: tuple[int, ...], sigmas: Tensor, eta: float,
                        data_step: Callable[[Tensor, float], Tensor], callback: Callback | None, progress: bool,
                        desc: str) -> Tensor:
    """The loop of DDS and DDS-3D: at each level ``sigma_i``, ``x0 = D(x, sigma_i)``, ``x0c = data_step(x0,
    sigma_i)``, then the DDIM re-noising ``x_next = x0c + sigma_{i+1} (sqrt(1 - eta^2) eps + eta z)`` with
    ``eps = (x - x0) / sigma_i``; the last step returns ``x0c``. Draws ``x`` at ``sigmas[0]`` from ``noise``."""
    x = float(sigmas[0]) * noise.randn(*shape)
    for i in steps_bar(len(sigmas) - 1, progress, desc):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = den(x, s)
        eps = (x - x0) / s
        x0c = data_step(x0, s)
        c = eta * s_next
        x = ddim_step(x0c, eps, s_next, c, noise.randn(*shape) if c > 0 else None)
        if callback is not None:
            callback(i, x, x0c, s)
    return x


__all__ = ["dds", "decomposed_sampling"]
