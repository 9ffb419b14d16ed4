"""Joseph's ray-driven system matrix, stored as a matched pair of sparse CSR matrices.

Joseph (1982), "An improved algorithm for reprojecting rays through pixel images", IEEE TMI 1(3):
a ray whose direction is closer to vertical (``|d_y| >= |d_x|``) is sampled once per image row at the
row centre, with linear interpolation between the two nearest columns and weight
``pixel_size / |d_y|`` (the path length per row); rays closer to horizontal are sampled per column.
Pixels outside the image count as zero. The matrix entries are in mm, so ``A @ x`` is the line
integral of ``x`` in (image units x mm).

The forward matrix ``A`` and its transpose ``A^T`` are both kept in CSR form (built once with
SciPy's linear-time CSR->CSC conversion), so ``A^T`` is the exact adjoint by construction and both
products run as fast sparse-times-dense kernels (MKL on CPU, cuSPARSE on GPU). Indices are int32.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

# (ray, step) samples generated per chunk while building; keeps the temporaries in cache.
_CHUNK = 1 << 18


def joseph_matrix(origin: np.ndarray, direction: np.ndarray, shape: tuple[int, int],
                  pixel_size: float) -> sp.csr_matrix:
    """System matrix ``(n_rays, H*W)`` (float32, int32 indices) for rays given by a point and a direction.

    Args:
        origin: ``(n_rays, 2)`` a point (x, y) on each ray, mm.
        direction: ``(n_rays, 2)`` direction of each ray (need not be normalised).
        shape: image ``(H, W)``; pixel_size: mm (square pixels).

    Every ray gets ``2 * steps`` slots (two interpolation neighbours per row or column); slots that
    fall outside the image get weight zero and are dropped at the end, so the CSR row pointer is
    known up front and no sorting is needed (except within column-driven rows).
    """
    origin = np.asarray(origin, dtype=np.float64).reshape(-1, 2)
    direction = np.asarray(direction, dtype=np.float64).reshape(-1, 2)
    direction = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    h, w = shape
    n_rays = origin.shape[0]
    steps = max(h, w)
    slots = 2 * steps
    if n_rays * slots >= 2**31 - 1:
        raise MemoryError(f"Joseph system matrix with {n_rays} rays over a {h}x{w} image exceeds int32 "
                          "indexing; use fewer views or pixels")
    indices = np.zeros((n_rays, steps, 2), dtype=np.int32)
    data = np.zeros((n_rays, steps, 2), dtype=np.float32)
    row_driven = np.abs(direction[:, 1]) >= np.abs(direction[:, 0])
    for rd in (True, False):
        rays = np.nonzero(row_driven == rd)[0]
        if rays.size == 0:
            continue
        n_step, n_other = (h, w) if rd else (w, h)
        if rd:   # row i at y_i = ((h-1)/2 - i) px: column coordinate c_i = c0 + i * dc
            ox, oy, dx, dy = (origin[rays, 0], origin[rays, 1], direction[rays, 0], direction[rays, 1])
            slope = -dx / dy
            c0 = (ox + ((h - 1) / 2 * pixel_size - oy) * dx / dy) / pixel_size + (w - 1) / 2
            length = pixel_size / np.abs(dy)
        else:    # column j at x_j = (j - (w-1)/2) px: row coordinate r_j = r0 + j * dr
            ox, oy, dx, dy = (origin[rays, 0], origin[rays, 1], direction[rays, 0], direction[rays, 1])
            slope = -dy / dx
            y_at0 = oy + (-(w - 1) / 2 * pixel_size - ox) * dy / dx
            c0 = (h - 1) / 2 - y_at0 / pixel_size
            length = pixel_size / np.abs(dx)
        step_idx = np.arange(n_step)
        chunk = max(1, _CHUNK // n_step)
        for a in range(0, rays.size, chunk):
            r = rays[a:a + chunk]
            sl = slice(a, a + chunk)
            c = c0[sl, None] + slope[sl, None] * step_idx[None, :]
            k0f = np.floor(c)
            w1 = c - k0f
            k0f = np.clip(k0f, -2, n_other + 1)
            k0 = k0f.astype(np.int32)
            lw = length[sl, None]
            v0 = ((1.0 - w1) * lw) * ((k0 >= 0) & (k0 < n_other))
            v1 = (w1 * lw) * ((k0 >= -1) & (k0 < n_other - 1))
            k0 = np.clip(k0, -1, n_other - 1)
            if rd:
                base = step_idx[None, :] * w + k0
                indices[r, :n_step, 0] = np.maximum(base, 0)
                indices[r, :n_step, 1] = base + 1
            else:
                base = k0 * w + step_idx[None, :]
                indices[r, :n_step, 0] = np.maximum(base, 0)
                indices[r, :n_step, 1] = np.minimum(base + w, h * w - 1)
            data[r, :n_step, 0] = v0
            data[r, :n_step, 1] = v1
    indptr = np.arange(n_rays + 1, dtype=np.int32) * np.int32(slots)
    mat = sp.csr_matrix((data.reshape(-1), indices.reshape(-1), indptr), shape=(n_rays, h * w), copy=False)
    mat.eliminate_zeros()
    if mat.indices.base is not None:   # release the unused slots (scipy may keep a view of them)
        mat.indices, mat.data = mat.indices.copy(), mat.data.copy()
    if not row_driven.all():    # column-driven rays emit their entries out of column order
        mat.has_sorted_indices = False
        mat.sort_indices()
    return mat


class CSRPair(torch.nn.Module):
    """A sparse matrix ``A`` and its transpose, both CSR, as plain (non-persistent) buffers.

    Keeping the three component arrays as dense buffers makes ``.to(device)``, ``.double()`` and
    ``deepcopy`` work; the sparse tensors are assembled on use (no copy).
    """

    def __init__(self, mat: sp.csr_matrix):
        super().__init__()
        mat = mat.tocsr()
        mat_t = mat.tocsc()   # CSC of A == CSR of A^T (linear time, sorted indices)
        self.shape = tuple(mat.shape)
        for name, m in (("fw", mat), ("bw", mat_t)):
            for part, arr, dt in (("crow", m.indptr, np.int32), ("col", m.indices, np.int32),
                                  ("val", m.data, np.float32)):
                self.register_buffer(f"{name}_{part}", torch.from_numpy(arr.astype(dt, copy=False)),
                                     persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.fw_val.numel())

    def nbytes(self) -> int:
        """Memory held by both matrices, bytes."""
        return sum(int(b.numel() * b.element_size()) for b in self.buffers())

    def _csr(self, name: str, dtype: torch.dtype) -> Tensor:
        crow, col, val = (getattr(self, f"{name}_{p}") for p in ("crow", "col", "val"))
        shape = self.shape if name == "fw" else self.shape[::-1]
        with warnings.catch_warnings():   # "sparse CSR support is in beta": it is used as intended here
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, val.to(dtype), shape, check_invariants=False)

    def matmul(self, x: Tensor) -> Tensor:
        """``A @ x`` for dense ``x`` of shape ``(n_cols, k)``, differentiable (backward uses ``A^T``)."""
        return _SpMM.apply(x, self, False)

    def rmatmul(self, y: Tensor) -> Tensor:
        """``A^T @ y`` for dense ``y`` of shape ``(n_rows, k)``, differentiable (backward uses ``A``)."""
        return _SpMM.apply(y, self, True)


class _SpMM(torch.autograd.Function):
    """Sparse matrix times dense matrix whose gradient is the product with the stored transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, pair: CSRPair, transpose: bool) -> Tensor:
        ctx.pair, ctx.transpose = pair, transpose
        mat = pair._csr("bw" if transpose else "fw", x.dtype)
        return mat @ x.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _SpMM.apply(grad, ctx.pair, not ctx.transpose), None, None
