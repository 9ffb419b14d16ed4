"""The CT adapter: the problem it builds (linear in the prior image, offsets, low-dose counts, FBP baseline),
fan-beam and limited-angle settings, and the trained-domain check."""

import math

import pytest
import torch

from sciprior.modalities import trained_reader
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.physics.noise import TransmissionPoisson
from sciprior.physics.problem import data_consistency


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
