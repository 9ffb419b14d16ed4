"""Slice-wise, patch-wise and product priors against exact references."""

from __future__ import annotations

import math

import pytest
import torch

from sciprior.priors.analytic import GaussianMixturePrior, GaussianPrior
from sciprior.priors.base import CountingDenoiser, Denoiser, sigma_batch
from sciprior.priors.wrappers import PatchPrior, ProductPrior, SliceWisePrior


def random_gaussian(shape, seed=0, scale=1.0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = scale**2 * (q @ q.T / d + 0.2 * torch.eye(d, dtype=torch.float64))
    return GaussianPrior(torch.randn(d, generator=g, dtype=torch.float64), cov, image_shape=shape)


class Pointwise(Denoiser):
    """Every pixel independent with the same 1-D Gaussian-mixture law: D acts pixel by pixel (nonlinear)."""

    def __init__(self):
        super().__init__()
        self.gmm = GaussianMixturePrior(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [1.5]]),
                                        torch.tensor([0.2, 0.5]))

    def forward(self, x, sigma):
        s = sigma_batch(sigma, x)
        n = x[0].numel()
        return self.gmm(x.reshape(-1, 1), s.repeat_interleave(n)).reshape(x.shape)


# -- slice-wise --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, plane", [(2, (4, 5)), (3, (3, 5)), (4, (3, 4)), (-1, (3, 4))])
def test_slicewise_equals_manual_per_slice(axis, plane):
    b, c, shape = 2, 2, (3, 4, 5)
    inner = CountingDenoiser(random_gaussian((c, *plane), seed=1))
    prior = SliceWisePrior(inner, axis=axis, chunk_size=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, *shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    out = prior(x, sigma)
    assert out.shape == x.shape
    ax = axis % 5
    n = x.shape[ax]
    expect = torch.empty_like(x)
    for i in range(b):
        for k in range(n):
            idx = [i, slice(None), slice(None), slice(None), slice(None)]
            idx[ax] = k
            sl = x[tuple(idx)].unsqueeze(0)  # (1, C, *plane)
            expect[tuple(idx)] = inner.inner(sl, sigma[i])[0]
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
    assert inner.nfe == math.ceil(b * n / 2)  # memory bounded: at most chunk_size slices per call


def test_slicewise_chunks_never_exceed_chunk_size_and_checks_input():
    sizes = []

    class Spy(Denoiser):
        def forward(self, x, sigma):
            sizes.append(x.shape[0])
            return x * 0.5

    prior = SliceWisePrior(Spy(), axis=2, chunk_size=3)
    x = torch.randn(2, 1, 5, 4, 4)
    torch.testing.assert_close(prior(x, 1.0), 0.5 * x)
    assert sizes == [3, 3, 3, 1] and sum(sizes) == 10
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        prior(torch.randn(2, 1, 4, 4), 1.0)
    with pytest.raises(ValueError, match="axis"):
        SliceWisePrior(Spy(), axis=1)


# -- product -----------------------------------------------------------------------------------------

def test_product_of_gaussians_is_block_diagonal_gaussian():
    p1 = random_gaussian((1, 2, 3), seed=1, scale=0.5)
    p2 = random_gaussian((2, 2, 3), seed=2, scale=2.0)
    prod = ProductPrior([p1, p2], channels=[1, 2])
    joint = GaussianPrior(torch.cat([p1.mean, p2.mean]), torch.block_diag(p1.cov, p2.cov),
                          image_shape=(3, 2, 3))
    assert prod.image_shape == (3, 2, 3)
    # channel-weighted rms of the parts = sqrt(mean eigenvalue) of the joint covariance
    assert prod.sigma_data == pytest.approx(joint.sigma_data, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 3.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(prod(x, sigma), joint(x, sigma), rtol=0, atol=1e-12)
    torch.testing.assert_close(prod.score(x, 0.7), joint.score(x, 0.7), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="needs 3 channels"):
        prod(torch.randn(1, 2, 2, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="one channel count per denoiser"):
        ProductPrior([p1, p2], channels=[3])


# -- patch-wise --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi", [((2, 1, 11, 13), (4, 6)), ((2, 2, 5, 6, 7), (3, 4, 4)),
                                        ((2, 1, 3, 9), (5, 5)), ((2, 1, 2, 9), (8, 5))])
def test_patch_prior_equals_full_image_for_pointwise_denoiser(mode, shape, roi):
    inner = CountingDenoiser(Pointwise())
    prior = PatchPrior(inner, roi_size=roi, overlap=0.5, sw_batch_size=3, mode=mode)
    x = 2 * torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.2, 1.7], dtype=torch.float64)  # per-item noise levels
    out = prior(x, sigma)
    assert out.shape == x.shape and out.dtype == x.dtype
    full = inner.inner(x, sigma)
    assert not torch.allclose(full, inner.inner(x, sigma.flip(0)))  # the per-item sigma matters
    torch.testing.assert_close(out, full, rtol=0, atol=1e-12)
    assert inner.nfe > 1  # several window batches were used


def test_patch_prior_is_differentiable():
    inner = Pointwise()
    prior = PatchPrior(inner, roi_size=(4, 4), overlap=0.25, sw_batch_size=2, mode="gaussian")
    x = torch.randn(2, 1, 7, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.tensor([0.4, 1.1], dtype=torch.float64)
    w = torch.randn_like(x)
    xa = x.clone().requires_grad_(True)
    (prior(xa, sigma) * w).sum().backward()
    xb = x.clone().requires_grad_(True)
    (inner(xb, sigma) * w).sum().backward()
    assert xa.grad is not None and xa.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
    small = PatchPrior(inner, roi_size=(3, 3), overlap=0.34, sw_batch_size=2)
    xs = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: small(v, 0.8), (xs,))


def test_patch_prior_checks_dims():
    prior = PatchPrior(Pointwise(), roi_size=(4, 4))
    with pytest.raises(ValueError, match="roi_size"):
        prior(torch.randn(1, 1, 4, 4, 4), 1.0)
    with pytest.raises(ValueError, match="overlap"):
        PatchPrior(Pointwise(), roi_size=(4, 4), overlap=1.0)
