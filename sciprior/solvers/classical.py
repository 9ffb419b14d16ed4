"""Classical reconstruction baselines: adjoint (back-projection), CGLS and TV by primal-dual (PDHG).

They follow the solver contract of ``sciprior.solvers`` except that they take no denoiser: each is a
plain function ``solve(problem, *, ...) -> Result`` with ``samples`` of shape (B, 1, *image_shape),
``std = None`` and ``nfe = 0``. They work in the problem's dtype and device (float64 when ``y`` is
float64; the real dtype of a complex ``y``). Every measurement model enters through its
weighted-least-squares view ``(y_eff, w) = problem.noise.wls(y)`` (exact for Gaussian noise, where
``y_eff = y`` and ``w = 1 / sigma^2``; the usual second-order approximation for Poisson and
transmission data). ``callback(i, x, x, 0.0)`` is called once per iteration (there is no noise level,
so the sigma slot is 0 and the "x0" slot is the current iterate).

Shapes: images (B, C, H, W) or (B, C, D, H, W), real; measurements as the operator gives them (real,
complex, or tuples for stacked operators).
"""

from __future__ import annotations

import numbers
import time

import torch
from torch import Tensor

from sciprior.linalg import bcast, operator_norm
from sciprior.physics.generic import Gradient, Weighted, divergence, gradient, tv_from_grad
from sciprior.physics.operator import Measurement, StackedOperator, norm_sq, tmap
from sciprior.physics.problem import Problem
from sciprior.ranges import NonNegativeFloat, PositiveFloat, PositiveInt, checked
from sciprior.solvers._data import require_linear
from sciprior.solvers.common import Callback, Result, problem_device, steps_bar

__all__ = ["adjoint_recon", "cgls", "tv_pdhg"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _scale(c: Tensor, y: Measurement) -> Measurement:
    """Multiply every batch row of ``y`` (tensor or tuple) by the per-item scalar ``c`` (B,)."""
    return tmap(lambda t: bcast(c, t).to(t.real.dtype if t.is_complex() else t.dtype) * t, y)


def _check_iters(iters: int, who: str, name: str = "iters") -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"{who}: {name} must be a positive int, got {iters!r}")


def _initial(x0: Tensor | None, problem: Problem, device: torch.device, dtype: torch.dtype,
             who: str) -> Tensor:
    shape = (problem.batch_size, *problem.image_shape)
    if x0 is None:
        return torch.zeros(shape, device=device, dtype=dtype)
    if not isinstance(x0, Tensor) or tuple(x0.shape) != shape:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"{who}: x0 must have shape {shape} (B, *image_shape), got {got}")
    if x0.is_complex():
        raise TypeError(f"{who}: x0 must be real (the image domain is real), got {x0.dtype}")
    return x0.detach().to(device=device, dtype=dtype).clone()


def _wls(problem: Problem, dtype: torch.dtype) -> tuple[Measurement, Measurement]:
    """The WLS view, cast to the working precision (complex data keep their complex dtype)."""
    y_eff, w = problem.noise.wls(problem.y)

    def cast(t: Tensor) -> Tensor:
        if t.is_complex():
            return t.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
        return t.to(dtype)

    return tmap(cast, y_eff), tmap(lambda t: t.to(dtype), w)


def _result(x: Tensor, start: float, **info) -> Result:
    x = x.detach()
    return Result(samples=x[:, None], mean=x, std=None, nfe=0,
                  timings={"total": time.perf_counter() - start}, info=info)


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------


@checked
def adjoint_recon(problem: Problem) -> Result:
    """Adjoint reconstruction ``x = A^H y_eff`` (back-projection, zero-filled inverse FFT, ...).

    Deliberately plain: no weights and no scalar fit, so its units are those of ``A^H A x`` (it equals
    the image only for operators with ``A^H A = I``, e.g. a unitary Fourier transform). ``y_eff`` is the
    WLS view of the data (``y`` itself for Gaussian and Poisson noise, line integrals ``log(I0/I)`` for
    transmission counts). NFE = 0.
    """
    start = time.perf_counter()
    op = require_linear(problem, "adjoint_recon")
    device, dtype = problem_device(problem)
    y_eff, _ = _wls(problem, dtype)
    with torch.no_grad():
        x = op.adjoint(y_eff).to(dtype)
    return _result(x, start)


