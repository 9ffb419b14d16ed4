"""The one data-term abstraction of the solvers: the likelihood of a :class:`~sciprior.physics.problem.Problem`.

:class:`DataTerm` holds the weighted-least-squares (WLS) view ``0.5 * sum w |A x - y_eff|^2`` of the noise model
(exact for Gaussian noise, ``w = 1 / sigma^2``; the usual second-order approximation for Poisson and
transmission data) and what the samplers build on it: ``A^H W`` products and the normal operator (DDS, DDS-3D,
PiGDM), the gradient of the negative log-likelihood, its proximal operator
``argmin_x nll(x) + ||x - z||^2 / (2 r^2)``, exact Gaussian sampling from ``exp(-nll(x) - ||x - z||^2 / (2 r^2))``
(perturb-and-MAP), unadjusted Langevin sampling from the same density and a curvature (Lipschitz) estimate for
step sizes (DiffPIR, RED-diff, DAPS, PnP-DM).

Conventions: images ``(N, *image_shape)`` with ``N = B * S`` rows; every computation is per row, so a
row's result does not depend on the other rows; all randomness comes from the per-item
:class:`~sciprior.solvers.common.ItemNoise`. ``r`` (the coupling std) is in the prior's image units.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from sciprior.linalg import bcast, conjugate_gradient, rowdot
from sciprior.physics.noise import Gaussian, StackedNoise
from sciprior.physics.operator import LinearOperator, Measurement, tmap
from sciprior.physics.problem import Problem
from sciprior.solvers.common import ItemNoise


def require_linear(problem: Problem, who: str) -> LinearOperator:
    """The problem's operator, or a TypeError naming the solver and the operator."""
    op = problem.operator
    if not isinstance(op, LinearOperator):
        raise TypeError(f"{who} needs a LinearOperator (adjoint, normal); {op.name} is nonlinear. "
                        f"Use dps for nonlinear forward models.")
    return op


def item_mean(w: Measurement) -> Tensor:
    """Per-row mean over all entries (tuples are concatenated), shape (B,)."""
    parts = w if isinstance(w, tuple) else (w,)
    flat = torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)
    return flat.mean(dim=1)


def _is_gaussian(noise) -> bool:
    """True for :class:`Gaussian` noise (or a stack of them) whose likelihood is the Gaussian one
    (a subclass overriding ``nll``/``wls`` is treated as a general noise model)."""
    if isinstance(noise, StackedNoise):
        return all(_is_gaussian(m) for m in noise.models)
    return (isinstance(noise, Gaussian) and type(noise).nll is Gaussian.nll
            and type(noise).wls is Gaussian.wls)


def _randn_measurement(noise: ItemNoise, like: Measurement) -> Measurement:
    """Per-item standard normal noise shaped like a measurement (complex: each part N(0, 1))."""

    def draw(t: Tensor) -> Tensor:
        shape = t.shape[1:]
        if t.is_complex():
            re = noise.randn(*shape)
            im = noise.randn(*shape)
            return torch.complex(re, im).to(device=t.device, dtype=t.dtype)
        return noise.randn(*shape).to(device=t.device, dtype=t.dtype)

    return tmap(draw, like)


