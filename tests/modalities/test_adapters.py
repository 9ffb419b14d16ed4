"""Modality adapters: operators (adjointness), volume geometry (affines through slicing, padding and
resizing), the CT and MRI problems they build (offsets, noise, baselines) and their config checks."""

import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from sciprior.io.grid import VolumeGrid, cut_stack, stack_to_file_order
from sciprior.io.nifti import read_nifti
from sciprior.io.paths import resolve_input
from sciprior.modalities import sample_table, trained_reader
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.modalities.mri.coils import lowres_phase
from sciprior.physics.generic import BlockMean, RealToComplex
from sciprior.physics.noise import TransmissionPoisson
from sciprior.physics.problem import data_consistency
from sciprior.physics.stack import PerSliceOperator


def test_real_to_complex_embeds_with_zero_imaginary_part():
    op = RealToComplex((3, 4))
    x = torch.randn(2, 1, 3, 4)
    y = op(x)
    assert y.shape == (2, 2, 3, 4) and torch.equal(y[:, 0], x[:, 0]) and torch.all(y[:, 1] == 0)
    v = torch.randn(2, 2, 3, 4)
    assert torch.equal(op.adjoint(v), v[:, :1])


def test_per_slice_operator_applies_each_slice_operator():
    ops = [BlockMean(2, (1, 4, 4)), 3.0 * BlockMean(2, (1, 4, 4))]
    op = PerSliceOperator(ops)
    x = torch.randn(2, 1, 2, 4, 4)
    y = op(x)
    assert y.shape == (2, 2, 1, 2, 2)
    assert torch.allclose(y[:, 1], ops[1](x[:, :, 1]))
    with pytest.raises(ValueError, match="disagree"):
        PerSliceOperator([BlockMean(2, (1, 4, 4)), BlockMean(2, (1, 8, 4))])


# ---------------------------------------------------------------------------------------------
# Volume geometry
# ---------------------------------------------------------------------------------------------


