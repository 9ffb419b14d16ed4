"""Analytic priors with exact denoisers and exact posteriors for linear-Gaussian problems.

These are the ground truth that solvers are tested against: for ``x ~ prior`` and
``y = A x + n``, ``n ~ N(0, sigma_y^2 I)`` (complex: each part), the posterior is Gaussian
(:class:`GaussianPrior`) or a Gaussian mixture (:class:`GaussianMixturePrior`) in closed form.
Images are flattened to ``d = prod(image_shape)``; computations run in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sciprior.physics.noise import Gaussian
from sciprior.physics.operator import LinearOperator, operator_matrix
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser, sigma_batch


def _real_system(problem: Problem) -> tuple[Tensor, Tensor, float]:
    """Dense real ``(A, y, sigma)`` of a linear Gaussian problem (complex rows split into Re/Im).

    Returns A (m, d) float64, y (B, m) float64, sigma.
    """
    if not isinstance(problem.operator, LinearOperator):
        raise TypeError("exact posteriors need a LinearOperator")
    if not isinstance(problem.noise, Gaussian):
        raise TypeError("exact posteriors need Gaussian noise")
    a = operator_matrix(problem.operator, problem.image_shape, dtype=torch.float64)
    y = problem.y
    y = (
        torch.cat([t.reshape(t.shape[0], -1) for t in y], 1)
        if isinstance(y, tuple)
        else y.reshape(y.shape[0], -1)
    )
    if a.is_complex() or y.is_complex():
        a = torch.cat([a.real, a.imag], 0)
        y = torch.cat([y.real, y.imag], 1)
    return a.double(), y.double(), problem.noise.sigma


def _gauss_condition_many(mus: Tensor, cov: Tensor, a: Tensor, y: Tensor, sigma: float):
    """Posteriors of ``x ~ N(mu_j, cov)`` for J prior means ``mus`` (J, d) sharing one covariance ``cov``,
    given ``y = A x + N(0, sigma^2)`` (A (m, d), y (B, m)).

    Returns (means (B, J, d), cov (d, d), log-evidence ``log N(y; A mu_j, A cov A^T + sigma^2 I)`` (B, J)).
    """
    s = a @ cov @ a.T + (sigma**2) * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    s = 0.5 * (s + s.T)
    chol = torch.linalg.cholesky(s)
    k = torch.cholesky_solve(a @ cov, chol).T  # (d, m) = cov A^T S^-1
    r = y[:, None, :] - (mus @ a.T)[None]  # (B, J, m)
    mean = mus[None] + r @ k.T
    post_cov = cov - k @ a @ cov
    post_cov = 0.5 * (post_cov + post_cov.T)
    z = torch.linalg.solve_triangular(chol, r.reshape(-1, r.shape[-1]).T, upper=False)  # (m, B*J)
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    logz = -0.5 * (z**2).sum(0) - 0.5 * logdet - 0.5 * a.shape[0] * math.log(2 * math.pi)
    return mean, post_cov, logz.reshape(r.shape[:2])


def _gauss_condition(mu: Tensor, cov: Tensor, a: Tensor, y: Tensor, sigma: float):
    """Posterior of ``x ~ N(mu, cov)`` given ``y = A x + N(0, sigma^2)``.

    Returns (means (B, d), cov (d, d), log-evidence logZ (B,)).
    """
    mean, post_cov, logz = _gauss_condition_many(mu[None], cov, a, y, sigma)
    return mean[:, 0], post_cov, logz[:, 0]


@dataclass
class GaussianPosterior:
    """``N(mean[b], cov)`` per item: mean (B, d), cov (d, d)."""

    mean: Tensor
    cov: Tensor
    image_shape: tuple[int, ...]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n, *image_shape) exact samples."""
        chol = torch.linalg.cholesky(self.cov + 1e-12 * torch.eye(self.cov.shape[0], dtype=self.cov.dtype))
        z = torch.randn(
            (self.mean.shape[0], n, self.mean.shape[1]), generator=generator, dtype=self.cov.dtype
        )
        return (self.mean[:, None] + z @ chol.T).reshape(self.mean.shape[0], n, *self.image_shape)


