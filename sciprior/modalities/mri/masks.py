"""Cartesian k-space sampling masks: fastMRI column masks and variable-density Poisson disc.

Column masks follow fastMRI's ``RandomMaskFunc``, ``EquiSpacedMaskFunc`` and
``EquispacedMaskFractionFunc`` (facebookresearch/fastMRI, ``fastmri/data/subsample.py``; Zbontar et
al. 2018, arXiv:1811.08839), including their random-number draw order on a
``numpy.random.RandomState(seed)``, so the same seed gives the same mask as fastMRI:

- ``num_low = round(num_cols * center_fraction)`` centre columns, starting at
  ``pad = (num_cols - num_low + 1) // 2``;
- ``"random"``: other columns kept independently with probability
  ``(num_cols / acceleration - num_low) / (num_cols - num_low)`` (expected acceleration exact);
- ``"equispaced"``: every ``acceleration``-th column from a random offset in ``[0, acceleration)``;
- ``"equispaced_fraction"``: spacing adjusted for the centre so the acceleration is matched (the
  layout of fastMRI's public multi-coil test data).
The standard settings are ``acceleration=4, center_fraction=0.08`` and ``8, 0.04``.

Masks are 0/1 float tensors, 1D ``(W,)`` over the columns (the last k-space axis, phase encoding)
for column masks and ``(H, W)`` for Poisson disc, centred like the k-space (DC at ``(H//2, W//2)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

COLUMN_MASK_KINDS = ("random", "equispaced", "equispaced_fraction")


def _choose(rng: np.random.RandomState, center_fractions: Sequence[float], accelerations: Sequence[float],
            allow_any_combination: bool) -> tuple[float, float]:
    if allow_any_combination:
        return rng.choice(center_fractions), rng.choice(accelerations)
    choice = rng.randint(len(center_fractions))
    return center_fractions[choice], accelerations[choice]


def column_mask(kind: str, num_cols: int, accelerations: float | Sequence[float] = 4,
                center_fractions: float | Sequence[float] = 0.08, seed: int | Sequence[int] = 0,
                offset: int | None = None, allow_any_combination: bool = False) -> tuple[Tensor, int]:
    """A fastMRI-style 1D column mask; returns ``(mask (num_cols,), num_low_frequencies)``.

    Args:
        kind: ``"random"``, ``"equispaced"`` or ``"equispaced_fraction"`` (see the module docstring).
        num_cols: number of k-space columns ``W``.
        accelerations, center_fractions: one value each, or equal-length lists from which one pair is
            drawn uniformly (as fastMRI); ``allow_any_combination`` draws each independently.
        seed: seed of the ``RandomState`` (int or tuple, as fastMRI's ``seed`` argument).
        offset: first sampled column for the equispaced kinds (drawn when None).
    """
    if kind not in COLUMN_MASK_KINDS:
        raise ValueError(f"column_mask: unknown kind {kind!r}; choose one of {COLUMN_MASK_KINDS}")
    accs = [accelerations] if np.isscalar(accelerations) else list(accelerations)
    cfs = [center_fractions] if np.isscalar(center_fractions) else list(center_fractions)
    if len(accs) != len(cfs) and not allow_any_combination:
        raise ValueError(f"column_mask: {len(cfs)} center_fractions but {len(accs)} accelerations; they must "
                         "pair up unless allow_any_combination=True")
    if num_cols < 2:
        raise ValueError(f"column_mask: need at least 2 columns, got {num_cols}")
    for a in accs:
        if a < 1:
            raise ValueError(f"column_mask: acceleration must be >= 1, got {a}")
    for f in cfs:
        if not 0 <= f <= 1:
            raise ValueError(f"column_mask: center_fraction must be in [0, 1], got {f}")
    if seed is None:
        raise ValueError("column_mask: masks are always seeded; pass an int or tuple seed")

    rng = np.random.RandomState(seed)
    center_fraction, acceleration = _choose(rng, cfs, accs, allow_any_combination)
    num_low = round(num_cols * center_fraction)
    center = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - num_low + 1) // 2
    center[pad:pad + num_low] = 1

    if kind == "random":
        if num_low >= num_cols:
            accel = np.zeros(num_cols, dtype=np.float32)
        else:
            prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
            accel = (rng.uniform(size=num_cols) < prob).astype(np.float32)
    elif kind == "equispaced":
        step = int(round(acceleration))
        if offset is None:
            offset = rng.randint(0, high=step)
        accel = np.zeros(num_cols, dtype=np.float32)
        accel[offset::step] = 1
    else:  # equispaced_fraction
        denom = num_low * acceleration - num_cols
        if denom >= 0:
            raise ValueError(f"column_mask: {num_low} centre columns already reach acceleration "
                             f"{acceleration} of {num_cols} columns; lower center_fraction")
        adjusted = (acceleration * (num_low - num_cols)) / denom
        if offset is None:
            offset = rng.randint(0, high=round(adjusted))
        accel = np.zeros(num_cols, dtype=np.float32)
        idx = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.int64)
        accel[idx] = 1
    mask = np.maximum(center, accel)
    return torch.from_numpy(mask), int(num_low)


def random_mask(num_cols: int, acceleration: float = 4, center_fraction: float = 0.08,
                seed: int = 0) -> Tensor:
    """fastMRI ``RandomMaskFunc`` column mask ``(num_cols,)`` (see :func:`column_mask`)."""
    return column_mask("random", num_cols, acceleration, center_fraction, seed)[0]


def equispaced_mask(num_cols: int, acceleration: float = 4, center_fraction: float = 0.08, seed: int = 0,
                    offset: int | None = None, fraction: bool = False) -> Tensor:
    """fastMRI ``EquiSpacedMaskFunc`` (``fraction=False``) or ``EquispacedMaskFractionFunc`` column mask."""
    kind = "equispaced_fraction" if fraction else "equispaced"
    return column_mask(kind, num_cols, acceleration, center_fraction, seed, offset=offset)[0]


def _disc(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy**2 + xx**2) < radius**2


def _poisson_pass(order: np.ndarray, radius: np.ndarray, shape: tuple[int, int],
                  quant: float = 0.125) -> np.ndarray:
    """Saturated random-sequential Poisson-disc set on the grid: visit pixels in ``order``; accept one
    unless it lies within the exclusion radius of an earlier accepted pixel (radius of that pixel)."""
    h, w = shape
    rmax = int(np.ceil(radius.max()))
    blocked = np.zeros((h + 2 * rmax, w + 2 * rmax), dtype=bool)
    mask = np.zeros(h * w, dtype=bool)
    blocked_flat = blocked.reshape(-1)
    wp = w + 2 * rmax
    discs: dict[int, np.ndarray] = {}
    rq = np.round(radius.reshape(-1) / quant).astype(np.int64)
    for p in order.tolist():
        y, x = divmod(p, w)
        if blocked_flat[(y + rmax) * wp + x + rmax]:
            continue
        mask[p] = True
        q = int(rq[p])
        d = discs.get(q)
        if d is None:
            d = discs[q] = _disc(q * quant)
        k = d.shape[0] // 2
        blocked[y + rmax - k:y + rmax + k + 1, x + rmax - k:x + rmax + k + 1] |= d
    return mask.reshape(h, w)


def poisson_disc_mask(shape: Sequence[int], acceleration: float, calib: int | Sequence[int] = 24,
                      seed: int = 0, variable_density: bool = True, crop_corner: bool = True,
                      tol: float = 0.1, max_iter: int = 40) -> Tensor:
    """2D variable-density Poisson-disc mask ``(H, W)`` with a fully sampled ``calib`` centre square.

    Samples are a saturated random-sequential (dart-throwing) Poisson-disc set on the k-space grid
    (Bridson 2007; Lustig, Donoho, Pauly 2007 for variable density in compressed-sensing MRI).
    The exclusion radius grows linearly with the normalised k-space radius outside the calibration
    region, ``r(k) = 1 + s * rho(k)`` (``r = 1`` keeps every pixel), as in SigPy's ``poisson``; the
    slope ``s`` (or, with ``variable_density=False``, a uniform radius) is bisected until
    ``|H*W / n_samples - acceleration| < tol``; where the grid makes the count jump past the target,
    the closest denser mask is thinned at random to ``round(H*W / acceleration)`` samples (a subset of
    a Poisson-disc set keeps its minimum spacing). ``crop_corner`` drops samples with ``rho >= 1``.
    Deterministic for a given ``seed``. Raises ValueError when the calibration region alone exceeds
    the sample budget.
    """
    h, w = (int(s) for s in shape)
    cy, cx = (calib, calib) if isinstance(calib, int) else (int(calib[0]), int(calib[1]))
    if acceleration < 1:
        raise ValueError(f"poisson_disc_mask: acceleration must be >= 1, got {acceleration}")
    if cy > h or cx > w:
        raise ValueError(f"poisson_disc_mask: calibration region {(cy, cx)} larger than k-space {(h, w)}")
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    ry = np.maximum(np.abs(yy - h / 2) - cy / 2, 0)
    rx = np.maximum(np.abs(xx - w / 2) - cx / 2, 0)
    ry, rx = ry / max(ry.max(), 1e-12), rx / max(rx.max(), 1e-12)
    rho = np.sqrt(ry**2 + rx**2)
    order = np.random.default_rng(seed).permutation(h * w)
    calib_mask = np.zeros((h, w), dtype=bool)
    y0, x0 = h // 2 - cy // 2, w // 2 - cx // 2
    calib_mask[y0:y0 + cy, x0:x0 + cx] = True

    def make(param: float) -> np.ndarray:
        radius = 1 + param * rho if variable_density else np.full((h, w), param)
        m = _poisson_pass(order, np.maximum(radius, 1.0), (h, w))
        if crop_corner:
            m &= rho < 1
        return m | calib_mask

    target = int(round(h * w / acceleration))
    if int(calib_mask.sum()) > target:
        raise ValueError(f"poisson_disc_mask: cannot reach acceleration {acceleration}: the {cy}x{cx} "
                         f"calibration region alone has {int(calib_mask.sum())} > {target} samples "
                         f"for shape {(h, w)}")
    lo, hi = (0.0, float(max(h, w))) if variable_density else (1.0, float(max(h, w)))
    best, best_err, dense = None, np.inf, None  # dense: closest mask with too many samples
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        m = make(mid)
        actual = h * w / max(int(m.sum()), 1)
        err = abs(actual - acceleration)
        if err < best_err:
            best, best_err = m, err
        if err < tol:
            break
        if actual < acceleration:
            lo, dense = mid, m
        else:
            hi = mid
    if best_err >= tol:
        # the grid makes the sample count jump with the radius: thin the closest denser mask at
        # random (outside the calibration block); a subset of a Poisson-disc set keeps its spacing
        if dense is None:
            raise ValueError(f"poisson_disc_mask: cannot reach acceleration {acceleration} for shape "
                             f"{(h, w)}, calib {(cy, cx)}")
        best = dense.copy()
        free = np.flatnonzero(best.reshape(-1) & ~calib_mask.reshape(-1))
        excess = int(best.sum()) - target
        drop = np.random.default_rng(seed).choice(free, size=min(excess, free.size), replace=False)
        best.reshape(-1)[drop] = False
    return torch.from_numpy(best.astype(np.float32))


def calibration_shape(mask: Tensor, shape: Sequence[int] | None = None) -> tuple[int, int]:
    """Size ``(rows, cols)`` of the fully sampled centre block of a mask (the ACS region for ESPIRiT).

    A 1D/``(1, W)`` column mask samples every row, so its block has all ``H`` rows (give ``shape``).
    """
    m = torch.as_tensor(mask).squeeze()
    if m.dim() == 1:
        if shape is None:
            raise ValueError("calibration_shape: a 1D column mask needs the k-space shape (H, W)")
        h = int(shape[0])
        m = m.reshape(1, -1).expand(h, -1)
    h, w = m.shape
    mb = m.bool()
    cy, cx = h // 2, w // 2
    if not bool(mb[cy, cx]):
        return 0, 0

    def extent(line: Tensor, c: int) -> tuple[int, int]:
        a = c
        while a - 1 >= 0 and bool(line[a - 1]):
            a -= 1
        b = c
        while b + 1 < line.numel() and bool(line[b + 1]):
            b += 1
        return a, b

    # grow a centred rectangle that is fully sampled
    x0, x1 = extent(mb[cy], cx)
    y0, y1 = extent(mb[:, cx], cy)
    while y1 >= y0 and not bool(mb[y0:y1 + 1, x0:x1 + 1].all()):
        # shrink the longer side symmetrically until the block is full
        if (x1 - x0) >= (y1 - y0):
            x0, x1 = min(x0 + 1, cx), max(x1 - 1, cx)
        else:
            y0, y1 = min(y0 + 1, cy), max(y1 - 1, cy)
    return int(y1 - y0 + 1), int(x1 - x0 + 1)