def _linear_volume(shape, affine, coef=(0.3, -0.7, 0.2), const=5.0):
    """A volume whose value is a linear function of the world coordinates of each voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = (affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    return (world @ np.array(coef) + const).reshape(shape).astype(np.float32)


def _world_values(data, affine, coef=(0.3, -0.7, 0.2), const=5.0):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij"), -1).reshape(-1, 3)
    world = (affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    return (world @ np.array(coef) + const).reshape(data.shape)


@pytest.mark.parametrize("size", [None, 24, 32])
def test_output_affine_follows_slicing_and_resizing(tmp_path, size):
    # RAS file with a shifted origin: reoriented to LPS for slicing, written back in RAS order.
    affine = np.array([[0.9, 0, 0, -20.0], [0, 0.9, 0, 13.0], [0, 0, 2.0, -7.0], [0, 0, 0, 1]])
    vol = _linear_volume((48, 48, 5), affine)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    grid = read_nifti(path)
    st = cut_stack(grid, 3, size, True, 0.0, "slices")
    data, aff = stack_to_file_order(st.data.numpy(), st.plane_grid, grid)
    n = size or 48
    assert data.shape == (n, n, 1)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    # resampling a linear function of the world coordinates gives that function at the new voxel
    # centres (exactly for integer factors; the antialiasing filter's discretisation leaves a small
    # zero-mean ripple at 1.5x). The values change by ~1 per pixel, so an affine off by a fraction of a
    # pixel would show as a systematic error of that size.
    want = _world_values(data, aff)
    inner = (slice(3, n - 3), slice(3, n - 3), 0)
    err = data[inner] - want[inner]
    tol = 1e-5 if 48 % n == 0 else 0.03
    assert np.abs(err).max() < tol and abs(err.mean()) < tol / 3
    if size is None:  # unresized: the file's affine moved to slice 3
        np.testing.assert_allclose(aff, affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1.0]]))
        np.testing.assert_allclose(data[..., 0], vol[..., 3], rtol=1e-6)
    else:
        np.testing.assert_allclose(np.sqrt((aff[:3, :3] ** 2).sum(0)), [0.9 * 48 / n, 0.9 * 48 / n, 2.0])


def test_padding_to_square_keeps_square_pixels_and_the_world_grid(tmp_path):
    affine = np.diag([-0.5, -0.5, 1.0, 1.0])
    vol = _linear_volume((40, 30, 2), affine)  # x: 40, y: 30 -> plane (H=30, W=40)
    grid = VolumeGrid.from_array(vol, affine)
    st = cut_stack(grid, 0, 20, True, 0.0, "slices")
    assert st.data.shape == (1, 20, 20)
    assert st.pixel_spacing == pytest.approx((1.0, 1.0))
    data, aff = stack_to_file_order(st.data.numpy(), st.plane_grid, grid)
    want = _world_values(data, aff)
    # rows 5..14 of the output come from the original (unpadded) rows, away from the pad
    np.testing.assert_allclose(data[3:-3, 7:13, 0], want[3:-3, 7:13, 0], atol=1e-5)


def test_slices_do_not_depend_on_the_file_orientation(tmp_path):
    affine = np.array([[1.0, 0, 0, -10], [0, 1.2, 0, -12], [0, 0, 2, 4], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).normal(size=(12, 10, 4)).astype(np.float32)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [11, 9, 0]  # voxel i -> 11 - i, j -> 9 - j
    grid_ras = VolumeGrid.from_array(vol, affine)
    grid_lps = VolumeGrid.from_array(vol[::-1, ::-1].copy(), affine @ flip)
    a = cut_stack(grid_ras, (1, 3), None, True, 0.0, "slices")
    b = cut_stack(grid_lps, (1, 3), None, True, 0.0, "slices")
    assert torch.equal(a.data, b.data)  # the same display image (rows A -> P, columns R -> L)
    data_b, aff_b = stack_to_file_order(b.data.numpy(), b.plane_grid, grid_lps)
    np.testing.assert_array_equal(data_b, vol[::-1, ::-1, 1:3])  # written back in the file's own order
    np.testing.assert_allclose(aff_b[:3, :3], (affine @ flip)[:3, :3])


def test_resolve_input_names_the_key_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="input: no such file.*missing.nii.gz"):
        resolve_input(str(tmp_path / "missing.nii.gz"))
    with pytest.raises(FileNotFoundError, match="unknown sample 'sample:nope'; known samples: .*sample:head_ct"):
        resolve_input("sample:nope", samples=sample_table)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell what .*x.txt.* is: its content is none of NIfTI"):
        resolve_input(str(tmp_path / "x.txt"))


def test_input_kinds_are_recognised_by_content_not_by_name(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    (tmp_path / "renamed.data").write_bytes((tmp_path / "a.nii.gz").read_bytes())
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "plain.nii"))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "k.bin", "w") as f:
        f["kspace"] = np.zeros((1, 4, 4), np.complex64)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["image"] = np.zeros((4, 4))
    np.save(tmp_path / "arr.npy", np.zeros(3))
    kinds = {p: resolve_input(str(tmp_path / p))[0] for p in ("a.nii.gz", "renamed.data", "plain.nii", "k.bin",
                                                               "other.h5", "arr.npy")}
    assert kinds == {"a.nii.gz": "nifti", "renamed.data": "nifti", "plain.nii": "nifti", "k.bin": "hdf5",
                     "other.h5": "hdf5", "arr.npy": "npy"}
    assert resolve_input("sample:head_ct", samples=sample_table)[0] == "dicom"
    from pydicom.data import get_testdata_file

    assert resolve_input(get_testdata_file("CT_small.dcm", download=False))[0] == "dicom"  # TIFF header in its preamble
    # the MRI adapter reads HDF5 only with a kspace dataset (the fastMRI layout), whatever the name says
    MRIAdapter().check_input(str(tmp_path / "k.bin"))
    with pytest.raises(ValueError, match="other.h5.*HDF5 file without a 'kspace' dataset"):
        MRIAdapter().check_input(str(tmp_path / "other.h5"))
    with pytest.raises(ValueError, match="the ct modality cannot read hdf5 input"):
        CTAdapter().check_input(str(tmp_path / "k.bin"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="fifo.* is not a regular file or directory"):
        resolve_input(str(tmp_path / "fifo"))


# ---------------------------------------------------------------------------------------------
# CT
# ---------------------------------------------------------------------------------------------


def test_ct_problem_is_linear_in_the_prior_image_with_the_offset_removed():
    ad = CTAdapter(n_views=20, image_size=64, i0=None, sigma=0.0, hu_window=(-1000.0, 1000.0))
    problem, ctx = ad.load("sample:head_ct")
    assert problem.image_shape == ad.image_shape("sample:head_ct") == (1, 64, 64)
    ref = problem.reference
    assert float(ref.min()) == pytest.approx(-1.0) and float(ref.max()) > 0.5  # air .. bone
    assert float(data_consistency(problem, ref)) < 1e-6  # noiseless: the reference fits exactly
    # physical line integrals: p = P mu with mu = mu_water (1 + HU / 1000)
    proj = ctx.extra["projector"]
    hu = ad.to_physical(ref, ctx)
    mu = ad.mu_water * (1 + hu / 1000)
    p = problem.y + problem.metadata["measurement_offset"]
    assert torch.allclose(p, proj(mu), rtol=1e-4, atol=1e-4)
    assert ctx.meta["pixel_size_mm"] == pytest.approx(0.478516 * 8, rel=1e-5)


def test_ct_low_dose_counts_and_fbp_baseline():
    ad = CTAdapter(n_views=90, image_size=64, i0=2e4, fbp_filter="hann")
    problem, ctx = ad.load("sample:head_ct")
    assert isinstance(problem.noise, TransmissionPoisson)
    counts = problem.y
    assert torch.all(counts == counts.round()) and float(counts.max()) <= 2e4 * 1.1
    # the post-log WLS view equals the noiseless P(alpha x) up to Poisson noise ~ 1/sqrt(counts)
    y_eff, w = problem.noise.wls(counts)
    clean = problem.operator(problem.reference)
    z = (y_eff - clean) * w.sqrt()
    assert abs(float(z.mean())) < 0.1 and 0.8 < float(z.std()) < 1.2
    fbp = ad.baseline(problem, ctx)
    assert fbp.shape == problem.reference.shape
    fov = ctx.extra["projector"].fov_mask()
    err = (fbp - problem.reference)[0, 0][fov]
    assert float(err.abs().mean()) < 0.1  # FBP lands in the prior's domain (HU window units)


def test_ct_fan_beam_and_limited_angle_settings():
    ad = CTAdapter(geometry="fan", n_views=24, image_size=32, i0=None, sigma=0.01, angular_range=200)
    assert ad.angles()[-1] < math.radians(200)
    problem, ctx = ad.load("sample:head_ct")
    assert ctx.meta["geometry"] == "fan" and problem.y.shape[-2] == 24
    with pytest.raises(ValueError, match="angular_range"):
        CTAdapter(angular_range=400)
    legacy = trained_reader({"reader": "SliceReader", "reader_args": {"intensity": "hu_window",
                                                                      "window": [-1024, 3071]}})
    assert legacy.modality == "ct" and legacy.reader == "slices"
    assert CTAdapter().check_trained_domain(legacy) is None  # the default window is the shipped prior's
    msg = CTAdapter(hu_window=(-1000, 1000)).check_trained_domain(legacy)
    assert "modality.hu_window=[-1000.0, 1000.0]" in msg and "set hu_window to [-1024.0, 3071.0]" in msg
    new = trained_reader({"modality": "ct", "reader": {"name": "slices", "window": [-500, 500], "clip": True}})
    assert "set hu_window to [-500.0, 500.0]" in CTAdapter().check_trained_domain(new)
    mri = trained_reader({"modality": "mri", "reader": {"name": "slices", "percentiles": [0.5, 99.5]}})
    assert "trained on mri data" in CTAdapter().check_trained_domain(mri)


# ---------------------------------------------------------------------------------------------
# MRI
# ---------------------------------------------------------------------------------------------


def test_mri_full_sampling_zero_filled_is_the_reference():
    ad = MRIAdapter(acceleration=1.0, sigma=0.0, image_size=32, num_coils=4)
    problem, ctx = ad.load("sample:mni152")
    assert float(data_consistency(problem, problem.reference)) < 1e-5
    zf = ad.baseline(problem, ctx)
    assert torch.allclose(zf, problem.reference, atol=1e-4)
    phys = ad.to_physical(problem.reference, ctx)  # back in the template's intensity units
    assert 0 <= float(phys.min()) and float(phys.max()) > 100


def test_mri_complex_model_uses_the_sense_operator_directly():
    ad = MRIAdapter(acceleration=4, sigma=0.0, image_size=32, image_model="complex", mask_type="poisson",
                    calib=8)
    problem, ctx = ad.load("sample:mni152")
    assert problem.image_shape == (2, 32, 32) and problem.metadata["measurement_offset"] is None
    assert float(data_consistency(problem, problem.reference)) < 1e-5
    assert ctx.meta["acceleration_actual"] == pytest.approx(4, rel=0.1)


def test_lowres_phase_makes_a_smoothly_phased_object_real(tmp_path):
    from sciprior.modalities.mri import birdcage_maps, fft2c
    from sciprior.modalities.mri.operator import MultiCoilMRI

    h = w = 32
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mag = (xx**2 + yy**2 < 0.6).float() * (1 + 0.3 * xx)
    phase = torch.exp(1j * (0.8 * xx + 0.5 * yy))
    maps = birdcage_maps(4, (h, w))
    k = fft2c(maps * (mag * phase))[None]
    base = MultiCoilMRI(maps, torch.ones(w))
    real = RealToComplex((h, w))
    x = mag[None, None]
    before = float(((base @ real)(x) - k).abs().norm() / k.abs().norm())
    ph = lowres_phase(base, k, (12, 12))
    after_op = MultiCoilMRI(maps * ph, torch.ones(w)) @ real
    after = float((after_op(x) - k).abs().norm() / k.abs().norm())
    assert before > 0.3 and after < 0.1


def test_mri_check_trained_domain_and_settings():
    ad = MRIAdapter()
    assert ad.center_fraction == pytest.approx(0.08)
    assert MRIAdapter(acceleration=8).center_fraction == pytest.approx(0.04)
    def legacy(reader, **args):
        return trained_reader({"reader": reader, "reader_args": args})

    msg = ad.check_trained_domain(legacy("SliceReader", intensity="percentile", percentiles=[1.0, 99.0]))
    assert "modality.percentiles" in msg
    assert "image_model" in ad.check_trained_domain(legacy("FastMRIReader", output="complex"))
    assert ad.check_trained_domain(legacy("SliceReader", intensity="percentile", percentiles=[0.5, 99.5])) is None
    assert "trained on ct data" in ad.check_trained_domain(legacy("SliceReader", intensity="hu_window",
                                                                  window=[-1024, 3071]))
    with pytest.raises(ValueError, match="acceleration"):
        MRIAdapter(acceleration=0.5)
