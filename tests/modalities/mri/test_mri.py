"""MRI modality: SENSE operator, closed forms, masks (fastMRI semantics), ESPIRiT, baselines, errors."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sciprior.modalities import get, mri
from sciprior.modalities.mri import (
    MultiCoilMRI,
    SingleCoilMRI,
    birdcage_maps,
    calibration_shape,
    cg_sense,
    column_mask,
    espirit_maps,
    fft2c,
    ifft2c,
    poisson_disc_mask,
    problem_from_kspace,
    random_mask,
    simulate_kspace,
    simulate_problem,
    to_channels,
    to_complex,
    zero_filled,
    zero_filled_rss,
)
from sciprior.physics.operator import operator_matrix
from sciprior.physics.testing import check_adjoint, load_examples


def _cplx(shape, seed, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return torch.complex(torch.randn(shape, generator=g, dtype=real),
                         torch.randn(shape, generator=g, dtype=real))


def _psnr(ref: torch.Tensor, est: torch.Tensor) -> float:
    mse = float(((ref - est) ** 2).mean())
    return 10 * math.log10(float(ref.abs().max()) ** 2 / max(mse, 1e-30))


@pytest.fixture(scope="module")
def brain():
    from sciprior.modalities.mri.samples import mni152_axial_slice

    return mni152_axial_slice(size=128)


# --------------------------------------------------------------------------------------------
# Fourier transform and operator definition
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 6), (7, 9)])
def test_fft2c_is_centred_and_unitary(shape):
    h, w = shape
    const = torch.ones((1, h, w), dtype=torch.complex64)
    k = fft2c(const)
    peak = torch.zeros_like(k)
    peak[0, h // 2, w // 2] = math.sqrt(h * w)  # all energy at DC, in the centre
    assert torch.allclose(k, peak, atol=1e-5)
    z = _cplx((2, h, w), 0)
    assert torch.allclose(ifft2c(fft2c(z)), z, atol=1e-5)
    assert torch.allclose(fft2c(z).abs().square().sum(), z.abs().square().sum(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(12, 10), (11, 9)])
def test_forward_is_masked_centred_fft_of_coil_images(shape):
    h, w = shape
    maps = _cplx((3, h, w), 1)
    mask = random_mask(w, 2, 0.3, seed=0)
    op = MultiCoilMRI(maps, mask)
    x = torch.randn(2, 2, h, w, generator=torch.Generator().manual_seed(2))
    expected = fft2c(maps[None] * to_complex(x)[:, None]) * mask
    y = op(x)
    assert y.shape == (2, 3, h, w) and y.is_complex()
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.all(y[..., mask == 0] == 0)  # zeros where unsampled
    expected_adj = to_channels((maps.conj()[None] * ifft2c(y * mask)).sum(1))
    assert torch.allclose(op.adjoint(y), expected_adj, atol=1e-5)


def test_mri_operators_are_registered_and_adjoint():
    examples = load_examples([get("mri").examples])
    names = [n for n in examples if n.startswith("mri_")]
    assert len(names) >= 3
    for n in names:
        assert check_adjoint(examples[n]()) < 1e-5, n


def test_full_sampling_with_normalised_maps_is_an_isometry():
    maps = birdcage_maps(6, (16, 12))
    assert torch.allclose(maps.abs().square().sum(0), torch.ones(16, 12), atol=1e-5)
    op = MultiCoilMRI(maps, torch.ones(12))
    x = torch.randn(2, 2, 16, 12)
    assert torch.allclose(op.normal(x), x, atol=1e-5)
    assert op.acceleration == pytest.approx(1.0)


def _real_matrix(op, dtype=torch.float64):
    m = operator_matrix(op, dtype=dtype)  # complex (m, d)
    return torch.cat((m.real, m.imag), dim=0)


def _real_vec(y):
    y = y.reshape(y.shape[0], -1)
    return torch.cat((y.real, y.imag), dim=1)


def test_single_coil_closed_forms_match_dense_linear_algebra():
    h, w = 6, 5
    mask = torch.tensor([1.0, 0, 1, 1, 0])
    op = SingleCoilMRI(mask, (h, w), dtype=torch.complex128).double()
    assert op.closed_form
    a = _real_matrix(op)
    noise = 0.1 * _cplx((2, 1, h, w), 3, torch.complex128) * mask
    y = op(torch.randn(2, 2, h, w, dtype=torch.float64)) + noise
    z = torch.randn(2, 2, h, w, dtype=torch.float64)
    gamma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    for gi, g in enumerate(gamma):
        lhs = a.T @ a + torch.eye(a.shape[1], dtype=torch.float64) / g
        rhs = a.T @ _real_vec(y[gi:gi + 1])[0] + z[gi].reshape(-1) / g
        ref = torch.linalg.solve(lhs, rhs).reshape(2, h, w)
        assert torch.allclose(op.prox_l2(z, y, gamma)[gi], ref, atol=1e-10)
        assert torch.allclose(op.prox_l2(z[gi:gi + 1], y[gi:gi + 1], float(g))[0], ref, atol=1e-10)
    pinv_ref = (torch.linalg.pinv(a) @ _real_vec(y).T).T.reshape(2, 2, h, w)
    assert torch.allclose(op.pinv(y), pinv_ref, atol=1e-10)


def test_multicoil_prox_and_pinv_by_cg_match_dense_solution():
    h, w = 8, 6
    maps = birdcage_maps(3, (h, w), dtype=torch.complex128)
    op = MultiCoilMRI(maps, random_mask(w, 2, 0.34, seed=4), cg_iters=200, cg_tol=1e-12).double()
    assert not op.closed_form and op.has_prox_l2
    a = _real_matrix(op)
    y = op(torch.randn(1, 2, h, w, dtype=torch.float64))
    z = torch.randn(1, 2, h, w, dtype=torch.float64)
    g = 0.7
    lhs = a.T @ a + torch.eye(a.shape[1], dtype=torch.float64) / g
    ref = torch.linalg.solve(lhs, a.T @ _real_vec(y)[0] + z.reshape(-1) / g).reshape(1, 2, h, w)
    assert torch.allclose(op.prox_l2(z, y, g), ref, atol=1e-8)
    pinv_ref = (torch.linalg.pinv(a) @ _real_vec(y)[0]).reshape(1, 2, h, w)
    assert torch.allclose(op.pinv(y), pinv_ref, atol=1e-6)


def test_likelihood_gradient_through_autograd_equals_adjoint():
    maps = birdcage_maps(4, (10, 8))
    x = torch.randn(2, 2, 10, 8)
    prob = simulate_problem(x, maps, random_mask(8, 2, 0.25, seed=1), sigma=0.1,
                            generator=torch.Generator().manual_seed(0))
    xt = torch.randn(2, 2, 10, 8)
    expected = prob.operator.adjoint(prob.operator(xt) - prob.y) / 0.1**2
    assert torch.allclose(prob.grad_nll(xt), expected, rtol=1e-4, atol=1e-3)


def test_simulated_noise_is_complex_gaussian_with_sigma_per_part_and_zero_off_mask():
    h, w, sigma = 64, 64, 0.05
    mask = random_mask(w, 4, 0.08, seed=2)
    op = MultiCoilMRI(birdcage_maps(4, (h, w)), mask)
    x = torch.rand(1, 2, h, w)
    y = simulate_kspace(op, x, sigma, torch.Generator().manual_seed(1))
    assert torch.all(y[..., mask == 0] == 0)
    n = (y - op(x))[..., mask == 1]
    for part in (n.real, n.imag):  # n >= 4*64*16 samples: std within 5%
        assert abs(float(part.std()) / sigma - 1) < 0.05
    assert abs(float((n.real * n.imag).mean())) < 0.1 * sigma**2


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "equispaced", "equispaced_fraction"])
@pytest.mark.parametrize("acc,cf,num_low", [(4, 0.08, 29), (8, 0.04, 15)])
def test_column_masks_have_fastmri_centre_and_are_seeded(kind, acc, cf, num_low):
    cols = 368
    mask, nl = column_mask(kind, cols, acc, cf, seed=7)
    assert nl == num_low == round(cols * cf)
    pad = (cols - num_low + 1) // 2
    assert torch.all(mask[pad:pad + num_low] == 1)
    assert torch.equal(mask, column_mask(kind, cols, acc, cf, seed=7)[0])
    others = [column_mask(kind, cols, acc, cf, seed=s)[0] for s in range(8)]
    assert any(not torch.equal(others[0], o) for o in others[1:])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_random_column_mask_matches_target_acceleration_in_expectation():
    cols, acc, cf = 368, 4, 0.08
    counts = torch.stack([column_mask("random", cols, acc, cf, seed=s)[0].sum() for s in range(200)])
    # expected number of columns is cols / acc; std of the mean over 200 draws is < 0.5 columns
    assert abs(float(counts.mean()) - cols / acc) < 2.0


def test_equispaced_masks_are_equispaced_and_fraction_variant_hits_acceleration():
    cols = 320
    m = column_mask("equispaced", cols, 4, 0.08, seed=3, offset=1)[0]
    lines = torch.zeros(cols)
    lines[1::4] = 1
    centre = torch.zeros(cols)
    nl = round(cols * 0.08)
    centre[(cols - nl + 1) // 2:(cols - nl + 1) // 2 + nl] = 1
    assert torch.equal(m, torch.maximum(lines, centre))
    for acc, cf in ((4, 0.08), (8, 0.04)):
        mf = column_mask("equispaced_fraction", cols, acc, cf, seed=0)[0]
        assert abs(cols / float(mf.sum()) - acc) / acc < 0.05


def test_column_masks_identical_to_fastmri_when_installed():
    spec = importlib.util.find_spec("fastmri")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fastmri not installed (cross-check is optional)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "subsample.py"
    s = importlib.util.spec_from_file_location("_fastmri_subsample", path)
    fm = importlib.util.module_from_spec(s)
    s.loader.exec_module(fm)
    for kind, cls in (("random", "RandomMaskFunc"), ("equispaced", "EquiSpacedMaskFunc"),
                      ("equispaced_fraction", "EquispacedMaskFractionFunc")):
        for seed in range(3):
            ref, nl_ref = getattr(fm, cls)([0.08, 0.04], [4, 8])((1, 640, 368, 2), seed=seed)
            mine, nl = column_mask(kind, 368, [4, 8], [0.08, 0.04], seed=seed)
            assert nl == nl_ref and torch.equal(ref.reshape(-1), mine)


def test_poisson_disc_mask_properties():
    shape, acc, calib = (64, 64), 4.0, 16
    m = poisson_disc_mask(shape, acc, calib=calib, seed=3)
    assert m.shape == shape
    assert abs(64 * 64 / float(m.sum()) - acc) < 0.1
    assert torch.equal(m, poisson_disc_mask(shape, acc, calib=calib, seed=3))
    assert not torch.equal(m, poisson_disc_mask(shape, acc, calib=calib, seed=4))
    c0 = 32 - calib // 2
    assert torch.all(m[c0:c0 + calib, c0:c0 + calib] == 1)
    assert calibration_shape(m)[0] >= calib and calibration_shape(m)[1] >= calib
    # variable density: the ring just outside the calibration block is denser than the periphery
    yy, xx = torch.meshgrid(torch.arange(64) - 32.0, torch.arange(64) - 32.0, indexing="ij")
    r = torch.sqrt(yy**2 + xx**2)
    inner, outer = m[(r > 12) & (r < 18)].mean(), m[(r > 24) & (r < 31)].mean()
    assert inner > 1.5 * outer
    # uniform Poisson disc at 4x: exclusion radius > 1, so no two samples are 4-neighbours
    u = poisson_disc_mask(shape, acc, calib=0, seed=1, variable_density=False, crop_corner=False).bool()
    assert abs(64 * 64 / float(u.sum()) - acc) < 0.1
    assert not (u[1:] & u[:-1]).any() and not (u[:, 1:] & u[:, :-1]).any()


def test_calibration_shape_of_column_mask():
    m, nl = column_mask("equispaced", 64, 4, 0.25, seed=0)
    rows, cols = calibration_shape(m, (32, 64))
    assert rows == 32 and cols >= nl


# --------------------------------------------------------------------------------------------
# Baselines on the real MNI slice
# --------------------------------------------------------------------------------------------


def test_cg_sense_fully_sampled_noise_free_recovers_mni_slice_above_50db(brain):
    x = to_channels(brain[None].to(torch.complex64))
    op = MultiCoilMRI(birdcage_maps(8, brain.shape), torch.ones(brain.shape[-1]))
    y = op(x)
    rec = cg_sense(op, y, iters=10)
    assert _psnr(x, rec) >= 50.0
    # fastMRI-style zero-filled RSS equals |image| at full sampling (sum_c |S_c|^2 = 1)
    assert torch.allclose(zero_filled_rss(y)[:, 0], brain[None], atol=1e-4)


def test_cg_sense_beats_zero_filled_at_4x(brain):
    x = to_channels(brain[None].to(torch.complex64))
    op = MultiCoilMRI(birdcage_maps(8, brain.shape), random_mask(brain.shape[-1], 4, 0.08, seed=0))
    y = op(x)
    zf, rec = zero_filled(op, y), cg_sense(op, y, iters=30)
    assert _psnr(x, rec) > _psnr(x, zf) + 5.0


def _aligned_map_error(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per pixel, min over a common phase phi of ||est - e^{i phi} true|| / ||true|| (coils axis 0)."""
    ip = (true.conj() * est).sum(0).abs()
    ne, nt = est.abs().square().sum(0), true.abs().square().sum(0)
    return torch.sqrt((ne + nt - 2 * ip).clamp_min(0) / nt)


