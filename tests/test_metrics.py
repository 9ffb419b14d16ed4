"""Metrics per item, checked against scikit-image on real-valued arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from sciprior.metrics import nmse, psnr, ssim


def _pair(shape, seed=0, scale=3.0, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    ref = scale * torch.rand(shape, generator=g, dtype=torch.float64) - 1.0  # negative values too
    x = ref + noise * torch.randn(shape, generator=g, dtype=torch.float64)
    return x, ref


def test_psnr_matches_skimage_per_item():
    x, ref = _pair((3, 2, 16, 12))
    got = psnr(x, ref)
    assert got.shape == (3,) and got.dtype == torch.float64
    for b in range(3):
        r, t = ref[b].numpy(), x[b].numpy()
        want = peak_signal_noise_ratio(r, t, data_range=r.max() - r.min())
        assert abs(float(got[b]) - want) < 1e-10
    # explicit data range, scalar and per item
    assert torch.allclose(psnr(x, ref, data_range=2.0),
                          torch.tensor([peak_signal_noise_ratio(ref[b].numpy(), x[b].numpy(), data_range=2.0)
                                        for b in range(3)], dtype=torch.float64), rtol=0, atol=1e-10)
    ranges = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    per_item = psnr(x, ref, data_range=ranges)
    ones = psnr(x, ref, data_range=1.0)
    torch.testing.assert_close(per_item - ones, 20 * torch.log10(ranges), rtol=0, atol=1e-10)


def test_psnr_float32_and_perfect():
    x, ref = _pair((2, 1, 8, 8))
    got32 = psnr(x.float(), ref.float())
    assert got32.dtype == torch.float64
    assert torch.allclose(got32, psnr(x, ref), atol=1e-4)
    assert torch.isinf(psnr(ref, ref)).all()


def test_nmse_matches_skimage():
    x, ref = _pair((4, 1, 10, 9), seed=1)
    got = nmse(x, ref)
    for b in range(4):
        want = normalized_root_mse(ref[b].numpy(), x[b].numpy(), normalization="euclidean") ** 2
        assert abs(float(got[b]) - want) < 1e-12 * max(1.0, want)


def test_complex_inputs_use_magnitude_of_the_error():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.complex128)
    x = ref + 0.1 * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.complex128)
    e2 = (x - ref).abs() ** 2
    torch.testing.assert_close(nmse(x, ref), e2.sum((1, 2, 3)) / (ref.abs() ** 2).sum((1, 2, 3)))
    torch.testing.assert_close(psnr(x, ref, data_range=1.0), -10 * torch.log10(e2.mean((1, 2, 3))))
    with pytest.raises(TypeError, match="magnitudes"):
        ssim(x, ref)


def test_ssim_matches_skimage_2d_multichannel_and_3d():
    x, ref = _pair((2, 1, 24, 20), seed=3)
    got = ssim(x, ref)
    assert got.shape == (2,) and got.dtype == torch.float64
    for b in range(2):
        r, t = ref[b, 0].numpy(), x[b, 0].numpy()
        assert abs(float(got[b]) - structural_similarity(r, t, data_range=r.max() - r.min())) < 1e-12
    # channels are scored separately with the item's range and averaged (= skimage's channel_axis mean)
    x, ref = _pair((2, 3, 16, 16), seed=4)
    got = ssim(x, ref)
    for b in range(2):
        r, t = ref[b].numpy(), x[b].numpy()
        want = structural_similarity(r, t, data_range=r.max() - r.min(), channel_axis=0)
        assert abs(float(got[b]) - want) < 1e-12
    # volumes: mean over the 2D slices along depth
    x, ref = _pair((1, 1, 4, 12, 12), seed=5)
    got = ssim(x, ref, data_range=3.0)
    want = np.mean([structural_similarity(ref[0, 0, k].numpy(), x[0, 0, k].numpy(), data_range=3.0)
                    for k in range(4)])
    assert abs(float(got[0]) - want) < 1e-12
    # the Gaussian-window variant of Wang et al. 2004
    x, ref = _pair((1, 1, 24, 24), seed=6)
    want = structural_similarity(ref[0, 0].numpy(), x[0, 0].numpy(), data_range=2.5, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)
    assert abs(float(ssim(x, ref, data_range=2.5, gaussian_weights=True)[0]) - want) < 1e-12


def test_ssim_orders_reconstructions():
    x_good, ref = _pair((1, 1, 32, 32), seed=7, noise=0.05)
    x_bad = ref + 4 * (x_good - ref)
    assert float(ssim(ref, ref)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim(x_good, ref)[0]) > float(ssim(x_bad, ref)[0])
    gain = float(psnr(x_good, ref)[0] - psnr(x_bad, ref)[0])
    assert gain == pytest.approx(20 * np.log10(4), abs=1e-9)


def test_bad_inputs():
    x, ref = _pair((2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 8, 8\) but ref has shape \(2, 1, 8, 7\)"):
        psnr(x, ref[..., :7])
    with pytest.raises(ValueError, match="constant"):
        psnr(x, torch.ones_like(ref))
    with pytest.raises(ValueError, match="data_range must be > 0"):
        psnr(x, ref, data_range=0.0)
    with pytest.raises(ValueError, match="one entry per item"):
        psnr(x, ref, data_range=torch.ones(3))
    with pytest.raises(ValueError, match="all zero"):
        nmse(x, torch.zeros_like(ref))
    with pytest.raises(ValueError, match="smaller than the 7x7 window"):
        ssim(x[..., :5, :5], ref[..., :5, :5])
    with pytest.raises(ValueError, match=r"x has shape"):
        ssim(x, ref[:1])
