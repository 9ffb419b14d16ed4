"""Private helpers shared by the plug-and-play samplers (DiffPIR, RED-diff, DAPS, PnP-DM).

- :class:`DataTerm`: the likelihood of a :class:`~sciprior.modalities.noise.Problem` seen as a data
  term: its gradient, its proximal operator ``argmin_x nll(x) + ||x - z||^2 / (2 r^2)``, exact
  Gaussian sampling from ``exp(-nll(x) - ||x - z||^2 / (2 r^2))`` (perturb-and-MAP) and unadjusted
  Langevin sampling from the same density, and a curvature (Lipschitz) estimate for step sizes.
- :func:`reverse_sde` / :func:`pf_ode`: unconditional VE reverse-diffusion inner loops.
- :func:`schedule`: the EDM noise levels of the solver contract.

Conventions: images ``(N, *image_shape)`` with ``N = B * S`` rows; every computation is per row, so a
row's result does not depend on the other rows; all randomness comes from the per-item
:class:`~sciprior.solvers.common.ItemNoise`. ``r`` (the coupling std) is in the prior's image units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sciprior.modalities.base import LinearOperator, Measurement, tmap
from sciprior.modalities.noise import Gaussian, Problem, StackedNoise
from sciprior.priors.base import Denoiser, karras_sigmas
from sciprior.solvers.common import ItemNoise
from sciprior.solvers.linalg import conjugate_gradient


def schedule(denoiser: Denoiser, steps: int, sigma_min: float | None, sigma_max: float | None,
             rho: float) -> Tensor:
    """``karras_sigmas(steps, sigma_min or denoiser.sigma_min, sigma_max or denoiser.sigma_max, rho)``:
    ``steps`` decreasing levels plus a trailing 0 (float64, CPU)."""
    return karras_sigmas(steps, sigma_min if sigma_min is not None else denoiser.sigma_min,
                         sigma_max if sigma_max is not None else denoiser.sigma_max, rho)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row inner product, shape (N,)."""
    return (a * b).reshape(a.shape[0], -1).sum(1)


def _bc(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


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
    """

    def __init__(self, problem: Problem, who: str, cg_iters: int = 50, cg_tol: float = 1e-7):
        self.problem, self.who = problem, who
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        op = problem.operator
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
        self._aty = self._weighted_rhs(self.y_eff) if self.kind == "gaussian" else None

    # --- basic pieces -------------------------------------------------------------------------
    def grad(self, x: Tensor) -> Tensor:
        """``grad nll(x)``: ``A^H W (A x - y)`` for Gaussian noise, autograd otherwise (exact for any
        operator and noise model)."""
        if self._aty is not None:
            return self.weighted_normal(x) - self._aty
        return self.problem.grad_nll(x)

    def weighted_normal(self, v: Tensor) -> Tensor:
        """``A^H (w * A v)`` (the Hessian of the quadratic data term)."""
        av = self.op(v)
        return self.op.adjoint(tmap(lambda a, w: a * w, av, self.w))

    def _weighted_rhs(self, y: Measurement) -> Tensor:
        return self.op.adjoint(tmap(lambda t, w: t * w, y, self.w))

    # --- curvature ----------------------------------------------------------------------------
    def lipschitz(self, x: Tensor, iters: int = 20) -> Tensor:
        """Per-row estimate of the largest Hessian eigenvalue of ``nll`` (power iteration), shape (N,).

        Quadratic kinds use ``A^H W A``; nonlinear problems use central finite differences of the
        gradient at ``x``. The start vector is fixed (same for every row) so rows stay independent.
        """
        g = torch.Generator().manual_seed(12345)
        v0 = torch.randn(x.shape[1:], generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        v = v0.expand_as(x).clone()
        v = v / _bc(_rowdot(v, v).sqrt(), v)
        if self.kind == "nonlinear":
            scale = 1e-3 * (_rowdot(x, x) / x[0].numel()).sqrt().clamp_min(1e-3)

            def hvp(u: Tensor) -> Tensor:
                h = _bc(scale, u)
                return (self.grad(x + h * u) - self.grad(x - h * u)) / (2 * h)
        else:
            hvp = self.weighted_normal
        lam = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(iters):
            hv = hvp(v)
            lam = _rowdot(v, hv)
            nrm = _rowdot(hv, hv).sqrt()
            if bool((nrm == 0).all()):
                break
            v = torch.where(_bc(nrm, hv) > 0, hv / _bc(nrm.clamp_min(1e-300), hv), v)
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
            step = _bc(1.0 / (1.0 / r**2 + lip), z)
            x = z.clone()
            for _ in range(grad_steps):
                x = x - step * (self.grad(x) + (x - z) / r**2)
            return x
        yy = self.y_eff if y is None else y
        if self.closed_prox:
            return self.op.prox_l2(z, yy, r**2 / self.sigma**2)
        rhs = self._weighted_rhs(yy) + z / r**2
        return conjugate_gradient(lambda v: self.weighted_normal(v) + v / r**2, rhs, x0=z,
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
        eta = _bc(step_frac / (1.0 / r**2 + lipschitz), start)
        x = start
        for _ in range(steps):
            g = self.grad(x) + (x - center) / r**2
            x = x - eta * g + (2 * eta).sqrt() * noise.randn(*x.shape[1:]).to(x)
        return x


# --------------------------------------------------------------------------------------------
# Unconditional inner loops (VE / EDM convention)
# --------------------------------------------------------------------------------------------


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
