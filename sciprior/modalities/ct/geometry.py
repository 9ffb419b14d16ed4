"""2D CT acquisition geometries: parallel beam and fan beam (equiangular or flat detector).

Coordinates (physical, mm). The image ``(H, W)`` is centred on the rotation axis; column ``j`` sits at
``x = (j - (W - 1) / 2) * pixel_size`` and row ``i`` at ``y = ((H - 1) / 2 - i) * pixel_size``: ``x``
points right and ``y`` points up (towards row 0), as the image is displayed.

Parallel beam, view angle ``theta`` (radians): the rays run along ``(-sin theta, cos theta)``; detector
element ``k`` measures the line ``x cos theta + y sin theta = s_k`` with
``s_k = (k - (n_det - 1) / 2 + det_offset) * det_spacing``. At ``theta = 0`` the rays are vertical and
the sinogram row is the column sum of the image.

Fan beam, source angle ``beta``: the source sits at ``R (sin beta, -cos beta)`` (``R`` =
``source_to_center``); the central ray runs through the rotation axis along ``(-sin beta, cos beta)``
and the detector axis is ``(cos beta, sin beta)``, at ``D`` = ``source_to_detector`` from the source.

- ``detector="equiangular"`` (curved, centred on the source; third-generation clinical scanners):
  element ``k`` is at fan angle ``gamma_k = (k - (n_det - 1) / 2 + det_offset) * det_spacing / D``
  (``det_spacing`` is the arc length between elements on the detector, mm).
- ``detector="flat"``: element ``k`` is at ``u_k = (k - (n_det - 1) / 2 + det_offset) * det_spacing``
  along the flat detector, fan angle ``gamma_k = atan(u_k / D)``.

The fan ray ``(beta, gamma)`` is the parallel ray ``theta = beta - gamma``, ``s = R sin gamma``.

Symmetry: on a square grid centred on the axis, rotating the image by multiples of 90 degrees and
mirroring it are pixel permutations that map the ray set of one view onto the ray set of another
(with the detector reversed for mirrors). :func:`reduce_views` maps every view to a canonical view
with angle in ``[0, pi/4]`` and the image transform that relates them, so the projector stores the
system matrix for the canonical views only (about 4x less memory and time for uniform angle sets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------
# Angle sets (full, sparse-view, limited-angle)
# --------------------------------------------------------------------------------------------


def uniform_angles(n_views: int, span: float = math.pi, start: float = 0.0) -> Tensor:
    """``n_views`` angles (radians, float64) equally spaced over ``[start, start + span)``.

    Full scans: ``span=pi`` for parallel beam, ``span=2*pi`` for fan beam.
    """
    if n_views < 1:
        raise ValueError(f"uniform_angles: n_views must be >= 1, got {n_views}")
    if span <= 0:
        raise ValueError(f"uniform_angles: span must be > 0, got {span}")
    return start + span * torch.arange(n_views, dtype=torch.float64) / n_views


def sparse_view_angles(n_views: int, span: float = math.pi) -> Tensor:
    """Sparse-view scan: only ``n_views`` (e.g. 30 or 60) angles spread over the full ``span``."""
    return uniform_angles(n_views, span)


def limited_angles(n_views: int, coverage: float, full_span: float = math.pi) -> Tensor:
    """Limited-angle scan: ``n_views`` angles equally spaced over ``[0, coverage)`` (radians).

    E.g. ``coverage=2*pi/3`` out of a parallel full scan ``full_span=pi`` (``2*pi`` for fan beam).
    """
    if not 0 < coverage <= full_span:
        raise ValueError(f"limited_angles: coverage must be in (0, {full_span:g}], got {coverage}")
    return uniform_angles(n_views, coverage)


def as_angles(angles: Tensor | Sequence[float] | np.ndarray, who: str) -> np.ndarray:
    """Validate angles (radians) and return a float64 numpy vector."""
    a = np.asarray(angles.detach().cpu().numpy() if isinstance(angles, Tensor) else angles,
                   dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{who}: no view angles given")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{who}: view angles contain NaN/Inf")
    return a


# --------------------------------------------------------------------------------------------
# Rays
# --------------------------------------------------------------------------------------------


def detector_positions(n_det: int, det_spacing: float, det_offset: float = 0.0) -> np.ndarray:
    """Detector coordinates ``(k - (n_det - 1)/2 + det_offset) * det_spacing`` (float64)."""
    return (np.arange(n_det, dtype=np.float64) - (n_det - 1) / 2 + det_offset) * det_spacing


def parallel_rays(angles: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins (a point on each line) and unit directions, each ``(n_views, n_det, 2)`` as (x, y)."""
    c, si = np.cos(angles)[:, None], np.sin(angles)[:, None]
    origin = np.stack([s[None] * c, s[None] * si], axis=-1)
    direction = np.stack([np.broadcast_to(-si, origin.shape[:2]), np.broadcast_to(c, origin.shape[:2])], -1)
    return origin, direction