@checked
def cgls(problem: Problem, *, iters: PositiveInt = 50, damping: NonNegativeFloat = 0.0, x0: Tensor | None = None,
         tol: NonNegativeFloat = 1e-8, progress: bool = False, callback: Callback | None = None) -> Result:
    """Weighted, damped least squares by CGLS.

    Solves ``min_x 0.5 ||W^1/2 (A x - y_eff)||^2 + 0.5 * damping * ||x||^2``, i.e. the normal equations
    ``(A^H W A + damping I) x = A^H W y_eff`` with ``(y_eff, W) = problem.noise.wls(y)`` (absolute
    weights: ``W = 1 / sigma^2`` for Gaussian noise). ``damping`` is then a prior precision in
    1 / (image units)^2: the result is the MAP estimate under ``x ~ N(0, I / damping)``.

    Uses the CGLS recurrence (Hestenes & Stiefel 1952; Bjorck, "Numerical Methods for Least Squares
    Problems", 1996, Alg. 7.4.1, with the damped variant), not CG on the explicitly formed normal
    equations: it works with the residual ``r = W^1/2 (y_eff - A x)`` so it is better conditioned in
    finite precision. Batched: each item has its own step sizes and stops once its relative
    normal-equation residual ``||A^H W r - damping x|| / ||A^H W y_eff||`` is below ``tol``.

    Args:
        iters: maximum iterations (one ``A`` and one ``A^H`` each). NFE = 0.
        damping: Tikhonov weight >= 0.
        x0: optional start (B, *image_shape); default zeros.
    Info: ``iterations`` (B,) iterations used per item, ``residual`` (B,) final relative residual.
    """
    start = time.perf_counter()
    who = "cgls"
    op = require_linear(problem, who)
    _check_iters(iters, who)
    if not damping >= 0:
        raise ValueError(f"{who}: damping must be >= 0, got {damping}")
    if not tol >= 0:
        raise ValueError(f"{who}: tol must be >= 0, got {tol}")
    device, dtype = problem_device(problem)
    x = _initial(x0, problem, device, dtype, who)
    y_eff, w = _wls(problem, dtype)
    sw = tmap(torch.sqrt, w)
    damping = float(damping)
    tiny = torch.finfo(dtype).tiny

    with torch.no_grad():
        b = tmap(torch.mul, sw, y_eff)
        r = b if x0 is None else tmap(torch.sub, b, tmap(torch.mul, sw, op(x)))
        s = op.adjoint(tmap(torch.mul, sw, r)) - damping * x
        ref = norm_sq(s) if x0 is None else norm_sq(op.adjoint(tmap(torch.mul, sw, b)))
        p = s
        gamma = norm_sq(s)
        stop = (tol * tol) * ref
        used = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        for i in steps_bar(iters, progress, who):
            active = gamma > stop
            if not bool(active.any()):
                break
            q = tmap(torch.mul, sw, op(p))
            delta = norm_sq(q) + damping * norm_sq(p)
            alpha = torch.where(active, gamma / delta.clamp_min(tiny), torch.zeros_like(gamma))
            x = x + bcast(alpha, x) * p
            r = tmap(torch.sub, r, _scale(alpha, q))
            s = op.adjoint(tmap(torch.mul, sw, r)) - damping * x
            gamma_new = norm_sq(s)
            beta = torch.where(active, gamma_new / gamma.clamp_min(tiny), torch.zeros_like(gamma))
            p = s + bcast(beta, p) * p
            gamma = torch.where(active, gamma_new, gamma)
            used += active.long()
            if callback is not None:
                callback(i, x, x, 0.0)
    residual = (gamma / ref.clamp_min(tiny)).sqrt()
    return _result(x, start, iterations=used.cpu(), residual=residual.cpu())


