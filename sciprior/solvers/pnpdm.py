"""PnP-DM: Wu, Sun, Chen, Zhang, Yue, Bouman 2024, "Principled Probabilistic Imaging using Diffusion
Models as Plug-and-Play Priors", NeurIPS.

Split Gibbs sampling of ``pi(x, z) ∝ p(x) exp(-nll(z) - ||x - z||^2 / (2 rho^2))``, whose x-marginal
tends to the posterior ``p(x | y)`` as ``rho -> 0``. Iteration k, with ``rho_k = max(rho_min,
rho_start * rho_decay^k)``:

    likelihood step   z ~ p(z | x, y) ∝ exp(-nll(z) - ||z - x||^2 / (2 rho_k^2))
    prior step        x ~ p(x | z)    ∝ p(x) N(z; x, rho_k^2 I)

The likelihood step is exact for a linear operator with Gaussian noise (perturb-and-MAP: the
operator's closed-form ``prox_l2`` or conjugate gradients), otherwise ``langevin_steps`` unadjusted
Langevin steps on the true ``nll`` (as the paper does for nonlinear problems). The prior step is a
denoising posterior: ``z`` is a noisy image at level ``rho_k`` in the EDM/VE convention, so a sample
of ``p(x | z)`` is the reverse diffusion started at ``sigma = rho_k`` from ``z`` (the paper's
"EDM SDE" mode). Its levels are ``rho_k`` followed by the nodes of the global EDM schedule
``karras_sigmas(prior_steps, sigma_min, sigma_max)`` below ``rho_k`` (as in the reference code),
integrated with the reverse-diffusion predictor in ``t = sigma^2`` (:func:`sciprior.solvers.edm.reverse_sde`).
The result is the prior-step sample ``x`` of the last iteration.

For a linear Gaussian problem with likelihood ``N(y; A x, Sigma_y)`` the x-marginal at fixed ``rho``
is the posterior under the inflated noise ``Sigma_y + rho^2 A A^H``: ``rho_min`` sets this bias.
Defaults are the paper's (rho 10 -> 0.3 with decay 0.9, 100 iterations, 100-level EDM grid) for
images in [-1, 1]; ``rho`` is in the prior's units, so rescale it with ``sigma_data``.

NFE = sum over iterations of (1 + number of grid levels below rho_k) (reported exactly in
``Result.nfe``); for the defaults about 30 per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, checked
from sciprior.solvers._data import DataTerm
from sciprior.solvers.common import Callback, Result, finish, prepare, sampling_sigmas, steps_bar
from sciprior.solvers.edm import reverse_sde


def rho_schedule(steps: int, rho_start: float, rho_min: float, rho_decay: float) -> list[float]:
    """``rho_k = max(rho_min, rho_start * rho_decay^k)`` for ``k = 0 .. steps-1``."""
    return [max(rho_min, rho_start * rho_decay**k) for k in range(steps)]


@checked
def pnpdm(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 100, rho_start: PositiveFloat = 10.0,
          rho_min: PositiveFloat = 0.3, rho_decay: PositiveFloat = 0.9, prior_steps: PositiveInt = 100,
          likelihood: str = "auto", langevin_steps: PositiveInt = 100, langevin_step: PositiveFloat = 0.1,
          cg_iters: NonNegativeInt = 50, cg_tol: NonNegativeFloat = 1e-7,
          sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
          num_samples: int = 1, seeds: Sequence[int] | None = None,
          callback: Callback | None = None, progress: bool = True) -> Result:
    """PnP-DM split Gibbs sampler (Wu et al. 2024); see the module docstring.

    Args:
        steps: Gibbs iterations (each = one likelihood step + one prior step).
        rho_start, rho_min, rho_decay: coupling schedule ``max(rho_min, rho_start * rho_decay^k)``
            (prior units; ``rho_start`` is capped at the schedule's ``sigma_max``).
        prior_steps: size of the global EDM grid whose levels below ``rho_k`` the prior step uses.
        likelihood: ``"auto"`` (exact when linear + Gaussian, else Langevin), ``"exact"`` or
            ``"langevin"``.
        langevin_steps, langevin_step: Langevin budget and step relative to ``1 / (1/rho^2 + L)``.
        cg_iters, cg_tol: conjugate gradients for the exact step without a closed-form ``prox_l2``.
        sigma_max, sigma_min, rho: the EDM grid (defaults: the denoiser's range, rho = 7).
        num_samples, seeds, callback, progress: see :mod:`sciprior.solvers.common`; the callback
            gets ``(k, x, z, rho_k)`` (prior-step sample, likelihood-step sample, coupling).
    Returns:
        :class:`~sciprior.solvers.common.Result` (samples from independent chains).
    """
    if likelihood not in ("auto", "exact", "langevin"):
        raise ValueError(f"pnpdm: likelihood must be 'auto', 'exact' or 'langevin', got {likelihood!r}")
    if not (0 < rho_min <= rho_start) or not (0 < rho_decay <= 1):
        raise ValueError(f"pnpdm: need 0 < rho_min <= rho_start and 0 < rho_decay <= 1, got "
                         f"rho_start={rho_start}, rho_min={rho_min}, rho_decay={rho_decay}")
    setup = prepare(denoiser, problem, num_samples, seeds)
    den = setup.denoiser
    data = DataTerm(setup.problem, "pnpdm", cg_iters=cg_iters, cg_tol=cg_tol)
    exact = likelihood == "exact" or (likelihood == "auto" and data.kind == "gaussian")
    if exact and data.kind != "gaussian":
        raise TypeError(f"pnpdm: likelihood='exact' needs a linear operator with Gaussian noise; got "
                        f"{setup.problem.operator.name} with {type(setup.problem.noise).__name__}")
    grid = sampling_sigmas(den, prior_steps, sigma_min, sigma_max, rho)[:-1]
    rhos = [min(r, float(grid[0])) for r in rho_schedule(steps, rho_start, rho_min, rho_decay)]
    x = torch.zeros(setup.shape, device=setup.device, dtype=setup.dtype)
    lip = None
    for k in steps_bar(steps, progress, "pnpdm"):
        r = rhos[k]
        if exact:
            z = data.sample_exact(x, r, setup.noise)
        else:
            if lip is None:
                lip = data.lipschitz(x)
            z = data.sample_langevin(x, x, r, langevin_steps, langevin_step, setup.noise, lip)
        levels = torch.cat([grid.new_tensor([r]), grid[grid < r], grid.new_zeros(1)])
        with torch.no_grad():
            x = reverse_sde(den, z, levels, setup.noise)
        if callback is not None:
            callback(k, x, z, r)
    return finish(setup, x, rho_final=rhos[-1])
