"""Denoising Diffusion Null-space Model (DDNM / DDNM+): Wang, Yu & Zhang, "Zero-Shot Image Restoration
Using Denoising Diffusion Null-Space Model", ICLR 2023, in EDM/VE form.

Range-null-space decomposition: after each denoising step the range-space part of the estimate is
replaced by the measurement, ``x0 <- x0 - A^+ (A x0 - y)`` (null space kept from the prior), then the
DDPM posterior step continues from the corrected estimate. DDNM+ (noisy data) shrinks the correction by
``lambda_t`` and lowers the fresh noise so that the noise carried in by ``A^+ n`` is accounted for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sciprior.physics.noise import Gaussian
from sciprior.physics.operator import LinearOperator, norm_sq, tmap
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.ranges import PositiveFloat, PositiveInt, UnitInterval, checked
from sciprior.solvers.common import Callback, Result, finish, prepare, sampling_sigmas, steps_bar
from sciprior.solvers.edm import ddim_noise_std


def pinv_noise_gain(op: LinearOperator, y_like: torch.Tensor, image_shape: tuple[int, ...],
                    probes: int | None = None, seed: int = 0) -> float:
    """RMS amplification of white measurement noise by ``A^+``, per range-space dimension.

    ``gain^2 = E||A^+ n||^2 / E||A^+ A z||^2 = mean_i 1/s_i^2`` over the nonzero singular values ``s_i``
    (``n``, ``z`` white, real and imaginary parts each N(0, 1) for complex data), estimated with
    fixed-seed probes (default: ~2e4 random image entries, at least 4 probes; relative error about
    ``sqrt(2 / (probes * rank))``). It is 1 for masks, subsampled unitary transforms and other operators
    with unit singular values, ``sqrt(f^n)`` for block means.
    """
    if probes is None:
        probes = min(4096, max(4, math.ceil(2e4 / math.prod(image_shape))))
    g = torch.Generator().manual_seed(seed)
    real = y_like.real.dtype if y_like.is_complex() else y_like.dtype
    n = torch.randn((probes, *y_like.shape[1:]), generator=g, dtype=real)
    if y_like.is_complex():
        n = torch.complex(n, torch.randn(n.shape, generator=g, dtype=real)).to(y_like.dtype)
    n = n.to(y_like.device)
    z = torch.randn((probes, *image_shape), generator=g, dtype=real).to(y_like.device)
    num = float(norm_sq(op.pinv(n)).sum())
    den = float(norm_sq(op.pinv(op(z))).sum())
    if den <= 0:
        raise ValueError(f"ddnm: {op.name}.pinv(A z) is zero for random z; the operator looks degenerate")
    return math.sqrt(num / den)


@checked
def ddnm(denoiser: Denoiser, problem: Problem, *, steps: PositiveInt = 100, eta: UnitInterval = 1.0,
         sigma_max: PositiveFloat | None = None, sigma_min: PositiveFloat | None = None, rho: PositiveFloat = 7.0,
         num_samples: int = 1, seeds: Sequence[int] | None = None,
         callback: Callback | None = None, progress: bool = True) -> Result:
    """DDNM (noiseless) / DDNM+ (Gaussian noise, "simplified" Sec. 3.3 rule) on the EDM schedule.

    Each step ``sigma_i = s -> sigma_{i+1} = s'`` (``karras_sigmas``), with ``c`` the fresh-noise std of
    the DDIM step (``eta = 1``: the DDPM posterior ``q(x' | x_t, x0)`` of the paper, ``c = s' sqrt(1 -
    s'^2/s^2)``) and ``a = 1 - sqrt(s'^2 - c^2) / s`` the weight of ``x0`` in its mean:

    1. ``x0 = D(x, s)``;
    2. ``x0c = x0 - lambda * A^+ (A x0 - y)``;
    3. ``x' = x0c + sqrt(s'^2 - c^2) (x - x0c) / s + c_+ z``.

    Noiseless (``sigma_y = 0``): ``lambda = 1``, ``c_+ = c``. DDNM+ (``sigma_y > 0``):
    ``lambda = min(1, c / (a sigma_e))`` and ``c_+^2 = c^2 - (a lambda sigma_e)^2`` (paper Eq. 19 in VE
    form: the DDPM posterior std ``c`` and mean weight ``a`` are invariant under ``x_vp = x_ve / sqrt(1 +
    sigma^2)`` up to the common scale). ``sigma_e = gain * sigma_y`` where ``gain`` is the RMS noise
    amplification of ``A^+`` (:func:`pinv_noise_gain`; 1 for masks and unitary subsampling, where the rule
    is exactly the paper's; an RMS approximation of its per-singular-value rule otherwise). With
    ``eta = 0`` DDNM+ applies no correction (``c = 0``), as in the paper's formula.

    Requires ``problem.operator.has_pinv`` and Gaussian noise. NFE = ``steps``.
    """
    op = problem.operator
    if not isinstance(op, LinearOperator) or not op.has_pinv:
        raise TypeError(f"ddnm needs an operator with a closed-form pinv; {op.name} has none "
                        f"(use dds or pigdm, which only need the adjoint)")
    if not isinstance(problem.noise, Gaussian):
        raise TypeError(f"ddnm needs Gaussian noise (DDNM+); got {type(problem.noise).__name__} "
                        f"(use dds, which uses the weighted least-squares view, or dps)")
    setup = prepare(denoiser, problem, num_samples, seeds)
    prob = setup.problem
    sigma_y = prob.noise.sigma
    gain = pinv_noise_gain(op, prob.y, problem.image_shape) if sigma_y > 0 else 1.0
    sigma_e = gain * sigma_y
    sigmas = sampling_sigmas(denoiser, steps, sigma_min, sigma_max, rho)
    shape = problem.image_shape
    den = setup.denoiser
    lams = []
    with torch.no_grad():
        x = float(sigmas[0]) * setup.noise.randn(*shape)
        for i in steps_bar(steps, progress, "ddnm"):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            c = ddim_noise_std(s, s_next, eta)
            k = math.sqrt(max(s_next**2 - c**2, 0.0)) / s  # weight of x_t in the step mean
            a = 1.0 - k
            if sigma_e > 0:
                lam = min(1.0, c / (a * sigma_e))
                c = math.sqrt(max(c**2 - (a * lam * sigma_e) ** 2, 0.0))
            else:
                lam = 1.0
            lams.append(lam)
            x0 = den(x, s)
            if lam > 0:
                x0 = x0 - lam * op.pinv(tmap(torch.sub, op(x0), prob.y))
            x_next = x0 + k * (x - x0)
            if c > 0:
                x_next = x_next + c * setup.noise.randn(*shape)
            x = x_next
            if callback is not None:
                callback(i, x, x0, s)
    return finish(setup, x, sigmas=sigmas, pinv_noise_gain=gain, lambdas=lams)
