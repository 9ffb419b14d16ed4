"""3D volumes with a 2D prior: SliceStackOperator, the z-difference operator, dds_volume (NIfTI volumes end to end:
tests/app/test_reconstruct.py)."""

from __future__ import annotations

import pytest
import torch

from sciprior.modalities.mri import MultiCoilMRI, birdcage_maps, random_mask
from sciprior.physics.generic import Mask, MatrixOperator, SliceDifference, gradient, slice_diff, slice_diff_adjoint
from sciprior.physics.noise import Gaussian
from sciprior.physics.operator import inner
from sciprior.physics.problem import Problem
from sciprior.physics.stack import (
    SliceStackOperator,
    from_slices,
    to_slices,
)
from sciprior.physics.testing import check_adjoint
from sciprior.priors.analytic import GaussianPrior
from sciprior.priors.wrappers import SliceWisePrior
from sciprior.solvers.common import ItemNoise
from sciprior.solvers.dds import dds
from sciprior.solvers.dds3d import dds_volume, group_shrink

H = W = 8


def se_prior(h: int = H, w: int = W, ell: float = 2.0, channels: int = 1) -> GaussianPrior:
    """Zero-mean Gaussian prior on (C, h, w) images with a squared-exponential covariance (unit variance)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    k = torch.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / (2 * ell**2))
    cov = torch.block_diag(*([k] * channels)) + 1e-3 * torch.eye(channels * h * w, dtype=torch.float64)
    mean = torch.zeros(channels * h * w, dtype=torch.float64)
    return GaussianPrior(mean, cov, image_shape=(channels, h, w))


def random_mask_2d(seed: int, keep: float = 0.3) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask((torch.rand((1, H, W), generator=g) < keep).double(), (1, H, W))


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


def test_slice_stack_matches_the_2d_operator_on_every_slice():
    op2d = MultiCoilMRI(birdcage_maps(3, (H, W), dtype=torch.complex128), random_mask(W, 2, 0.25, seed=1))
    op = SliceStackOperator(op2d, depth=5).double()
    x = torch.randn(2, 2, 5, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    assert y.shape == (2, 5, 3, H, W) and y.is_complex()
    # the stack applies op2d to all B * D slices in one call, the reference to one slice: FFT batch sizes
    # differ, so only equality up to rounding is guaranteed (bitwise on this machine; one 8 x 8 FFT of
    # |x| ~ 8 rounds to ~1e-15)
    for b in range(2):
        for d in range(5):
            torch.testing.assert_close(y[b, d], op2d(x[b:b + 1, :, d])[0], rtol=1e-12, atol=1e-12)
    # exact adjoint (float64) and per-slice normal / closed forms
    assert check_adjoint(op, dtype=torch.float64) < 1e-13
    torch.testing.assert_close(op.normal(x), op.adjoint(op(x)), rtol=1e-12, atol=1e-12)
    gam = torch.tensor([0.5, 2.0], dtype=torch.float64)
    prox = op.prox_l2(x, y, gam)
    for b in range(2):
        ref = op2d.prox_l2(x[b:b + 1].transpose(1, 2)[0], y[b], float(gam[b]))
        torch.testing.assert_close(prox[b].transpose(0, 1), ref, rtol=1e-6, atol=1e-8)


def test_slice_stack_chunking_and_errors():
    op2d = random_mask_2d(0)
    whole = SliceStackOperator(op2d, depth=4)
    chunked = SliceStackOperator(op2d, depth=4, chunk_size=3)
    x = torch.randn(3, 1, 4, H, W, dtype=torch.float64)
    # bitwise: a Mask (and its adjoint) is elementwise, so the chunking cannot change the rounding
    torch.testing.assert_close(whole(x), chunked(x), rtol=0, atol=0)
    torch.testing.assert_close(whole.adjoint(whole(x)), chunked.adjoint(chunked(x)), rtol=0, atol=0)
    assert whole.has_pinv and whole.has_prox_l2
    msg = r"SliceStack\[Mask x 4\]: expected image of shape \(B, 1, 4, 8, 8\)"
    with pytest.raises(ValueError, match=msg):
        whole(torch.zeros(1, 1, 3, H, W))
    with pytest.raises(ValueError, match="depth must be a positive int"):
        SliceStackOperator(op2d, depth=0)
    with pytest.raises(ValueError, match="must have a 2D image shape"):
        SliceStackOperator(MatrixOperator(torch.eye(4), (4,)), depth=2)


def test_slice_difference_is_adjoint_and_matches_the_z_gradient():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 4, 3, dtype=torch.float64, generator=g)
    v = torch.randn(2, 2, 4, 4, 3, dtype=torch.float64, generator=g)
    lhs, rhs = inner(slice_diff(x), v), inner(x, slice_diff_adjoint(v))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)
    # same as the z component of the Neumann forward-difference gradient of classical.py (bitwise: both are
    # the same elementwise differences x[d + 1] - x[d])
    torch.testing.assert_close(slice_diff(x), gradient(x)[:, 0, :, :-1], rtol=0, atol=0)
    assert check_adjoint(SliceDifference((2, 5, 4, 3)), dtype=torch.float64) < 1e-13


def test_group_shrink_is_the_prox_of_the_channel_norm():
    v = torch.tensor([[[3.0]], [[4.0]]], dtype=torch.float64)[None]  # one voxel, |v| = 5
    torch.testing.assert_close(group_shrink(v, 1.0), v * 0.8)
    torch.testing.assert_close(group_shrink(v, 6.0), torch.zeros_like(v))


# --------------------------------------------------------------------------------------------
# dds_volume
# --------------------------------------------------------------------------------------------


def _stack_problem(prior: GaussianPrior, op2d, depth: int, sigma: float, batch: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    slices = prior.sample(batch * depth, generator=g)  # independent slices
    vol = from_slices(slices, depth)
    return Problem.simulate(SliceStackOperator(op2d, depth), vol, Gaussian(sigma), generator=g)


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_tv0_reproduces_2d_dds_on_every_slice(monkeypatch, sigma):
    """With tv_z = 0 the volume solver is 2D DDS slice by slice: given the same random numbers, it
    returns what dds returns on the slices as a batch (per-slice CG, chunked prior, same re-noising)."""
    prior = se_prior()
    depth, batch = 3, 2
    # a dense random 2D operator: its normal matrix has many distinct eigenvalues, so 3 CG iterations
    # are far from converged and CG over the whole volume (shared step sizes) would differ
    a = torch.randn(24, H * W, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / 8
    prob = _stack_problem(prior, MatrixOperator(a, (1, H, W)), depth, sigma, batch, seed=4)
    op = prob.operator
    tape: list[torch.Tensor] = []
    orig = ItemNoise.randn
    with monkeypatch.context() as mp:
        def record(self, *shape):
            out = orig(self, *shape)
            tape.append(out.clone())
            return out

        mp.setattr(ItemNoise, "randn", record)
        res = dds_volume(prior, prob, steps=12, tv_z=0.0, chunk_size=4, cg_iters=3, progress=False)
    assert res.info["slicewise_cg"] and not res.info["coupled"]
    replay = iter(tape)
    with monkeypatch.context() as mp:
        def play(self, *shape):
            out = to_slices(next(replay))
            assert tuple(out.shape[1:]) == shape
            return out

        mp.setattr(ItemNoise, "randn", play)
        prob2d = Problem(op.op2d, op.slices_of(prob.y), prob.noise, (1, H, W))
        ref = dds(prior, prob2d, steps=12, cg_iters=3, progress=False)
    assert next(replay, None) is None
    torch.testing.assert_close(res.mean, from_slices(ref.mean, depth), rtol=1e-10, atol=1e-10)
    assert res.nfe == ref.nfe == 12
    assert res.samples.shape == (batch, 1, 1, depth, H, W)


def _identical_slices_problem(seed: int, depth: int = 6, sigma: float = 0.1):
    """One 2D slice repeated ``depth`` times, each slice seen through its own random 25% pixel mask."""
    prior = se_prior()
    g = torch.Generator().manual_seed(seed)
    x2 = prior.sample(1, generator=g)
    vol = x2[:, :, None].expand(1, 1, depth, H, W).clone()
    mask = (torch.rand((1, depth, H, W), generator=g) < 0.25).double()
    prob = Problem.simulate(Mask(mask, (1, depth, H, W)), vol, Gaussian(sigma), generator=g)
    return prior, prob, vol, x2, mask


def test_tv_z_coupling_pools_the_measurements_of_identical_slices():
    """Identical slices under different sparse masks: coupling the slices by TV-z lets each slice use
    the others' pixels. The error must drop well below the uncoupled one, to near the exact posterior
    mean of the pooled problem (one slice measured through all masks).

    Checked over 8 problems, not one, so that the margins are measured on more than one draw. Measured over
    problem seeds 0..7 x 4 solver seeds (identical to 3 digits under MKL_CBWR=COMPATIBLE / AVX512): coupled /
    ideal mean 1.18-1.24 per solver seed (single problems 0.90-1.47), coupled / uncoupled <= 0.24 per problem;
    the uncoupled solver (what a broken coupling gives) scores 8.1-8.5 x ideal on average (5.9-16.4 per
    problem) and 1.0 against itself; the z-spread ratio is <= 0.043.
    """
    ratios = []
    for seed in range(8):
        prior, prob, vol, x2, mask = _identical_slices_problem(seed)
        kw = dict(steps=20, cg_iters=10, num_samples=4, progress=False)
        uncoupled = dds_volume(prior, prob, tv_z=0.0, **kw)
        coupled = dds_volume(prior, prob, tv_z=0.2, admm_rho=1.0, admm_iters=2, **kw)
        assert coupled.info["coupled"] and not uncoupled.info["coupled"]
        rmse0 = float((uncoupled.mean - vol).square().mean().sqrt())
        rmse1 = float((coupled.mean - vol).square().mean().sqrt())
        # exact posterior mean of the pooled problem: every slice's measurements of the one image
        rows, ys = [], []
        for d in range(vol.shape[2]):
            idx = mask[0, d].reshape(-1).nonzero().reshape(-1)
            rows.append(torch.eye(H * W, dtype=torch.float64)[idx])
            ys.append(prob.y[0, 0, d].reshape(-1)[idx])
        pooled = Problem(MatrixOperator(torch.cat(rows), (1, H, W)), torch.cat(ys)[None], Gaussian(0.1),
                         (1, H, W))
        ideal = float((prior.posterior(pooled).mean.reshape(H, W) - x2.reshape(H, W)).square().mean().sqrt())
        assert rmse1 < 0.6 * rmse0, (seed, rmse0, rmse1)
        ratios.append(rmse1 / ideal)
        # the coupled volume is (nearly) constant along z, the uncoupled one is not (measured <= 0.05)
        spread1 = float(coupled.mean.std(dim=2).mean())
        spread0 = float(uncoupled.mean.std(dim=2).mean())
        assert spread1 < 0.25 * spread0, (seed, spread1, spread0)
    assert sum(ratios) / len(ratios) < 2.0, ratios


def test_chunking_does_not_change_the_result():
    prior, prob, *_ = _identical_slices_problem(1, depth=5)
    kw = dict(steps=8, tv_z=0.1, admm_rho=1.0, cg_iters=4, num_samples=2, progress=False)
    one = dds_volume(prior, prob, chunk_size=1, **kw)
    all_ = dds_volume(prior, prob, chunk_size=10, **kw)
    torch.testing.assert_close(one.samples, all_.samples, rtol=1e-12, atol=1e-12)
    assert one.info["network_calls_per_step"] == 10 and all_.info["network_calls_per_step"] == 1


def test_chunking_does_not_change_the_result_with_a_unet():
    from sciprior.priors.edm import EDMDenoiser
    from sciprior.priors.networks import build_unet

    torch.manual_seed(0)
    net = build_unet(channels=(16, 16), attention_levels=(False, False), num_head_channels=16,
                     norm_num_groups=8)
    for p in net.parameters():  # MONAI zero-initialises output convolutions: make the net non-trivial
        torch.nn.init.normal_(p, std=0.05)
    den = EDMDenoiser(net, sigma_data=0.5, sigma_max=10.0, image_shape=(1, H, W)).eval()
    op2d = random_mask_2d(2).float()
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(1, 1, 4, H, W, generator=g)
    prob = Problem.simulate(SliceStackOperator(op2d, 4), vol, Gaussian(0.05), generator=g)
    kw = dict(steps=4, tv_z=0.05, admm_rho=1.0, progress=False)
    a = dds_volume(den, prob, chunk_size=1, **kw)
    b = dds_volume(den, prob, chunk_size=4, **kw)
    assert a.mean.dtype == torch.float32
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-4, atol=1e-5)
    assert float((a.mean - a.mean.mean()).abs().max()) > 0  # not a trivial constant output


def test_mri_slice_stack_with_noise_beats_zero_filling():
    """Per-slice 2D SENSE (complex images as 2 channels) with complex Gaussian noise."""
    prior = se_prior(channels=2)
    maps = birdcage_maps(2, (H, W), dtype=torch.complex128)
    op2d = MultiCoilMRI(maps, random_mask(W, 2, 0.25, seed=3))
    prob = _stack_problem(prior, op2d, depth=4, sigma=0.05, batch=1, seed=5)
    assert prob.y.is_complex() and prob.y.shape == (1, 4, 2, H, W)
    res = dds_volume(prior, prob, steps=15, tv_z=0.01, admm_rho=0.1, cg_iters=5, progress=False)
    err = float((res.mean - prob.reference).square().mean().sqrt())
    zf = float((prob.operator.adjoint(prob.y) - prob.reference).square().mean().sqrt())
    assert err < 0.7 * zf, (err, zf)
    assert torch.isfinite(res.mean).all()


def test_dds_volume_checks_its_inputs():
    prior = se_prior()
    prob = _stack_problem(prior, random_mask_2d(0), 3, 0.1, 1, seed=0)
    with pytest.raises(ValueError, match=r"dds_volume: the 2D prior expects images of shape \(1, 4, 4\)"):
        dds_volume(se_prior(4, 4), prob, steps=2, progress=False)
    flat = Problem(random_mask_2d(0), prob.y[:, 0], prob.noise, (1, H, W))
    with pytest.raises(ValueError, match=r"dds_volume: the problem's image_shape must be a volume"):
        dds_volume(prior, flat, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"dds_volume: tv_z=-1\.0; expected a finite number >= 0"):
        dds_volume(prior, prob, steps=2, tv_z=-1.0, progress=False)
    with pytest.raises(ValueError, match="dds_volume: chunk_size=0; expected an int >= 1"):
        dds_volume(prior, prob, steps=2, chunk_size=0, progress=False)
    # a SliceWisePrior is unwrapped (and re-chunked), not wrapped twice
    res = dds_volume(SliceWisePrior(prior, chunk_size=1), prob, steps=2, chunk_size=3, progress=False)
    assert res.info["network_calls_per_step"] == 1


def test_dds_volume_is_registered():
    from sciprior.solvers import SOLVERS, get_solver

    if "dds_volume" not in SOLVERS:
        pytest.skip("dds_volume is not in sciprior.solvers.SOLVERS yet")
    assert get_solver("dds_volume") is dds_volume
