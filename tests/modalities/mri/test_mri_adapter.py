"""The MRI adapter: fully sampled and complex-model problems, low-resolution phase, the trained-domain check."""


import pytest
import torch

from sciprior.modalities import trained_reader
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.modalities.mri.coils import lowres_phase
from sciprior.physics.generic import RealToComplex
from sciprior.physics.problem import data_consistency


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
