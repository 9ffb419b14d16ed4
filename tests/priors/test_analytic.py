"""Analytic priors: draws that do not depend on how LAPACK picks an eigenbasis."""

from __future__ import annotations

import torch

from sciprior.priors.analytic import GaussianPrior


def _degenerate_cov() -> torch.Tensor:
    """A 6 x 6 covariance with a 3-fold and a 2-fold repeated eigenvalue (a rotated diagonal)."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    evals = torch.tensor([0.5, 0.5, 0.5, 2.0, 2.0, 4.0], dtype=torch.float64)
    return q @ torch.diag(evals) @ q.T


def test_gaussian_prior_draws_do_not_depend_on_the_eigenbasis(monkeypatch):
    """Where eigenvalues repeat any basis of the eigenspace is valid and LAPACK's choice changes with the CPU
    code path and thread count; the same seed must still give the same image (up to rounding)."""
    cov = _degenerate_cov()
    mean = torch.linspace(-1, 1, 6, dtype=torch.float64)
    first = GaussianPrior(mean, cov).sample(4, generator=torch.Generator().manual_seed(0))

    eigh = torch.linalg.eigh

    def rotated_eigh(a):
        # another valid eigendecomposition: rotate the basis inside the 3-fold eigenspace
        evals, evecs = eigh(a)
        r, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(9), dtype=a.dtype))
        evecs = evecs.clone()
        evecs[:, :3] = evecs[:, :3] @ r
        return evals, evecs

    monkeypatch.setattr(torch.linalg, "eigh", rotated_eigh)
    prior = GaussianPrior(mean, cov)
    # the rotated basis is a valid decomposition (so the denoiser is unchanged) ...
    assert torch.allclose(prior.evecs @ torch.diag(prior.evals) @ prior.evecs.T, cov, atol=1e-12)
    # ... and the draws are the same
    again = prior.sample(4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, first, rtol=1e-12, atol=1e-12)


def test_gaussian_prior_draws_have_its_moments():
    cov = _degenerate_cov()
    mean = torch.linspace(-1, 1, 6, dtype=torch.float64)
    x = GaussianPrior(mean, cov, image_shape=(1, 2, 3)).sample(200_000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (200_000, 1, 2, 3) and x.dtype == torch.float64
    x = x.reshape(len(x), 6)
    # standard errors: mean ~ sqrt(4 / 2e5) = 4.5e-3, covariance entries ~ 4 * sqrt(2 / 2e5) = 1.3e-2
    assert (x.mean(0) - mean).abs().max() < 0.025
    assert (torch.cov(x.T) - cov).abs().max() < 0.07
