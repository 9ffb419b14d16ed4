"""The pieces of the native-resolution k-space path: the per-image intensity scale, the readout crop, fastMRI's
metrics, the per-slice training reader and the shipped variant priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sciprior.app.config import ConfigError
from sciprior.app.validate import resolve_checkpoint
from sciprior.modalities.mri.data import MRSlices
from sciprior.modalities.mri.evaluate import fastmri_metrics
from sciprior.modalities.mri.fourier import crop_readout, fft2c
from sciprior.modalities.mri.intensity import foreground_scale
from sciprior.modalities.mri.samples import mni152_t1_path


@pytest.fixture(scope="module")
def mni_plane() -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(mni152_t1_path())).dataobj, dtype=np.float64)[:, :, 82].T[::-1].copy()


def test_foreground_scale_ignores_the_field_of_view_and_scales_with_the_image(mni_plane):
    s = foreground_scale(mni_plane)
    wide = np.pad(mni_plane, ((100, 100), (150, 150)))  # the same head in a 433 x 497 field of view
    assert foreground_scale(wide) == pytest.approx(s, rel=1e-12)
    # the plain 99th percentile moves with the share of background (why the foreground is used)
    assert abs(np.percentile(wide, 99) / np.percentile(mni_plane, 99) - 1) > 0.01
    assert foreground_scale(3.7e-6 * mni_plane) == pytest.approx(3.7e-6 * s, rel=1e-12)
    assert foreground_scale(np.zeros((8, 8))) == 0.0
    assert foreground_scale(torch.from_numpy(mni_plane)) == pytest.approx(s, rel=1e-12)


def test_crop_readout_is_the_kspace_of_the_cropped_image():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 64, 20, dtype=torch.complex128)
    img[:, 16:48] = torch.randn(3, 32, 20, generator=g, dtype=torch.complex128)  # object in the central rows
    k = crop_readout(fft2c(img), 32)
    assert k.shape == (3, 32, 20)
    assert torch.allclose(k, fft2c(img[:, 16:48]), atol=1e-12)
    noise = torch.randn(4, 256, 64, generator=g, dtype=torch.complex128)  # white noise keeps its level
    assert float(crop_readout(noise, 128).abs().square().mean()) == pytest.approx(float(noise.abs().square().mean()),
                                                                         rel=0.03)
    with pytest.raises(ValueError, match="cannot crop 32 readout rows to 40"):
        crop_readout(k, 40)


def test_fastmri_metrics_follow_fastmri_evaluate():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 40, 36)) * 5
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    m = fastmri_metrics(gt, pred)
    assert m["nmse"] == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2))
    assert m["psnr"] == pytest.approx(10 * np.log10(gt.max() ** 2 / np.mean((gt - pred) ** 2)))
    # SSIM per slice with the data range of the whole volume (not of the slice), averaged over slices
    want = np.mean([structural_similarity(g, p, data_range=gt.max()) for g, p in zip(gt, pred)])
    assert m["ssim"] == pytest.approx(want)
    assert fastmri_metrics(gt, gt)["nmse"] == 0.0
    with pytest.raises(ValueError, match=r"target \(3, 40, 36\) and prediction \(3, 40, 35\)"):
        fastmri_metrics(gt, pred[..., :35])


def test_per_slice_reader_maps_each_slice_like_measured_kspace():
    mag = MRSlices(scale="slice", pixel_spacing=1.0)
    x, _ = mag.read(str(mni152_t1_path()))
    z, _ = MRSlices(scale="slice", pixel_spacing=1.0, output="complex").read(str(mni152_t1_path()))
    assert x.shape[1] == 1 and z.shape[1] == 2 and x.shape[0] == z.shape[0] == 189
    u = (x[82, 0] + 1) / 2  # |m| / s
    assert u.min() == 0.0 and foreground_scale(u) == pytest.approx(1.0, rel=1e-5)
    # complex: the same magnitude, a smooth synthetic phase
    assert np.allclose(np.hypot(z[82, 0], z[82, 1]), u, atol=1e-5)
    with pytest.raises(ValueError, match="output: complex needs scale: slice"):
        MRSlices(output="complex")


def test_builtin_variant_priors_resolve_and_unknown_ones_name_the_choices():
    assert (resolve_checkpoint("builtin:mri/native") / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match=r"unknown builtin prior .builtin:mri/huge.; choose from .*mri/native"):
        resolve_checkpoint("builtin:mri/huge")