def test_espirit_reproduces_true_maps_up_to_per_pixel_phase(brain):
    """Metric: e(r) = min_phi ||S_est(r) - e^{i phi} S(r)||_2 / ||S(r)||_2 over coils, per pixel inside
    the object (image > 5% of max). Thresholds: 95th percentile < 0.02 and max < 0.06."""
    h, w = brain.shape
    maps = birdcage_maps(8, (h, w))
    mask = poisson_disc_mask((h, w), 4.0, calib=24, seed=0)
    op = MultiCoilMRI(maps, mask)
    x = to_channels(brain[None].to(torch.complex64))
    y = simulate_kspace(op, x, 1e-3, torch.Generator().manual_seed(0))
    est, eig = espirit_maps(y[0], calibration_shape(mask), kernel_width=6, thresh=0.02, crop=0.9,
                            return_eigenvalues=True)
    obj = brain > 0.05
    err = _aligned_map_error(est[:, obj], maps[:, obj])
    assert float(err.quantile(0.95)) < 0.02 and float(err.max()) < 0.06
    assert float(eig[0][obj].min()) > 0.9
    assert torch.allclose(est[0].imag, torch.zeros(h, w), atol=1e-5)  # phase referenced to coil 0
    # the metric can fail: conjugated maps (a plausible sign bug) are far off
    assert float(_aligned_map_error(maps.conj()[:, obj], maps[:, obj]).median()) > 0.3


