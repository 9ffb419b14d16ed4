"""Problem.simulate: noise goes only on measured entries (Operator.measured_support)."""

from __future__ import annotations

import torch

from sciprior.modalities.mri import MultiCoilMRI, birdcage_maps
from sciprior.modalities.mri.masks import column_mask
from sciprior.physics.generic import Identity, Mask, RealToComplex
from sciprior.physics.noise import Gaussian, StackedNoise
from sciprior.physics.operator import StackedOperator
from sciprior.physics.problem import Problem


def test_masked_pixels_get_no_noise_and_measured_ones_do():
    mask = (torch.arange(36).reshape(1, 6, 6) % 3 != 0).float()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    p = Problem.simulate(Mask(mask, (1, 6, 6)), x, Gaussian(0.1), generator=torch.Generator().manual_seed(1))
    off = ~mask.bool().expand(2, 1, 6, 6)
    assert torch.count_nonzero(p.y[off]) == 0
    noise = (p.y - x)[~off]
    assert 0.05 < float(noise.std()) < 0.2  # 48 draws of N(0, 0.1^2)
    assert p.y.dtype == x.dtype


def test_unsampled_kspace_stays_zero_through_scaling_and_composition():
    n = 8
    sense = MultiCoilMRI(birdcage_maps(2, (n, n)), column_mask("random", n, 2, 0.25, seed=1)[0])
    op = 0.5 * (sense @ RealToComplex((n, n)))  # the MRI demos' operator on a real image
    x = torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    p = Problem.simulate(op, x, Gaussian(0.05), generator=torch.Generator().manual_seed(2))
    unsampled = ~sense.mask.bool().expand(n, n)
    assert unsampled.any()
    assert torch.count_nonzero(p.y[..., unsampled]) == 0
    assert torch.count_nonzero(p.y[..., ~unsampled]) == p.y[..., ~unsampled].numel()
    assert p.y.dtype == torch.complex64


def test_stacked_operator_masks_only_the_masked_measurement():
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    op = StackedOperator([Mask(mask, (1, 4)), Identity((1, 4))])
    x = torch.zeros(3, 1, 4)
    p = Problem.simulate(op, x, StackedNoise([Gaussian(0.1), Gaussian(0.1)]),
                         generator=torch.Generator().manual_seed(3))
    masked, full = p.y
    assert torch.count_nonzero(masked[..., 1::2]) == 0 and torch.count_nonzero(masked[..., ::2]) == 6
    assert torch.count_nonzero(full) == 12  # the identity measures everything: noise everywhere


def test_slice_stack_shares_the_2d_support():
    from sciprior.physics.stack import SliceStackOperator

    mask = torch.tensor([[[1.0, 0.0, 1.0]]])
    op = SliceStackOperator(Mask(mask, (1, 1, 3)), depth=4, chunk_size=2)
    p = Problem.simulate(op, torch.zeros(2, 1, 4, 1, 3), Gaussian(0.1), generator=torch.Generator().manual_seed(4))
    assert torch.count_nonzero(p.y[..., 1]) == 0 and torch.count_nonzero(p.y[..., ::2]) == 2 * 4 * 2


def test_noise_residual_is_what_the_truth_fits_to():
    """The noise level of data_consistency: the truth's own residual is sigma sqrt(m) / ||y|| up to sampling
    noise (m = 2 x the sampled complex entries of masked multi-coil k-space, zeros excluded); None without
    Gaussian noise."""
    from sciprior.physics.noise import Poisson
    from sciprior.physics.problem import data_consistency, noise_residual

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 32, 32, generator=g)
    op = MultiCoilMRI(birdcage_maps(4, (32, 32)), column_mask("random", 32, 4.0, 0.08, seed=0)[0])
    for sigma in (0.01, 0.1):
        pb = Problem.simulate(op, x, Gaussian(sigma), generator=torch.Generator().manual_seed(1))
        level, truth = noise_residual(pb), data_consistency(pb, x)
        assert level.shape == (2,)
        torch.testing.assert_close(truth, level, rtol=0.05, atol=0)  # measured: within 1.2 %
    assert noise_residual(Problem.simulate(op, x, Gaussian(0.0))) is None
    img = Problem.simulate(Identity((1, 8, 8)), 100 * torch.rand(1, 1, 8, 8, generator=g), Poisson(1.0),
                           generator=torch.Generator().manual_seed(2))
    assert noise_residual(img) is None