class GaussianPrior(Denoiser):
    """``x ~ N(mean, cov)`` with exact ``D(x, sigma) = mean + cov (cov + sigma^2 I)^-1 (x - mean)``.

    Args:
        mean: (d,) or image-shaped; cov: (d, d) symmetric positive definite.
        image_shape: shape of one image (defaults to ``(d,)``).
    """

    def __init__(self, mean: Tensor, cov: Tensor, image_shape: Sequence[int] | None = None):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"GaussianPrior: cov of shape {tuple(cov.shape)} for a mean of {d} entries")
        self.image_shape = tuple(image_shape) if image_shape is not None else (d,)
        if math.prod(self.image_shape) != d:
            raise ValueError(f"GaussianPrior: image_shape {self.image_shape} does not hold {d} entries")
        cov = 0.5 * (cov + cov.T)
        evals, evecs = torch.linalg.eigh(cov)
        if evals.min() <= 0:
            raise ValueError("GaussianPrior: cov must be positive definite")
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.register_buffer("evals", evals)
        self.register_buffer("evecs", evecs)
        # draws use the Cholesky factor: unique, so a seed gives the same image on every CPU and thread count
        # up to rounding (an eigenbasis is not unique where eigenvalues repeat, and LAPACK's choice varies)
        self.register_buffer("chol", torch.linalg.cholesky(cov))
        self.sigma_data = float(evals.mean().sqrt())
        self.sigma_max = float(max(80.0, 20 * evals.max().sqrt()))

    def forward(self, x, sigma):
        s = sigma_batch(sigma, x).double()
        xf = x.reshape(x.shape[0], -1).double() - self.mean
        coef = self.evals / (self.evals + s[:, None] ** 2)  # (B, d)
        out = self.mean + ((xf @ self.evecs) * coef) @ self.evecs.T
        return out.to(x.dtype).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``mean + L z`` (``L`` the Cholesky factor of ``cov``, ``z`` standard normal), float64,
        shape ``(n, *image_shape)``."""
        z = torch.randn((n, self.mean.shape[0]), generator=generator, dtype=torch.float64)
        return (self.mean + z @ self.chol.T).reshape(n, *self.image_shape)

    def posterior(self, problem: Problem) -> GaussianPosterior:
        """Exact posterior for a linear operator with Gaussian noise."""
        a, y, sigma = _real_system(problem)
        mean, cov, _ = _gauss_condition(self.mean, self.cov, a, y, sigma)
        return GaussianPosterior(mean, cov, self.image_shape)


@dataclass
class MixturePosterior:
    """Gaussian mixture per item: log-weights (B, K), means (B, K, d), covs (K, d, d)."""

    log_weights: Tensor
    means: Tensor
    covs: Tensor
    image_shape: tuple[int, ...]

    @property
    def mean(self) -> Tensor:
        w = self.log_weights.softmax(-1)
        return (w[..., None] * self.means).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n, *image_shape) exact samples.

        Per item: ``n`` component labels from the weights, then ``n`` standard normal vectors (d,)
        mapped by the drawn component's Cholesky factor. Draws are grouped by component (one matrix
        product per component present, no (n, d, d) gather), and components sharing one covariance
        (the isotropic equal-variance case) share one Cholesky factorisation.
        """
        b, k, d = self.means.shape
        shared = _shared_matrix(self.covs)
        eye = 1e-12 * torch.eye(d, dtype=self.covs.dtype, device=self.covs.device)
        chols = (torch.linalg.cholesky(shared + eye)[None].expand(k, d, d) if shared is not None
                 else torch.linalg.cholesky(self.covs + eye))
        out = torch.empty(b, n, d, dtype=self.means.dtype, device=self.means.device)
        for i in range(b):
            comp = torch.multinomial(
                self.log_weights[i].softmax(-1).cpu(), n, replacement=True, generator=generator
            ).to(self.means.device)
            z = torch.randn((n, d), generator=generator, dtype=self.means.dtype).to(self.means.device)
            if shared is not None:
                out[i] = self.means[i, comp] + z @ chols[0].T
                continue
            for j in torch.unique(comp).tolist():
                rows = comp == j
                out[i, rows] = self.means[i, j] + z[rows] @ chols[j].T
        return out.reshape(b, n, *self.image_shape)