class DataTerm:
    """The likelihood of ``problem`` (rows already repeated to ``B * S``) as a data term.

    ``kind`` is
      - ``"gaussian"``: linear operator, Gaussian noise (or a stack of Gaussian models): ``nll`` is an
        exact quadratic, so the proximal step and the conditional sampler are exact;
      - ``"wls"``: linear operator, other noise: the proximal step uses the weighted-least-squares view
        ``nll ~= 0.5 * sum w |A x - y_eff|^2`` (the usual second-order approximation);
      - ``"nonlinear"``: anything else: gradients through autograd only.

    Args:
        problem: the (repeated) problem.
        who: solver name used in error messages.
        cg_iters, cg_tol: conjugate-gradient budget for proximal steps without a closed form.
        linear: require a linear operator with a WLS view (TypeError naming ``who`` otherwise).
    """

    def __init__(self, problem: Problem, who: str, cg_iters: int = 50, cg_tol: float = 1e-7, linear: bool = False):
        self.problem, self.who = problem, who
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        op = require_linear(problem, who) if linear else problem.operator
        self.y_eff: Measurement | None = None
        self.w: Measurement | None = None
        self.kind = "nonlinear"
        if isinstance(op, LinearOperator):
            try:
                self.y_eff, self.w = problem.noise.wls(problem.y)
                self.kind = "gaussian" if _is_gaussian(problem.noise) else "wls"
            except NotImplementedError:
                self.kind = "nonlinear"
        self.op = op
        # closed-form prox: one Gaussian model and an operator with prox_l2 (then w = 1/sigma^2)
        self.sigma = problem.noise.effective_sigma if isinstance(problem.noise, Gaussian) else None
        self.closed_prox = (self.kind == "gaussian" and self.sigma is not None
                            and isinstance(op, LinearOperator) and op.has_prox_l2)
        self._aty: Tensor | None = None  # A^H W y of a Gaussian term, computed on first use (grad)

    @classmethod
    def linear(cls, problem: Problem, who: str) -> DataTerm:
        """The data term of a problem with a linear operator (TypeError naming ``who`` otherwise)."""
        return cls(problem, who, linear=True)

    def normalized(self) -> DataTerm:
        """The same term with the weights divided by their per-row mean (relative weights; 1 everywhere for
        Gaussian noise)."""
        m = item_mean(self.w)
        out = copy.copy(self)
        out.w = tmap(lambda t: t / bcast(m, t), self.w)
        out.closed_prox = False  # the closed forms assume w = 1 / sigma^2
        out._aty = None
        return out

    # --- basic pieces -------------------------------------------------------------------------
    def weighted_adjoint(self, r: Measurement) -> Tensor:
        """``A^H (w * r)``."""
        return self.op.adjoint(tmap(lambda t, w: t * w, r, self.w))

    def normal(self, v: Tensor) -> Tensor:
        """``A^H W A v`` (the Hessian of the quadratic data term)."""
        return self.weighted_adjoint(self.op(v))

    def residual(self, x: Tensor) -> Measurement:
        """``y_eff - A x``."""
        return tmap(torch.sub, self.y_eff, self.op(x))

    def rhs(self) -> Tensor:
        """``A^H W y_eff``."""
        return self.weighted_adjoint(self.y_eff)

    def grad(self, x: Tensor) -> Tensor:
        """``grad nll(x)``: ``A^H W (A x - y)`` for Gaussian noise, autograd otherwise (exact for any
        operator and noise model)."""
        if self.kind == "gaussian":
            if self._aty is None:
                self._aty = self.rhs()
            return self.normal(x) - self._aty
        return self.problem.grad_nll(x)

    # --- curvature ----------------------------------------------------------------------------
    def lipschitz(self, x: Tensor, iters: int = 20) -> Tensor:
        """Per-row estimate of the largest Hessian eigenvalue of ``nll`` (power iteration), shape (N,).

        Quadratic kinds use ``A^H W A``; nonlinear problems use central finite differences of the
        gradient at ``x``. The start vector is fixed (same for every row) so rows stay independent.
        """
        g = torch.Generator().manual_seed(12345)
        v0 = torch.randn(x.shape[1:], generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        v = v0.expand_as(x).clone()
        v = v / bcast(rowdot(v, v).sqrt(), v)
        if self.kind == "nonlinear":
            scale = 1e-3 * (rowdot(x, x) / x[0].numel()).sqrt().clamp_min(1e-3)

            def hvp(u: Tensor) -> Tensor:
                h = bcast(scale, u)
                return (self.grad(x + h * u) - self.grad(x - h * u)) / (2 * h)
        else:
            hvp = self.normal
        lam = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(iters):
            hv = hvp(v)
            lam = rowdot(v, hv)
            nrm = rowdot(hv, hv).sqrt()
            if bool((nrm == 0).all()):
                break
            v = torch.where(bcast(nrm, hv) > 0, hv / bcast(nrm.clamp_min(1e-300), hv), v)
        return lam.clamp_min(0.0)

    # --- proximal step ------------------------------------------------------------------------
    def prox(self, z: Tensor, r: float, grad_steps: int = 20, lipschitz: Tensor | None = None,
             y: Measurement | None = None) -> Tensor:
        """``argmin_x nll(x) + ||x - z||^2 / (2 r^2)`` per row (``r`` in image units).

        Gaussian/linear: the operator's closed-form ``prox_l2`` when it has one, else conjugate
        gradients on ``(A^H W A + I / r^2) x = A^H W y + z / r^2``. Non-Gaussian/linear: the same
        with the WLS weights. Nonlinear: ``grad_steps`` gradient steps of size ``1 / (1/r^2 + L)``.
        ``y`` replaces the (effective) measurement (used for perturb-and-MAP sampling).
        """
        if r <= 0:
            raise ValueError(f"{self.who}: the proximal coupling r must be > 0, got {r}")
        if self.kind == "nonlinear":
            if y is not None:
                raise ValueError(f"{self.who}: perturbed measurements need a linear operator")
            lip = self.lipschitz(z) if lipschitz is None else lipschitz
            step = bcast(1.0 / (1.0 / r**2 + lip), z)
            x = z.clone()
            for _ in range(grad_steps):
                x = x - step * (self.grad(x) + (x - z) / r**2)
            return x
        yy = self.y_eff if y is None else y
        if self.closed_prox:
            return self.op.prox_l2(z, yy, r**2 / self.sigma**2)
        rhs = self.weighted_adjoint(yy) + z / r**2
        return conjugate_gradient(lambda v: self.normal(v) + v / r**2, rhs, x0=z,
                                  iters=self.cg_iters, tol=self.cg_tol)

    # --- sampling -----------------------------------------------------------------------------
    def sample_exact(self, center: Tensor, r: float, noise: ItemNoise) -> Tensor:
        """Exact draw from ``p(x) ∝ exp(-nll(x) - ||x - center||^2 / (2 r^2))`` (Gaussian/linear only).

        Perturb-and-MAP (Papandreou & Yuille 2010): with ``y' = y + W^{-1/2} n1`` and
        ``c' = center + r n2``, ``argmin_x 0.5 ||W^{1/2}(A x - y')||^2 + ||x - c'||^2 / (2 r^2)`` is an
        exact sample (up to the CG tolerance when no closed-form prox exists).
        """
        if self.kind != "gaussian":
            raise TypeError(f"{self.who}: exact likelihood sampling needs a linear operator with Gaussian "
                            f"noise; got {self.op.name} with {type(self.problem.noise).__name__}")
        n_y = _randn_measurement(noise, self.y_eff)
        y_pert = tmap(lambda t, w, n: t + n / w.sqrt(), self.y_eff, self.w, n_y)
        c_pert = center + r * noise.randn(*center.shape[1:]).to(center)
        return self.prox(c_pert, r, y=y_pert)

    def sample_langevin(self, start: Tensor, center: Tensor, r: float, steps: int, step_frac: float,
                        noise: ItemNoise, lipschitz: Tensor) -> Tensor:
        """Unadjusted Langevin on ``U(x) = nll(x) + ||x - center||^2 / (2 r^2)``, from ``start``.

        Step ``eta = step_frac / (1/r^2 + L)`` per row (``L``: curvature estimate of ``nll``), so
        ``step_frac`` is the step relative to the stiffest direction (stable for ``step_frac < 2``;
        the stationary variance is inflated by about ``1 / (1 - step_frac / 2)`` along it).
        """
        eta = bcast(step_frac / (1.0 / r**2 + lipschitz), start)
        x = start
        for _ in range(steps):
            g = self.grad(x) + (x - center) / r**2
            x = x - eta * g + (2 * eta).sqrt() * noise.randn(*x.shape[1:]).to(x)
        return x


__all__ = ["DataTerm", "item_mean", "require_linear"]
