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

from sciprior.modalities.base import LinearOperator, operator_matrix
from sciprior.modalities.noise import Gaussian, Problem
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


def _gauss_condition(mu: Tensor, cov: Tensor, a: Tensor, y: Tensor, sigma: float):
    """Posterior of ``x ~ N(mu, cov)`` given ``y = A x + N(0, sigma^2)``.

    Returns (means (B, d), cov (d, d), log-evidence logZ (B,)).
    """
    s = a @ cov @ a.T + (sigma**2) * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    s = 0.5 * (s + s.T)
    chol = torch.linalg.cholesky(s)
    k = torch.cholesky_solve(a @ cov, chol).T  # (d, m) = cov A^T S^-1
    r = y - mu @ a.T  # (B, m)
    mean = mu + r @ k.T
    post_cov = cov - k @ a @ cov
    post_cov = 0.5 * (post_cov + post_cov.T)
    # log N(y; A mu, S)
    z = torch.linalg.solve_triangular(chol, r.T, upper=False)  # (m, B)
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    logz = -0.5 * (z**2).sum(0) - 0.5 * logdet - 0.5 * a.shape[0] * math.log(2 * math.pi)
    return mean, post_cov, logz


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
        self.sigma_data = float(evals.mean().sqrt())
        self.sigma_max = float(max(80.0, 20 * evals.max().sqrt()))

    def forward(self, x, sigma):
        s = sigma_batch(sigma, x).double()
        xf = x.reshape(x.shape[0], -1).double() - self.mean
        coef = self.evals / (self.evals + s[:, None] ** 2)  # (B, d)
        out = self.mean + ((xf @ self.evecs) * coef) @ self.evecs.T
        return out.to(x.dtype).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn((n, self.mean.shape[0]), generator=generator, dtype=torch.float64)
        return (self.mean + (z * self.evals.sqrt()) @ self.evecs.T).reshape(n, *self.image_shape)

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
        """(B, n, *image_shape) exact samples."""
        b, k, d = self.means.shape
        chols = torch.linalg.cholesky(self.covs + 1e-12 * torch.eye(d, dtype=self.covs.dtype))
        out = torch.empty(b, n, d, dtype=self.means.dtype)
        for i in range(b):
            comp = torch.multinomial(
                self.log_weights[i].softmax(-1), n, replacement=True, generator=generator
            )
            z = torch.randn((n, d), generator=generator, dtype=self.means.dtype)
            out[i] = self.means[i, comp] + torch.einsum("nij,nj->ni", chols[comp], z)
        return out.reshape(b, n, *self.image_shape)


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
        s2 = sigma_batch(sigma, x).double()[:, None] ** 2  # (B, 1)
        xf = x.reshape(x.shape[0], -1).double()
        diff = xf[:, None, :] - self.means[None]  # (B, K, d)
        d = xf.shape[1]
        if self.isotropic:
            var = self.covs[None] + s2  # (B, K)
            logp = self.log_w - 0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(var)
            post = self.means[None] + (self.covs[None] / var)[..., None] * diff
        else:
            proj = torch.einsum("bkd,kde->bke", diff, self.evecs)  # coordinates in eigenbasis
            var = self.evals[None] + s2[..., None]  # (B, K, d)
            logp = self.log_w - 0.5 * (proj**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
            post = self.means[None] + torch.einsum("bke,kde->bkd", proj * self.evals[None] / var, self.evecs)
        gamma = logp.softmax(-1)
        return (gamma[..., None] * post).sum(1).to(x.dtype).reshape(x.shape)

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
        """Exact posterior mixture for a linear operator with Gaussian noise."""
        a, y, sigma = _real_system(problem)
        covs = self.full_covs
        k = self.means.shape[0]
        means, post_covs, logw = [], [], []
        for j in range(k):
            m, c, logz = _gauss_condition(self.means[j], covs[j], a, y, sigma)
            means.append(m)
            post_covs.append(c)
            logw.append(self.log_w[j] + logz)
        return MixturePosterior(
            torch.stack(logw, 1), torch.stack(means, 1), torch.stack(post_covs), self.image_shape
        )
