"""Small linear-Gaussian problems whose posterior is known exactly, and how far a sampler's mean is from it.

A uniquely named module (not ``conftest``): test modules import it by name from any directory."""

from __future__ import annotations

import torch

from sciprior.physics.generic import MatrixOperator
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from sciprior.priors.analytic import GaussianMixturePrior, GaussianPrior


def make_gaussian_problem(d: int = 6, m: int = 3, sigma_y: float = 0.2, batch: int = 2, seed: int = 0):
    """A random Gaussian prior N(mu, Sigma) on (1, d) images, A (m, d), y = A x + N(0, sigma_y^2).

    Returns (prior, problem, exact posterior).
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = q @ q.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean, cov, image_shape=(1, d))
    a = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    op = MatrixOperator(a, (1, d))
    x = prior.sample(batch, generator=g)
    problem = Problem.simulate(op, x, Gaussian(sigma_y), generator=g)
    return prior, problem, prior.posterior(problem)


def make_gmm_problem(d: int = 4, m: int = 1, sigma_y: float = 0.3, batch: int = 2, seed: int = 0):
    """A 6-component Gaussian mixture prior and a random linear Gaussian problem (multimodal posterior)."""
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(6, d, generator=g, dtype=torch.float64)
    weights = torch.rand(6, generator=g, dtype=torch.float64) + 0.2
    variances = torch.full((6,), 0.5, dtype=torch.float64)
    prior = GaussianMixturePrior(weights, means, variances, image_shape=(1, d))
    a = torch.randn(m, d, generator=g, dtype=torch.float64)
    op = MatrixOperator(a, (1, d))
    x = prior.sample(batch, generator=g)
    problem = Problem.simulate(op, x, Gaussian(sigma_y), generator=g)
    return prior, problem, prior.posterior(problem)


def mean_errors(result, prior: GaussianPrior, post) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: (relative error, Mahalanobis error) of ``result.mean`` against the exact posterior mean.

    relative: ``||mean - mu_post|| / ||mu_post - mu_prior||`` (ignoring the data scores 1.0; the denominator
    shrinks when the truth lands near the prior mean in the measured directions, so it varies with the draw);
    Mahalanobis: ``||L^-1 (mean - mu_post)||`` with ``L L^T = Sigma_post``, in posterior standard deviations
    (about ``sqrt(d / S)`` for S exact samples).
    """
    b = post.mean.shape[0]
    diff = result.mean.reshape(b, -1).double() - post.mean
    rel = diff.norm(dim=1) / (post.mean - prior.mean).norm(dim=1)
    chol = torch.linalg.cholesky(post.cov)
    maha = torch.linalg.solve_triangular(chol, diff.T, upper=False).norm(dim=0)
    return rel, maha