def test_problem_from_kspace_estimates_maps_and_normalises():
    h, w = 48, 40
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = ((yy**2 / 0.6 + xx**2 / 0.5) < 1).float() * (1 + 0.5 * xx)
    maps = birdcage_maps(4, (h, w))
    mask = column_mask("random", w, 2, 0.4, seed=0)[0]
    k = MultiCoilMRI(maps, torch.ones(w))(to_channels(img[None].to(torch.complex64)))[0] * 3.0
    prob = problem_from_kspace(k, mask, sigma=0.03, espirit={"kernel_width": 5})
    assert prob.image_shape == (2, h, w) and prob.operator.num_coils == 4
    zf = prob.operator.adjoint(prob.y)
    assert float(zf.square().sum(1).sqrt().max()) == pytest.approx(1.0, rel=1e-4)
    assert prob.noise.sigma == pytest.approx(0.03 * prob.metadata["scale"])
    assert torch.all(prob.y[..., mask == 0] == 0)


# --------------------------------------------------------------------------------------------
# Errors that name the problem
# --------------------------------------------------------------------------------------------


def test_mask_and_kspace_shape_mismatch_is_named():
    maps = birdcage_maps(2, (16, 12))
    with pytest.raises(ValueError, match=r"mask of shape \(10,\) does not match k-space"):
        MultiCoilMRI(maps, torch.ones(10))
    k = _cplx((2, 16, 12), 0)
    with pytest.raises(ValueError, match=r"mask of shape \(16, 10\) does not match k-space"):
        problem_from_kspace(k, torch.ones(16, 10), maps=maps)
    with pytest.raises(ValueError, match=r"maps of shape .* do not match"):
        problem_from_kspace(k, torch.ones(12), maps=birdcage_maps(3, (16, 12)))


