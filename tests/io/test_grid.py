"""Volume geometry: affines through slicing, padding and resizing, and slices independent of the file orientation."""


import nibabel as nib
import numpy as np
import pytest
import torch

from sciprior.io.grid import VolumeGrid, cut_stack, stack_to_file_order
from sciprior.io.nifti import read_nifti


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
