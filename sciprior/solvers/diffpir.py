"""DiffPIR: Zhu et al. 2023, "Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPR.

Half-quadratic splitting inside a reverse diffusion: each step denoises, solves a data proximal
problem, and re-noises. The paper writes it in VP/DDPM form (Algorithm 1):

    x0      = (x_t + (1 - abar_t) s(x_t, t)) / sqrt(abar_t)                          (Tweedie)
    x0_hat  = argmin_z ||y - H z||^2 + rho_t ||z - x0||^2,  rho_t = lambda sigma_n^2 / sigmabar_t^2
    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps_hat + sqrt(zeta) eps)

with ``sigmabar_t = sqrt((1 - abar_t) / abar_t)``. Translated to the EDM/VE convention used here
(``x_ve = x_vp * sqrt(1 + sigma^2)``, ``sigma = sigmabar_t``):

    x0      = D(x, sigma_i)
    x0_hat  = argmin_z nll(z) + lambda ||z - x0||^2 / (2 sigma_i^2)        (r_i^2 = sigma_i^2 / lambda)
    eps_hat = (x - x0_hat) / sigma_i
    x       = x0_hat + sigma_{i+1} (sqrt(1 - zeta) eps_hat + sqrt(zeta) n)

For Gaussian noise ``nll(z) = ||y - A z||^2 / (2 sigma_y^2)``, so the data step is exactly the paper's
with ``rho_t = lambda sigma_y^2 / sigma_i^2``; written with ``nll`` it carries over to stacked and
(via the weighted-least-squares view) non-Gaussian noise. ``lambda = 1`` is the weight at which,
for small ``sigma``, ``x0_hat`` is the exact conditional mean ``E[x0 | x_t, y]`` when
``Cov[x0 | x_t] ~= sigma^2 I``. The last step (``sigma_{i+1} = 0``) returns ``x0_hat``.

NFE = ``steps`` (one denoiser call per step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval, checked
from sciprior.solvers._data import DataTerm
from sciprior.solvers.common import Callback, Result, finish, prepare, sampling_sigmas, steps_bar


@checked
def diffpir(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 100, lam: PositiveFloat = 1.0,
            zeta: UnitInterval = 0.3,
            cg_iters: NonNegativeInt = 50, cg_tol: NonNegativeFloat = 1e-7, grad_steps: PositiveInt = 20,
            sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
            num_samples: int = 1, seeds: Sequence[int] | None = None,
            callback: Callback | None = None, progress: bool = True) -> Result:
    """DiffPIR posterior sampling (Zhu et al. 2023), EDM/VE form (see the module docstring).

    Args:
        denoiser: the prior, ``D(x, sigma)``.
        problem: operator, measurement and noise model (linear operators use the closed-form
            ``prox_l2`` when available, else ``cg_iters`` conjugate-gradient iterations; nonlinear
            operators use ``grad_steps`` gradient steps on the proximal objective).
        steps: number of noise levels (= NFE per trajectory).
        lam: the paper's lambda (data-step weight: ``r^2 = sigma^2 / lam``); the paper tunes it per
            task (about 1 to 10 for images); 1 is the Bayesian weight at small sigma.
        zeta: the paper's zeta in [0, 1]: share of fresh noise when re-noising (0 = deterministic,
            DDIM-like; 1 = all fresh noise). The paper uses 0.1 to 0.4.
        sigma_max, sigma_min, rho: EDM schedule (defaults: the denoiser's range, rho = 7).
        num_samples, seeds, callback, progress: see :mod:`sciprior.solvers.common`.
    Returns:
        :class:`~sciprior.solvers.common.Result` with ``(B, S, *image_shape)`` samples.
    """
    if not 0.0 <= zeta <= 1.0:
        raise ValueError(f"diffpir: zeta must be in [0, 1], got {zeta}")
    if lam <= 0:
        raise ValueError(f"diffpir: lam must be > 0, got {lam}")
    setup = prepare(denoiser, problem, num_samples, seeds)
    den, shape = setup.denoiser, setup.problem.image_shape
    data = DataTerm(setup.problem, "diffpir", cg_iters=cg_iters, cg_tol=cg_tol)
    sigmas = sampling_sigmas(den, steps, sigma_min, sigma_max, rho)
    x = float(sigmas[0]) * setup.noise.randn(*shape)
    lip = None
    for i in steps_bar(steps, progress, "diffpir"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = den(x, s)
        if data.kind == "nonlinear" and lip is None:
            lip = data.lipschitz(x0)  # curvature of nll at the first estimate, for the gradient steps
        x0_hat = data.prox(x0, s / math.sqrt(lam), grad_steps=grad_steps, lipschitz=lip)
        if s_next > 0:
            eps_hat = (x - x0_hat) / s
            x = x0_hat + s_next * (math.sqrt(1.0 - zeta) * eps_hat
                                   + math.sqrt(zeta) * setup.noise.randn(*shape))
        else:
            x = x0_hat
        if callback is not None:
            callback(i, x, x0_hat, s)
    return finish(setup, x, lam=lam, zeta=zeta)
