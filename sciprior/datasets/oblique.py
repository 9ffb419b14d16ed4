"""Oblique re-slicing of 3D volumes: training views that are new real slices, not warped old ones.

A view of slice ``k`` of a volume ``(N, C, H, W)`` (slices along the first axis, as the slice readers
return them) is the plane through the centre of the volume's foreground in slice ``k``, tilted out of
the slice plane by ``pitch`` (about the column axis: rows move through slices, like a nodding head) and
``roll`` (about the row axis), and turned in-plane by ``spin``, resampled trilinearly from the full
resolution volume. Unlike an in-plane warp of the cached 2D slice, each view shows anatomy that no stored
slice contains, at the volume's own sharpness.

Angles are physical (degrees in millimetre space) when the voxel size ``(slice, row, column)`` in mm is
given: a volume with 3 mm slices and 1 mm pixels tilted by 6 degrees is cut on a plane 6 degrees off the
slice plane in the patient, with the output pixels keeping the slices' in-plane size. Without it (or for
isotropic voxels, e.g. the 1 mm MNI152 template) index space and physical space agree. For a volume with a
held-out slab of slices, :func:`limit_tilt` shrinks the tilt of a view so that its plane never reaches the
slab (plus margin) within the foreground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor


@dataclass(frozen=True)
class Foreground:
    """In-plane centre (row, column; voxels) and half-extents (rows, columns; voxels) of a volume's
    foreground: the box of the rows and columns where any slice exceeds the foreground level. The tilt
    pivots about the centre; the box's half-diagonal bounds how far a tilted plane moves through slices
    where there is anatomy."""

    row: float
    col: float
    half_rows: float
    half_cols: float

    def radius_in_slices(self, voxel_size: tuple[float, float, float]) -> float:
        """Half-diagonal of the box in mm divided by the slice spacing (``voxel_size`` = (slice, row, column)
        in mm; all 1 for index space): the radius to give :func:`slice_excursion` and :func:`limit_tilt`."""
        ds, dr, dc = voxel_size
        return math.hypot(self.half_rows * dr, self.half_cols * dc) / ds


def foreground_of(volume: np.ndarray | Tensor, level: float) -> Foreground:
    """:class:`Foreground` of ``volume`` (N, C, H, W): the box of pixels above ``level`` in any slice and
    channel (the whole image if none is)."""
    v = torch.as_tensor(volume)
    mask = (v > level).flatten(0, 1).any(dim=0)  # (H, W)
    h, w = mask.shape[-2:]
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if len(rows) == 0:
        r0, r1, c0, c1 = 0, h - 1, 0, w - 1
    else:
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return Foreground((r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2, (c1 - c0) / 2)


def rotation(pitch: float, roll: float, spin: float) -> Tensor:
    """3 x 3 rotation (float64) acting on (slice, row, column) offsets: ``spin`` about the slice axis first,
    then ``roll`` about the row axis, then ``pitch`` about the column axis (degrees)."""
    p, r, s = (math.radians(a) for a in (pitch, roll, spin))
    about_col = torch.tensor(
        [[math.cos(p), math.sin(p), 0.0], [-math.sin(p), math.cos(p), 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    about_row = torch.tensor(
        [[math.cos(r), 0.0, math.sin(r)], [0.0, 1.0, 0.0], [-math.sin(r), 0.0, math.cos(r)]], dtype=torch.float64
    )
    about_slice = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(s), -math.sin(s)], [0.0, math.sin(s), math.cos(s)]], dtype=torch.float64
    )
    return about_col @ about_row @ about_slice


def slice_excursion(pitch: float, roll: float, radius: float) -> float:
    """Largest distance (slices) between the tilted plane and its pivot slice over the points of the plane that
    lie within ``radius`` voxels of the pivot in-plane (the foreground): ``radius * tan(tilt)``, with ``tilt``
    the angle between the plane's normal and the slice axis (spin does not change it)."""
    cos_tilt = float(rotation(pitch, roll, 0.0)[0, 0])
    return float(radius * math.sqrt(max(0.0, 1.0 - cos_tilt**2)) / cos_tilt)