def fan_gammas(detector: str, n_det: int, det_spacing: float, det_offset: float,
               source_to_detector: float) -> np.ndarray:
    """Fan angle of every detector element (radians)."""
    u = detector_positions(n_det, det_spacing, det_offset)
    if detector == "equiangular":
        return u / source_to_detector
    if detector == "flat":
        return np.arctan2(u, source_to_detector)
    raise ValueError(f"fan beam: detector must be 'equiangular' or 'flat', got {detector!r}")


def fan_rays(angles: np.ndarray, gammas: np.ndarray,
             source_to_center: float) -> tuple[np.ndarray, np.ndarray]:
    """Fan-beam rays: origins at the source, unit directions; each ``(n_views, n_det, 2)``."""
    b = angles[:, None]
    src = np.stack([source_to_center * np.sin(b), -source_to_center * np.cos(b)], -1)
    origin = np.broadcast_to(src, (angles.size, gammas.size, 2)).copy()
    theta = b - gammas[None, :]
    direction = np.stack([-np.sin(theta), np.cos(theta)], -1)
    return origin, direction


def ray_to_parallel(origin: np.ndarray | Tensor, direction: np.ndarray | Tensor):
    """Parallel coordinates ``(theta, s)`` of lines given by a point and a direction, ``(..., 2)`` each."""
    lib = torch if isinstance(origin, Tensor) else np
    wx, wy = direction[..., 1], -direction[..., 0]
    theta = lib.arctan2(wy, wx)
    s = origin[..., 0] * wx + origin[..., 1] * wy
    return theta, s


# --------------------------------------------------------------------------------------------
# Symmetry reduction
# --------------------------------------------------------------------------------------------

# The dihedral group of the square as integer matrices acting on (x, y).
_D4 = [np.array(m, dtype=np.float64) for m in (
    [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],   # rotations 0,90,180,270
    [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],   # mirrors
)]


@dataclass
class ViewReduction:
    """How each view maps onto a canonical view: ``A_v x = F_v A_{canon[v]} (T_{group[v]} x)``.

    Attributes:
        canon_angles: angles (radians) of the canonical views actually computed, ``(n_canon,)``.
        matrices: the 2x2 integer matrices ``M_g`` of the transforms used, ``(G, 2, 2)``.
        group: index into ``matrices`` per view, ``(n_views,)``.
        canon: index into ``canon_angles`` per view, ``(n_views,)``.
        flip: whether the detector order is reversed per view, ``(n_views,)``.
    """

    canon_angles: np.ndarray
    matrices: np.ndarray
    group: np.ndarray
    canon: np.ndarray
    flip: np.ndarray


def _wrap(a: np.ndarray, period: float) -> np.ndarray:
    w = np.mod(a, period)
    w[np.isclose(w, period, rtol=0, atol=1e-12)] = 0.0
    return w


