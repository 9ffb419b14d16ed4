"""Pseudoinverse-guided diffusion (ΠGDM): Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided Diffusion
Models for Inverse Problems", ICLR 2023, for linear operators, in EDM/VE form.

ΠGDM approximates ``x0 | x_t ~ N(x0_hat, r_t^2 I)``, which makes ``p(y | x_t)`` Gaussian,
``N(A x0_hat, r_t^2 A A^H + sigma_y^2 I)``, and its score the vector-Jacobian product

    g = (d x0_hat / d x_t)^T A^H (r_t^2 A A^H + sigma_y^2 I)^{-1} (y - A x0_hat).

Derivation of ``r_t^2`` in VE terms: for data ``x0 ~ N(mu, sigma_d^2 I)`` and ``x_t = x0 + sigma n``,
``Var[x0 | x_t] = sigma^2 sigma_d^2 / (sigma^2 + sigma_d^2)``. With ``sigma_d = 1`` this is the paper's
``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` (``= 1 - abar_t`` in VP form); here ``sigma_d`` defaults to the
prior's ``sigma_data``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sciprior.linalg import conjugate_gradient, real_dtype
from sciprior.physics.noise import Gaussian
from sciprior.physics.operator import Measurement, tmap
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval, checked
from sciprior.solvers._data import DataTerm, require_linear
from sciprior.solvers.common import Callback, Result, finish, prepare, prior_variance, sampling_sigmas, steps_bar
from sciprior.solvers.edm import ddim_noise_std, ddim_step

_WEIGHTS = ("tweedie", "code")


Solve = Callable[[Measurement, float], Tensor]
Residual = Callable[[Tensor], Measurement]


def _inner_solver(problem: Problem, cg_iters: int, cg_tol: float) -> tuple[Solve, Residual, str]:
    """``(solve, residual, method)``: ``solve(r, r2) = A^H (r2 A A^H + Sigma_y)^{-1} r`` in the image domain.

    Uses the identity ``A^H (r2 A A^H + s^2 I)^{-1} = (r2 A^H A + s^2 I)^{-1} A^H``, so the inner system
    lives in the image domain:

    - Gaussian, ``sigma_y = 0`` and a closed-form ``pinv``: ``A^+ r / r2``;
    - Gaussian with a closed-form ``prox_l2``: ``prox_l2(0, r, r2 / s^2) / r2`` (the prox solves
      ``(A^H A + I / gamma) x = A^H r``);
    - otherwise ``cg_iters`` conjugate-gradient steps on ``(r2 A^H W A + I) u = A^H W r`` with the WLS
      weights ``W`` of the noise model (``W = I / sigma_y^2`` for Gaussian noise: the same system;
      for Poisson/transmission noise this is the WLS generalisation).
    """
    op = require_linear(problem, "pigdm")
    noise = problem.noise
    if isinstance(noise, Gaussian):
        sy2 = noise.sigma**2

        def residual(x0: Tensor) -> Measurement:
            return tmap(torch.sub, problem.y, op(x0))

        if sy2 == 0 and op.has_pinv:
            return (lambda r, r2: op.pinv(r) / r2), residual, "pinv"
        if sy2 > 0 and op.has_prox_l2:
            def prox(r: Measurement, r2: float) -> Tensor:
                zero = torch.zeros((problem.batch_size, *problem.image_shape), dtype=real_dtype(r),
                                   device=_first(r).device)
                return op.prox_l2(zero, r, r2 / sy2) / r2
            return prox, residual, "prox_l2"
        if sy2 == 0:
            def cg0(r: Measurement, r2: float) -> Tensor:
                return conjugate_gradient(op.normal, op.adjoint(r), iters=cg_iters, tol=cg_tol) / r2
            return cg0, residual, "cg"

        def cg(r: Measurement, r2: float) -> Tensor:
            return conjugate_gradient(lambda u: r2 * op.normal(u) + sy2 * u, op.adjoint(r), iters=cg_iters,
                                      tol=cg_tol)
        return cg, residual, "cg"

    data = DataTerm.linear(problem, "pigdm")

    def cg_wls(r: Measurement, r2: float) -> Tensor:
        return conjugate_gradient(lambda u: r2 * data.normal(u) + u, data.weighted_adjoint(r), iters=cg_iters,
                                  tol=cg_tol)
    return cg_wls, data.residual, "cg-wls"


def _first(r: Measurement) -> Tensor:
    return r[0] if isinstance(r, tuple) else r


@checked
def pigdm(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 100, eta: UnitInterval = 1.0,
          scale: PositiveFloat = 1.0,
          weight: str = "tweedie", sigma_data: PositiveFloat | None = None, cg_iters: NonNegativeInt = 20,
          cg_tol: NonNegativeFloat = 1e-6,
          sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
          num_samples: int = 1, seeds: Sequence[int] | None = None,
          callback: Callback | None = None, progress: bool = True) -> Result:
    """ΠGDM (Song et al., ICLR 2023) for linear operators, on the EDM schedule.

    Each step ``sigma_i -> sigma_{i+1}`` (``karras_sigmas``):

    1. ``x0 = D(x, sigma_i)`` with the graph kept; ``r_t^2 = sigma^2 sigma_d^2 / (sigma^2 + sigma_d^2)``;
    2. ``u = A^H (r_t^2 A A^H + sigma_y^2 I)^{-1} (y - A x0)`` (closed form via ``pinv``/``prox_l2`` or CG,
       see :func:`_inner_solver`), and ``g = (d x0 / d x)^T u`` by autograd (one VJP);
    3. guided estimate ``x0_y = x0 + scale * w_t * g``: with ``weight="tweedie"`` ``w_t = sigma_t^2``, i.e.
       Tweedie's formula for the guided score (``E[x0 | x_t, y] = x_t + sigma^2 grad log p(x_t | y)``);
       exact for an isotropic Gaussian prior. ``weight="code"`` uses ``w_t = r_t^2``, the weighting of
       the authors' released implementation (NVlabs/RED-diff ``algos/pgdm.py``: it adds
       ``sqrt(abar_t) (d x0 / d x_vp)^T A^+ (y - A x0)`` to the VP estimate of ``x0``, which is
       ``r_t^2 g`` in VE terms with ``sigma_d = 1``); it damps the guidance at high noise and is
       noticeably biased on the exact Gaussian test problem;
    4. DDIM step with ``x0_y`` and ``eps = (x - x0_y) / sigma_i`` (``eta = 1``: ancestral/DDPM).

    Needs a linear operator; Gaussian noise uses the closed forms, other noise models their WLS view
    (weighted system solved by CG). NFE = ``steps`` (plus one VJP per step).
    """
    if weight not in _WEIGHTS:
        raise ValueError(f"pigdm: weight must be one of {_WEIGHTS}, got {weight!r}")
    setup = prepare(denoiser, problem, num_samples, seeds)
    prob = setup.problem
    solve, residual, method = _inner_solver(prob, cg_iters, cg_tol)
    sd = float(sigma_data if sigma_data is not None else denoiser.sigma_data)
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    shape = problem.image_shape
    den = setup.denoiser
    x = float(sigmas[0]) * setup.noise.randn(*shape)
    for i in steps_bar(steps, progress, "pigdm"):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        r2 = prior_variance(s, sd)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = den(xg, s)
            with torch.no_grad():
                u = solve(residual(x0.detach()), r2)
            (g,) = torch.autograd.grad(x0, xg, grad_outputs=u)
        w = s**2 if weight == "tweedie" else r2
        x0y = x0.detach() + (scale * w) * g
        c = ddim_noise_std(s, s_next, eta)
        x = ddim_step(x0y, (x - x0y) / s, s_next, c, setup.noise.randn(*shape) if c > 0 else None).detach()
        if callback is not None:
            callback(i, x, x0y, s)
    return finish(setup, x, sigmas=sigmas, inner_solver=method)