def test_nan_in_measurement_is_named():
    maps = birdcage_maps(2, (16, 12))
    op = MultiCoilMRI(maps, torch.ones(12))
    y = op(torch.randn(1, 2, 16, 12))
    y[0, 1, 3, 4] = complex(float("nan"), 0.0)
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        cg_sense(op, y)
    with pytest.raises(ValueError, match="NaN/Inf"):
        problem_from_kspace(y[0], torch.ones(12), maps=maps)
    with pytest.raises(ValueError, match="NaN/Inf"):
        espirit_maps(y[0], 8)
    from sciprior.physics.noise import Gaussian
    from sciprior.physics.problem import Problem

    with pytest.raises(ValueError, match="NaN/Inf"):
        Problem(op, y, Gaussian(0.1), (2, 16, 12))


def test_wrong_types_and_shapes_name_the_operator():
    op = MultiCoilMRI(birdcage_maps(2, (16, 12)), torch.ones(12))
    with pytest.raises(ValueError, match=r"MultiCoilMRI: expected image of shape \(B, 2, 16, 12\)"):
        op(torch.randn(1, 1, 16, 12))
    with pytest.raises(TypeError, match="MultiCoilMRI: k-space must be complex"):
        op.adjoint(torch.randn(1, 2, 16, 12))
    with pytest.raises(ValueError, match=r"MultiCoilMRI: expected measurement of shape \(B, 2, 16, 12\)"):
        op.adjoint(_cplx((1, 3, 16, 12), 0))
    with pytest.raises(ValueError, match="mask values must be 0 or 1"):
        MultiCoilMRI(birdcage_maps(2, (16, 12)), torch.full((12,), 0.5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        espirit_maps(_cplx((2, 16, 12), 0), (4, 4), kernel_width=6)
    with pytest.raises(ValueError, match="unknown kind"):
        column_mask("radial", 64)
    with pytest.raises(ValueError, match="calibration region alone"):
        poisson_disc_mask((16, 16), 1.5, calib=14)


def test_module_exports():
    assert set(mri.__all__) <= set(dir(mri))
    assert np.isclose(mri.MultiCoilMRI(birdcage_maps(2, (8, 8)), random_mask(8, 2, 0.25)).acceleration,
                      8 / float(random_mask(8, 2, 0.25).sum()))