def reduce_views(angles: np.ndarray, kind: str, square: bool, symmetric_detector: bool,
                 use_symmetry: bool = True) -> ViewReduction:
    """Map each view to a canonical view under the grid symmetries (see module docstring).

    ``kind``: ``"parallel"`` (angle = normal angle theta, period pi, mirror of the normal = detector
    flip) or ``"fan"`` (angle = source angle beta, period 2 pi, mirrors flip the detector).
    Only transforms that keep the pixel grid (axis swaps need ``square``) and, where they reverse the
    detector, a symmetric detector (``det_offset == 0``) are used. The canonical angle is the smallest
    one reachable, so views of a uniform scan share canonical views.
    """
    mats = _D4 if square else [_D4[0], _D4[2], _D4[4], _D4[5]]
    if not use_symmetry:
        mats = [_D4[0]]
    n = angles.size
    best = np.full(n, np.inf)
    best_g = np.zeros(n, dtype=np.int64)
    best_flip = np.zeros(n, dtype=bool)
    if kind == "parallel":
        period = math.pi
        vec = np.stack([np.cos(angles), np.sin(angles)], -1)          # detector normal omega
    elif kind == "fan":
        period = 2 * math.pi
        vec = np.stack([np.sin(angles), -np.cos(angles)], -1)         # source direction
    else:
        raise ValueError(f"reduce_views: unknown geometry kind {kind!r}")
    for g, m in enumerate(mats):
        v = vec @ m.T
        if kind == "parallel":
            ang = np.arctan2(v[:, 1], v[:, 0])
            flip = (ang < -1e-12) | (ang >= math.pi - 1e-12)          # M omega = -omega_theta'
            ang = _wrap(ang, period)
        else:
            ang = _wrap(np.arctan2(v[:, 0], -v[:, 1]), period)
            flip = np.full(n, np.linalg.det(m) < 0)
        if not symmetric_detector:
            ang = np.where(flip, np.inf, ang)
        better = ang < best - 1e-12
        best = np.where(better, ang, best)
        best_g = np.where(better, g, best_g)
        best_flip = np.where(better, flip, best_flip)
    # De-duplicate canonical angles (to 1e-10 rad).
    key = np.round(best / 1e-10).astype(np.int64)
    uniq, canon = np.unique(key, return_inverse=True)
    canon_angles = np.array([best[canon == u][0] for u in range(uniq.size)])
    used = np.unique(best_g)
    remap = {int(g): i for i, g in enumerate(used)}
    return ViewReduction(canon_angles=canon_angles, matrices=np.stack([mats[g] for g in used]),
                         group=np.array([remap[int(g)] for g in best_g], dtype=np.int64),
                         canon=canon.astype(np.int64), flip=best_flip)


def grid_permutation(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Flat pixel permutation ``perm`` with ``(T x).flat = x.flat[perm]``, ``(T f)(r) = f(M^-1 r)``.

    Works in doubled integer coordinates (exact); raises if ``M`` does not map the grid onto itself.
    """
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x2, y2 = 2 * j - (w - 1), (h - 1) - 2 * i                          # doubled coordinates
    minv = np.rint(np.linalg.inv(m)).astype(np.int64)
    sx = minv[0, 0] * x2 + minv[0, 1] * y2
    sy = minv[1, 0] * x2 + minv[1, 1] * y2
    sj, si = (sx + (w - 1)), ((h - 1) - sy)
    if np.any(sj % 2) or np.any(si % 2):
        raise ValueError(f"grid_permutation: transform {m.tolist()} does not keep the {h}x{w} grid")
    sj, si = sj // 2, si // 2
    if sj.min() < 0 or sj.max() >= w or si.min() < 0 or si.max() >= h:
        raise ValueError(f"grid_permutation: transform {m.tolist()} does not keep the {h}x{w} grid")
    return (si * w + sj).reshape(-1)
