"""Oblique re-slicing: exact geometry on linear volumes, the held-out guard, padding outside the volume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sciprior.datasets.oblique import foreground_of, limit_tilt, oblique_slice, rotation, slice_excursion


def _ramp(n: int, h: int, w: int, axis: int) -> torch.Tensor:
    """(n, 1, h, w) volume whose value is the voxel's index along ``axis`` (0 slice, 1 row, 2 column)."""
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in (n, h, w)), indexing="ij")
    return grids[axis][:, None].contiguous()


def test_zero_angles_give_the_stored_slice():
    vol = torch.randn(9, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    out = oblique_slice(vol, 4, 0.0, 0.0, 0.0, (5.5, 4.5), pad_value=-1.0)
    assert out.shape == (2, 12, 10)
    torch.testing.assert_close(out, vol[4], rtol=0, atol=1e-5)  # float32 grid coordinates


@pytest.mark.parametrize("pitch, roll", [(7.0, 0.0), (0.0, -5.0), (4.0, 3.0)])
def test_tilted_plane_of_a_slice_ramp_is_the_plane_equation(pitch: float, roll: float):
    # value = slice index, so a view's pixel value is the slice coordinate of the point it samples:
    # index + R[0, 1] (r - r0) + R[0, 2] (c - c0) (trilinear interpolation is exact on linear data)
    vol = _ramp(41, 16, 14, axis=0)
    centre = (7.5, 6.5)
    out = oblique_slice(vol, 20, pitch, roll, 0.0, centre, pad_value=0.0)[0]
    m = rotation(pitch, roll, 0.0)
    r = torch.arange(16, dtype=torch.float64)[:, None] - centre[0]
    c = torch.arange(14, dtype=torch.float64)[None, :] - centre[1]
    expect = 20 + float(m[0, 1]) * r + float(m[0, 2]) * c
    rows = centre[0] + float(m[1, 1]) * r + float(m[1, 2]) * c  # where each pixel samples in-plane
    cols = centre[1] + float(m[2, 1]) * r + float(m[2, 2]) * c
    inside = (rows >= 0) & (rows <= 15) & (cols >= 0) & (cols <= 13)
    assert inside.float().mean() > 0.95
    torch.testing.assert_close(out.double()[inside], expect[inside], rtol=0, atol=1e-4)
    if not roll:  # a pure pitch moves down the rows through sin(pitch) slices per row
        assert float(m[0, 1]) == pytest.approx(math.sin(math.radians(pitch)))
    assert float(out[inside].max() - out[inside].min()) == pytest.approx(
        float(expect[inside].max() - expect[inside].min()), abs=1e-3
    )


def test_spin_rotates_within_the_slice():
    vol = _ramp(3, 21, 21, axis=2)  # value = column index
    out = oblique_slice(vol, 1, 0.0, 0.0, 30.0, (10.0, 10.0), pad_value=0.0)[0]
    s = math.radians(30.0)
    r = torch.arange(21, dtype=torch.float64)[:, None] - 10
    c = torch.arange(21, dtype=torch.float64)[None, :] - 10
    expect = 10 + math.sin(s) * r + math.cos(s) * c
    inside = (expect >= 0) & (expect <= 20) & ((math.cos(s) * r - math.sin(s) * c).abs() <= 10)
    torch.testing.assert_close(out.double()[inside], expect[inside], rtol=0, atol=1e-4)
    # tilting does not happen: a slice ramp stays flat under spin
    flat = oblique_slice(_ramp(3, 21, 21, axis=0), 1, 0.0, 0.0, 30.0, (10.0, 10.0), pad_value=0.0)[0]
    assert torch.allclose(flat[6:15, 6:15], torch.ones(9, 9))


def test_outside_the_volume_is_pad_value():
    vol = torch.zeros(5, 1, 8, 8)
    out = oblique_slice(vol, 2, 0.0, 0.0, 0.0, (3.5, 30.0), pad_value=-1.0)  # pivot far right of the image
    assert out.shape == (1, 8, 8)
    # pixel c samples column 30 + (c - 30) = c: inside; a slice beyond the volume is all padding
    torch.testing.assert_close(out, torch.zeros(1, 8, 8))
    beyond = oblique_slice(vol, 12, 0.0, 0.0, 0.0, (3.5, 3.5), pad_value=-1.0)
    torch.testing.assert_close(beyond, torch.full((1, 8, 8), -1.0))
    # half a slice beyond the first: half the weight is padding
    half = oblique_slice(vol, -0.5, 0.0, 0.0, 0.0, (3.5, 3.5), pad_value=-1.0)
    torch.testing.assert_close(half, torch.full((1, 8, 8), -0.5))


def test_padding_is_trilinear_with_pad_value_outside():
    # the same as sampling the volume embedded in a larger one filled with pad_value
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(6, 2, 10, 9, generator=g)
    big = torch.full((6 + 8, 2, 10 + 8, 9 + 8), -1.0)
    big[4:-4, :, 4:-4, 4:-4] = vol
    out = oblique_slice(vol, 2.5, 20.0, -15.0, 30.0, (4.5, 4.0), pad_value=-1.0)
    ref = oblique_slice(big, 6.5, 20.0, -15.0, 30.0, (8.5, 8.0), pad_value=0.0)[:, 4:-4, 4:-4]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    assert (out == -1.0).any() and (out > -1.0).any()  # the tilt reaches past the volume in places


def test_limit_tilt_keeps_the_plane_within_room():
    rng = np.random.default_rng(0)
    for _ in range(200):
        pitch, roll = rng.uniform(-30, 30, size=2)
        radius, room = rng.uniform(5, 150), rng.uniform(-2, 40)
        p, r = limit_tilt(float(pitch), float(roll), float(radius), float(room))
        assert slice_excursion(p, r, radius) <= max(room, 0.0) + 1e-9
        if slice_excursion(float(pitch), float(roll), radius) <= room:
            assert (p, r) == (pitch, roll)  # untouched when it fits
        elif room > 0:  # shrunk together, not to zero: the direction of the tilt is kept
            assert p * pitch >= 0 and r * roll >= 0
            assert slice_excursion(p, r, radius) > 0.9 * room


def test_foreground_box_and_radius():
    vol = torch.full((4, 1, 20, 30), -1.0)
    vol[1, 0, 2:7, 10:21] = 0.5  # rows 2..6, columns 10..20
    fg = foreground_of(vol, -0.9)
    assert (fg.row, fg.col) == (4.0, 15.0)
    assert fg.radius_in_slices((1.0, 1.0, 1.0)) == pytest.approx(math.hypot(2, 5))
    empty = foreground_of(torch.full((2, 1, 5, 7), -1.0), -0.9)
    assert (empty.row, empty.col) == (2.0, 3.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_physical_angles_on_anisotropic_voxels(axis: int):
    # voxels of 3 mm slices and 0.8 x 1.2 mm pixels; the volume's value is the physical coordinate (mm) along
    # ``axis``. The plane is rotated in mm space: output pixel (r, c) lies at centre + R @ (0, (r - r0) dr,
    # (c - c0) dc) mm, so its value is that point's coordinate along ``axis`` (trilinear is exact on linear data)
    size = (3.0, 0.8, 1.2)
    n, h, w = 41, 24, 20
    vol = _ramp(n, h, w, axis) * size[axis]
    centre, index, angles = (11.5, 9.5), 20, (9.0, -6.0, 25.0)
    out = oblique_slice(vol, index, *angles, centre, pad_value=0.0, voxel_size=size)[0].double()
    m = rotation(*angles)
    d = torch.tensor(size, dtype=torch.float64)
    r = torch.arange(h, dtype=torch.float64)[:, None] - centre[0]
    c = torch.arange(w, dtype=torch.float64)[None, :] - centre[1]
    mm = [float(index * size[0]), centre[0] * size[1], centre[1] * size[2]]  # the pivot in mm
    point = [mm[a] + float(m[a, 1]) * r * size[1] + float(m[a, 2]) * c * size[2] for a in range(3)]  # mm
    voxel = [p / float(d[a]) for a, p in enumerate(point)]
    inside = (voxel[0] >= 0) & (voxel[0] <= n - 1) & (voxel[1] >= 0) & (voxel[1] <= h - 1) & \
        (voxel[2] >= 0) & (voxel[2] <= w - 1)
    assert int(inside.sum()) > 0.8 * h * w
    torch.testing.assert_close(out[inside], point[axis][inside], rtol=0, atol=2e-4)


def test_voxel_size_isotropic_is_index_space_and_bad_sizes_fail():
    vol = torch.randn(15, 1, 12, 10, generator=torch.Generator().manual_seed(2))
    ref = oblique_slice(vol, 7, 5.0, -4.0, 12.0, (5.5, 4.5), pad_value=-1.0)
    for size in (None, (1.0, 1.0, 1.0), (2.5, 2.5, 2.5)):  # bitwise: only elementwise IEEE ops see the sizes
        torch.testing.assert_close(oblique_slice(vol, 7, 5.0, -4.0, 12.0, (5.5, 4.5), -1.0, size), ref, rtol=0, atol=0)
    # thicker slices: the same physical tilt crosses fewer slices
    ramp = _ramp(15, 12, 10, axis=0)
    thin = oblique_slice(ramp, 7, 8.0, 0.0, 0.0, (5.5, 4.5), 0.0, (1.0, 1.0, 1.0))[0]
    thick = oblique_slice(ramp, 7, 8.0, 0.0, 0.0, (5.5, 4.5), 0.0, (3.0, 1.0, 1.0))[0]
    torch.testing.assert_close(thick - 7, (thin - 7) / 3, rtol=0, atol=1e-5)
    for bad in ((1.0, 0.0, 1.0), (1.0, 1.0), (-2.0, 1.0, 1.0)):
        with pytest.raises(ValueError, match="voxel_size"):
            oblique_slice(vol, 7, 5.0, 0.0, 0.0, (5.5, 4.5), -1.0, bad)


def test_radius_in_slices_uses_millimetres():
    fg = foreground_of(torch.full((3, 1, 10, 20), -1.0).index_fill_(2, torch.arange(2, 8), 1.0), 0.0)  # rows 2..7
    assert (fg.half_rows, fg.half_cols) == (2.5, 9.5)
    assert fg.radius_in_slices((1.0, 1.0, 1.0)) == pytest.approx(math.hypot(2.5, 9.5))
    assert fg.radius_in_slices((3.0, 0.5, 2.0)) == pytest.approx(math.hypot(2.5 * 0.5, 9.5 * 2.0) / 3.0)
