"""Real MRI sample data: the MNI152 T1 template shipped inside the nilearn wheel (no download)."""

import numpy as np
import pytest
import torch

from sciprior.modalities.mri.samples import MNI152_T1_FILE, load_mni152_t1, mni152_axial_slice, mni152_t1_path


def test_template_is_read_from_the_installed_package():
    path = mni152_t1_path()
    assert path.name == MNI152_T1_FILE and path.is_file()
    assert "nilearn" in path.parts


def test_volume_and_affine():
    vol, aff = load_mni152_t1()
    assert vol.shape == (197, 233, 189) and vol.dtype == np.float32
    assert vol.min() == 0 and vol.max() == 255
    assert np.allclose(np.abs(np.diag(aff)[:3]), 1.0)  # 1 mm isotropic
    origin = np.linalg.solve(aff, [0, 0, 0, 1])[:3]  # MNI (0, 0, 0) lies inside the volume
    assert np.all(origin > 0) and np.all(origin < vol.shape)
    vol[:] = 0  # callers get copies
    assert load_mni152_t1()[0].max() == 255


def test_axial_slice_is_normalised_brain():
    s = mni152_axial_slice(size=128)
    assert s.shape == (128, 128) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) == pytest.approx(1.0)
    brain = (s > 0.1).float().mean()
    assert 0.3 < float(brain) < 0.8  # a real head slice, not empty or a constant
    native = mni152_axial_slice(size=None)
    assert native.shape == (233, 197)
    vol, aff = load_mni152_t1()
    k = int(round(np.linalg.solve(aff, [0, 0, 10.0, 1])[2]))
    expected = vol[:, :, k].T[::-1]
    assert torch.allclose(native, torch.from_numpy(expected / expected.max()).float())
    # anterior is at the top: the brain's first non-empty row is near the top edge
    rows = np.flatnonzero(native.numpy().max(1) > 0.1)
    assert rows[0] < 30


def test_slice_outside_the_template_is_an_error():
    with pytest.raises(ValueError, match="outside the template"):
        mni152_axial_slice(z_mm=500.0)