def limit_tilt(pitch: float, roll: float, radius: float, room: float) -> tuple[float, float]:
    """``(pitch, roll)`` scaled down together so that :func:`slice_excursion` is at most ``room`` slices
    (unchanged if it already is; zero if ``room`` <= 0)."""
    if room <= 0:
        return 0.0, 0.0
    allowed = math.atan(room / radius) if radius > 0 else math.pi / 2
    for _ in range(50):  # the excursion is radius * tan(total tilt); a few shrinks reach atan(room / radius)
        reach = slice_excursion(pitch, roll, radius)
        if reach <= room:
            return pitch, roll
        total = math.atan(reach / radius)
        f = 0.999 * allowed / total
        pitch, roll = pitch * f, roll * f
    return 0.0, 0.0


def oblique_slice(
    volume: Tensor, index: float, pitch: float, roll: float, spin: float, centre: tuple[float, float], pad_value: float,
    voxel_size: tuple[float, float, float] | None = None,
) -> Tensor:
    """The (C, H, W) plane of ``volume`` (N, C, H, W) through ``(index, *centre)`` (slice, row, column;
    voxels), rotated by :func:`rotation`. Output pixel (r, c) samples the volume at
    ``(index, *centre) + M @ (0, r - centre[0], c - centre[1])`` with ``M = D^-1 R D``, ``D = diag(voxel_size)``
    (mm; ``M = R`` without it): the plane is rotated in physical space and its pixels keep the slices' in-plane
    size. Trilinear, with ``pad_value`` outside the volume (voxels beyond the edges weigh in with that value).
    With all angles zero and an integer ``index`` it is slice ``index`` (to the float32 rounding of the
    sampling grid, ~1e-6 relative). The volume is not copied."""
    n, c, h, w = volume.shape
    m = rotation(pitch, roll, spin)
    if voxel_size is not None:
        d = torch.tensor([float(v) for v in voxel_size], dtype=torch.float64)
        if d.numel() != 3 or not bool((d > 0).all()):
            raise ValueError(f"oblique_slice: voxel_size must be 3 positive sizes (slice, row, column) in mm, "
                             f"got {voxel_size}")
        m = m * d[None, :] / d[:, None]  # D^-1 R D
    # sample points in voxels, affine in (r, c): built from the origin and two steps in float64, then cast
    start = torch.tensor([float(index), centre[0], centre[1]], dtype=torch.float64)
    start = start - centre[0] * m[:, 1] - centre[1] * m[:, 2]  # (slice, row, column) of output pixel (0, 0)
    rows = torch.arange(h, dtype=torch.float64)[:, None, None] * m[:, 1] + start  # (H, 1, 3)
    cols = torch.arange(w, dtype=torch.float64)[None, :, None] * m[:, 2]  # (1, W, 3)
    points = rows.to(volume.dtype) + cols.to(volume.dtype)  # (H, W, 3)
    # grid_sample (zeros outside) wants (x, y, z) = (column, row, slice) in [-1, 1] (align_corners=True)
    size = torch.tensor([n, h, w], dtype=volume.dtype)
    grid = (2.0 * points / (size - 1).clamp(min=1) - 1.0).flip(-1)[None, None]  # (1, 1, H, W, 3)
    out = F.grid_sample(volume.permute(1, 0, 2, 3)[None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0, :, 0]
    if pad_value:  # the interpolation weight that fell outside the volume takes pad_value (separable per axis)
        inside = torch.minimum(points + 1.0, size - points).clamp(0.0, 1.0).prod(dim=-1)  # (H, W)
        out = out + pad_value * (1.0 - inside)
    return out


def random_tilt(rng: np.random.Generator, tilt: float, spin: float) -> tuple[float, float, float]:
    """(pitch, roll, spin) drawn uniformly from [-tilt, tilt]^2 x [-spin, spin] (always 3 draws)."""
    u = rng.uniform(-1.0, 1.0, size=3)
    return float(tilt * u[0]), float(tilt * u[1]), float(spin * u[2])