def _shared_matrix(mats: Tensor) -> Tensor | None:
    """``mats[0]`` if every matrix of the stack (K, d, d) equals it (an expanded view, or equal entries),
    else None."""
    if mats.shape[0] == 1 or mats.stride(0) == 0:
        return mats[0]
    return mats[0] if bool((mats == mats[:1]).all()) else None


class GaussianMixturePrior(Denoiser):
    """``x ~ sum_k w_k N(mu_k, Sigma_k)`` with exact denoiser and exact linear-Gaussian posterior.

    Args:
        weights: (K,) nonnegative (normalised here).
        means: (K, d).
        covs: (K,) isotropic variances (Sigma_k = v_k I, fast path) or (K, d, d) full covariances.
        image_shape: shape of one image (defaults to ``(d,)``).
    """

    def __init__(
        self, weights: Tensor, means: Tensor, covs: Tensor, image_shape: Sequence[int] | None = None
    ):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = means.shape
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"GaussianMixturePrior: need {k} nonnegative weights, got shape {tuple(w.shape)}"
            )
        if covs.shape not in {(k,), (k, d, d)}:
            raise ValueError(
                f"GaussianMixturePrior: covs must be ({k},) or ({k}, {d}, {d}), got {tuple(covs.shape)}"
            )
        self.isotropic = covs.dim() == 1
        self.image_shape = tuple(image_shape) if image_shape is not None else (d,)
        self.register_buffer("log_w", torch.log(w / w.sum()))
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("_mean_sq", (means**2).sum(1), persistent=False)  # (K,) for the fast forward
        # means of low rank r (e.g. tiled patterns): mu_k = coef_k . basis, so products with the means cost
        # (B, d, r) instead of (B, d, K); used when it at least halves them
        u, sv, vh = torch.linalg.svd(means, full_matrices=False)
        rank = int((sv > 1e-12 * sv.max()).sum()) if sv.numel() and float(sv.max()) > 0 else 0
        low = self.isotropic and 2 * rank <= k
        self.register_buffer("_basis", vh[:rank].T.contiguous() if low else None, persistent=False)  # (d, r)
        self.register_buffer("_coef", (u[:, :rank] * sv[:rank]).contiguous() if low else None,
                             persistent=False)  # (K, r)
        if not self.isotropic:
            evals, evecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
            self.register_buffer("evals", evals)
            self.register_buffer("evecs", evecs)
        total_var = float(
            (torch.exp(self.log_w)[:, None] * (means - (torch.exp(self.log_w) @ means)) ** 2).sum(0).mean()
        )
        self.sigma_data = math.sqrt(total_var + float(covs.mean() if self.isotropic else evals.mean()))
        self.sigma_max = max(80.0, 20 * self.sigma_data)

    @property
    def full_covs(self) -> Tensor:
        d = self.means.shape[1]
        if self.isotropic:
            return self.covs[:, None, None] * torch.eye(d, dtype=self.covs.dtype)
        return self.covs

    def forward(self, x, sigma):
        xf = x.reshape(x.shape[0], -1).double()
        if self.isotropic:
            return self._forward_isotropic(xf, sigma).to(x.dtype).reshape(x.shape)
        s2 = sigma_batch(sigma, x).double()[:, None] ** 2  # (B, 1)
        diff = xf[:, None, :] - self.means[None]  # (B, K, d)
        proj = torch.einsum("bkd,kde->bke", diff, self.evecs)  # coordinates in eigenbasis
        var = self.evals[None] + s2[..., None]  # (B, K, d)
        logp = self.log_w - 0.5 * (proj**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
        post = self.means[None] + torch.einsum("bke,kde->bkd", proj * self.evals[None] / var, self.evecs)
        gamma = logp.softmax(-1)
        return (gamma[..., None] * post).sum(1).to(x.dtype).reshape(x.shape)

    def _forward_isotropic(self, xf: Tensor, sigma: float | Tensor) -> Tensor:
        """``D`` for isotropic components on flattened float64 rows ``xf`` (B, d).

        ``||x - mu_k||^2 = ||x||^2 - 2 x.mu_k + ||mu_k||^2`` with matrix products (no (B, K, d) tensor),
        through the low-rank factors of the means when they have them; one noise level for all rows
        (a float or 0-d tensor) keeps the per-component coefficients at shape (1, K).
        """
        s = torch.as_tensor(sigma, dtype=torch.float64, device=xf.device)
        s2 = s.reshape(1, 1) ** 2 if s.dim() == 0 else sigma_batch(s, xf)[:, None] ** 2  # (1 or B, 1)
        var = self.covs[None] + s2  # (1 or B, K)
        low = self._basis is not None
        xm = (xf @ self._basis) @ self._coef.T if low else xf @ self.means.T  # (B, K): x . mu_k
        sq = torch.linalg.vecdot(xf, xf)[:, None]  # (B, 1); vecdot: finite gradient at 0
        dist = (sq + self._mean_sq) - 2.0 * xm
        gamma = ((self.log_w - 0.5 * xf.shape[1] * torch.log(var)) - 0.5 * dist / var).softmax(-1)
        # D = sum_k gamma_k (mu_k + v_k / (v_k + s^2) (x - mu_k)) = keep * x + sum_k gamma_k s^2 / (v_k + s^2) mu_k
        keep = gamma @ (self.covs / var).T if var.shape[0] == 1 else (gamma * self.covs / var).sum(1, keepdim=True)
        shrink = gamma * (s2 / var)  # (B, K)
        return (torch.addmm(keep * xf, shrink @ self._coef, self._basis.T) if low
                else torch.addmm(keep * xf, shrink, self.means))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        if self.isotropic:
            x = self.means[comp] + self.covs[comp, None].sqrt() * z
        else:
            x = self.means[comp] + torch.einsum(
                "nij,nj->ni", self.evecs[comp] * self.evals[comp, None].sqrt(), z
            )
        return x.reshape(n, *self.image_shape)

    def posterior(self, problem: Problem) -> MixturePosterior:
        """Exact posterior mixture for a linear operator with Gaussian noise.

        Isotropic components are conditioned once per distinct variance (all means at once); when every
        variance is equal the returned ``covs`` is one (d, d) matrix expanded to (K, d, d) (a view).
        """
        a, y, sigma = _real_system(problem)
        k = self.means.shape[0]
        if self.isotropic:
            d = self.means.shape[1]
            eye = torch.eye(d, dtype=self.covs.dtype, device=self.covs.device)
            variances, inverse = torch.unique(self.covs, return_inverse=True)
            means = torch.empty(y.shape[0], k, d, dtype=y.dtype, device=y.device)
            logw = torch.empty(y.shape[0], k, dtype=y.dtype, device=y.device)
            post_covs = []
            for u, v in enumerate(variances.tolist()):
                idx = (inverse == u).nonzero().reshape(-1)
                m, c, logz = _gauss_condition_many(self.means[idx], v * eye, a, y, sigma)
                means[:, idx] = m
                logw[:, idx] = self.log_w[idx] + logz
                post_covs.append(c)
            covs = (post_covs[0][None].expand(k, d, d) if len(post_covs) == 1
                    else torch.stack(post_covs)[inverse])
            return MixturePosterior(logw, means, covs, self.image_shape)
        covs = self.full_covs
        means, post_covs, logw = [], [], []
        for j in range(k):
            m, c, logz = _gauss_condition(self.means[j], covs[j], a, y, sigma)
            means.append(m)
            post_covs.append(c)
            logw.append(self.log_w[j] + logz)
        return MixturePosterior(
            torch.stack(logw, 1), torch.stack(means, 1), torch.stack(post_covs), self.image_shape
        )