@checked
def tv_pdhg(problem: Problem, *, lam: NonNegativeFloat = 0.05, iters: PositiveInt = 200, nonneg: bool = False,
            isotropic: bool = True, x0: Tensor | None = None, step_ratio: PositiveFloat = 1.0,
            norm_iters: PositiveInt = 50, progress: bool = False, callback: Callback | None = None) -> Result:
    """Total-variation regularised reconstruction by the Chambolle-Pock primal-dual algorithm.

    Solves ``min_x 0.5 ||W_rel^1/2 (A x - y_eff)||^2 + lam * TV(x)`` (``+ indicator(x >= 0)`` when
    ``nonneg``) with ``(y_eff, w) = problem.noise.wls(y)`` and *relative* weights
    ``W_rel = w / mean(w)`` (mean per item over all measurement entries).

    Units of ``lam``: for Gaussian noise ``W_rel = I`` and the objective is the usual
    ``0.5 ||A x - y||^2 + lam TV(x)`` (ROF for ``A = I``), so ``lam`` has the image's units times the
    squared gain of ``A`` (plain image units for unit-gain operators: identity, masks, normalised blurs,
    block means up to their 1/f^n). It does not depend on the noise level by construction: the
    matching MAP problem with absolute weights ``w = 1 / sigma^2`` has TV weight ``lam / sigma^2``.
    For denoising, ``lam`` of the order of the noise standard deviation is a sensible start; the
    default 0.05 suits images scaled to about [0, 1] with a few percent noise.

    Algorithm: Chambolle & Pock 2011 ("A first-order primal-dual algorithm for convex problems with
    applications to imaging", JMIV 40), Algorithm 1 with theta = 1, on ``K = [W_rel^1/2 A; grad]``,
    ``F(u, v) = 0.5 ||u - W_rel^1/2 y_eff||^2 + lam ||v||_{2,1}`` (``||v||_1`` if not isotropic),
    ``G = 0`` or the indicator of ``x >= 0``. Gradient: forward differences with Neumann boundary over
    the 2 or 3 spatial axes (isotropic TV couples the spatial directions, channels are separate).
    Step sizes per item ``tau = step_ratio * s``, ``sigma = s / step_ratio`` with
    ``s = 1 / (1.05 * ||K||)``; ``||K||`` from :func:`operator_norm` (the 5% margin covers the power
    iteration's underestimate). Per iteration: one ``A``, one ``A^H`` (``K x`` is carried along so the
    extrapolated point needs no extra application). NFE = 0. Complex measurements are fine.

    Args:
        lam: TV weight >= 0 (see units above).
        iters: number of iterations.
        nonneg: constrain ``x >= 0``.
        isotropic: isotropic (default) or anisotropic TV.
        x0: optional start (B, *image_shape); default zeros.
        step_ratio: ``tau / sigma`` (> 0); raise it when ``A`` has a much larger norm than ``grad``.
        norm_iters: power iterations for ``||K||``.
    Info: ``objective`` (B, iters) primal objective after each iteration; ``primal_residual`` and
    ``dual_residual`` (B,) the final Chambolle-Pock optimality residuals
    ``||x_k - x_{k+1}|| / tau`` and ``||(u_k - u_{k+1}) / sigma + K (xbar_k - x_{k+1})||``;
    ``dual`` the final dual variables ``(u, v)`` (``v`` of shape (B, nd, C, *spatial), ``|v| <= lam``);
    ``tau``, ``sigma``, ``opnorm`` (B,).
    """
    start = time.perf_counter()
    who = "tv_pdhg"
    op = require_linear(problem, who)
    _check_iters(iters, who)
    _check_iters(norm_iters, who, "norm_iters")
    if isinstance(lam, (bool, Tensor)) or not isinstance(lam, numbers.Real) or not lam >= 0:
        raise ValueError(f"{who}: lam must be a float >= 0, got {lam!r}")
    if not step_ratio > 0:
        raise ValueError(f"{who}: step_ratio must be > 0, got {step_ratio!r}")
    shape = tuple(problem.image_shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{who}: image_shape must be (C, H, W) or (C, D, H, W), got {shape}")
    lam = float(lam)
    device, dtype = problem_device(problem)
    x = _initial(x0, problem, device, dtype, who)
    bsz = x.shape[0]
    tiny = torch.finfo(dtype).tiny

    y_eff, w = _wls(problem, dtype)
    wsum = sum(t.reshape(bsz, -1).sum(1) for t in (w if isinstance(w, tuple) else (w,)))
    wcount = sum(t[0].numel() for t in (w if isinstance(w, tuple) else (w,)))
    wmean = (wsum / wcount).clamp_min(tiny)
    sw = tmap(torch.sqrt, _scale(1.0 / wmean, w))
    data = Weighted(op, sw, shape)
    grad_op = Gradient(shape)
    K = StackedOperator([data, grad_op])

    opnorm = operator_norm(K, (bsz, *shape), iters=norm_iters, dtype=dtype, device=device)
    s = 1.0 / (1.05 * opnorm.clamp_min(tiny))
    tau, sig = step_ratio * s, s / step_ratio

    def prox_g(z: Tensor) -> Tensor:
        return z.clamp_min(0) if nonneg else z

    def project(v: Tensor) -> Tensor:  # prox of sigma F2*: projection onto {|v_i| <= lam}
        if lam == 0:
            return torch.zeros_like(v)
        if isotropic:
            nrm = v.square().sum(dim=1, keepdim=True).sqrt()
            return v * (lam / nrm.clamp_min(lam))
        return v.clamp(-lam, lam)

    def objective(kx_u: Measurement, kx_v: Tensor) -> Tensor:
        return 0.5 * norm_sq(tmap(torch.sub, kx_u, b)) + lam * tv_from_grad(kx_v, isotropic)

    with torch.no_grad():
        x = prox_g(x)
        b = tmap(torch.mul, sw, y_eff)
        kx_u, kx_v = data(x), gradient(x)
        kxb_u, kxb_v = kx_u, kx_v
        u = tmap(torch.zeros_like, kx_u)
        v = torch.zeros_like(kx_v)
        history = torch.empty(bsz, iters, dtype=dtype, device=device)
        pres = dres = torch.zeros(bsz, dtype=dtype, device=device)
        for i in steps_bar(iters, progress, who):
            # dual step: prox of sigma F* at (u, v) + sigma K xbar
            u_old, v_old = u, v
            u = tmap(lambda ut, kt, bt: (ut + bcast(sig, ut) * (kt - bt)) / (1 + bcast(sig, ut)), u, kxb_u, b)
            v = project(v + bcast(sig, v) * kxb_v)
            # primal step: prox of tau G at x - tau K^H (u, v)
            x_new = prox_g(x - bcast(tau, x) * (data.adjoint(u) - divergence(v)))
            kxn_u, kxn_v = data(x_new), gradient(x_new)
            # residuals (Chambolle & Pock 2011 optimality conditions of both steps)
            pres = (norm_sq(x - x_new).sqrt() / tau)
            du = tmap(lambda a, c, kb, kn: (a - c) / bcast(sig, a) + (kb - kn), u_old, u, kxb_u, kxn_u)
            dv = (v_old - v) / bcast(sig, v) + (kxb_v - kxn_v)
            dres = (norm_sq(du) + norm_sq(dv)).sqrt()
            # extrapolation (theta = 1), carried in the range of K
            kxb_u = tmap(lambda a, c: 2 * a - c, kxn_u, kx_u)
            kxb_v = 2 * kxn_v - kx_v
            x, kx_u, kx_v = x_new, kxn_u, kxn_v
            history[:, i] = objective(kx_u, kx_v)
            if callback is not None:
                callback(i, x, x, 0.0)
    return _result(x, start, objective=history.cpu(), primal_residual=pres.cpu(), dual_residual=dres.cpu(),
                   dual=(u, v), tau=tau.cpu(), sigma=sig.cpu(), opnorm=opnorm.cpu())

