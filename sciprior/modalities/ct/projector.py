"""Parallel-beam and fan-beam projectors (matched forward/back-projection pairs) in torch.

Units: the image is ``(B, 1, H, W)`` in any units ``u`` (e.g. linear attenuation in 1/mm) on square
pixels of ``pixel_size`` mm; the sinogram ``(B, 1, n_views, n_det)`` holds line integrals in
``u x mm`` (dimensionless for attenuation in 1/mm). Geometry conventions: see
:mod:`sciprior.modalities.ct.geometry`.

Discretisation: Joseph's method (:mod:`sciprior.modalities.ct.joseph`) for every ray. The adjoint
is the transpose of the same sparse matrix (exact to float rounding). Only canonical views (angle in
``[0, pi/4]``) are stored; the other views are obtained by rotating/mirroring the image by
multiples of 90 degrees (exact pixel permutations), so a uniform scan of ``n`` views keeps
about ``n/4`` views' worth of matrix and all views are computed in one sparse-times-dense product
with several right-hand sides. Batched, device-agnostic (CPU: MKL sparse; GPU: cuSPARSE),
differentiable with respect to the image (backward of the projector is the back-projector).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sciprior.modalities.ct import geometry as geo
from sciprior.modalities.ct.joseph import CSRPair, joseph_matrix
from sciprior.physics.operator import LinearOperator

# Dense right-hand sides per sparse product (see CTProjector._spmm).
_CACHE_BYTES = 4 * 2**20


class CTProjector(LinearOperator):
    """Common machinery of the 2D projectors; subclasses define the rays of a set of views.

    Args:
        image_shape: ``(H, W)`` of the image.
        pixel_size: pixel side in mm (square pixels).
        angles: view angles in radians (parallel: ``theta``; fan: source angle ``beta``).
        n_det: number of detector elements.
        use_symmetry: share the system matrix between views related by a grid symmetry (no effect
            on the result beyond float rounding; set False to store every view explicitly).
    """

    kind: str = ""

    def __init__(self, image_shape: Sequence[int], pixel_size: float, angles, n_det: int,
                 det_offset: float, use_symmetry: bool = True):
        h, w = (int(v) for v in image_shape)
        if h < 1 or w < 1:
            raise ValueError(f"{type(self).__name__}: image_shape must be positive, got {tuple(image_shape)}")
        if not pixel_size > 0:
            raise ValueError(f"{type(self).__name__}: pixel_size must be > 0 (mm), got {pixel_size}")
        if n_det < 1:
            raise ValueError(f"{type(self).__name__}: n_det must be >= 1, got {n_det}")
        ang = geo.as_angles(angles, type(self).__name__)
        super().__init__((1, h, w), (1, ang.size, n_det))
        self.image_shape = (h, w)
        self.pixel_size = float(pixel_size)
        self.n_det = int(n_det)
        self.det_offset = float(det_offset)
        self.register_buffer("angles", torch.from_numpy(ang), persistent=False)

        red = geo.reduce_views(ang, self.kind, square=(h == w), symmetric_detector=(det_offset == 0),
                               use_symmetry=use_symmetry)
        n_groups, n_canon = red.matrices.shape[0], red.canon_angles.size
        if use_symmetry and n_groups * n_canon > 1.25 * ang.size:
            # Irregular angle set: sharing would compute many unused views; store every view.
            red = geo.reduce_views(ang, self.kind, square=(h == w), symmetric_detector=(det_offset == 0),
                                   use_symmetry=False)
            n_groups, n_canon = red.matrices.shape[0], red.canon_angles.size
        self.n_groups, self.n_canon = n_groups, n_canon
        self.canon_angles = red.canon_angles
        origin, direction = self._rays_np(red.canon_angles)
        self.matrix = CSRPair(joseph_matrix(origin.reshape(-1, 2), direction.reshape(-1, 2), (h, w),
                                            self.pixel_size))
        perms = np.stack([geo.grid_permutation(m, h, w) for m in red.matrices])
        inv = np.argsort(perms, axis=1)
        k = np.arange(n_det)
        det_idx = np.where(red.flip[:, None], n_det - 1 - k[None, :], k[None, :])
        self.register_buffer("perms", torch.from_numpy(perms), persistent=False)
        self.register_buffer("inv_perms", torch.from_numpy(inv), persistent=False)
        self.register_buffer("row_index", torch.from_numpy(red.canon[:, None] * n_det + det_idx),
                             persistent=False)
        self.register_buffer("group_index", torch.from_numpy(red.group[:, None].repeat(n_det, 1)),
                             persistent=False)
        self._identity_only = n_groups == 1 and bool(np.all(perms[0] == np.arange(h * w)))

    # --- geometry --------------------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        return int(self.angles.numel())

    def _rays_np(self, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions (x, y) in mm of every measured ray, each ``(n_views, n_det, 2)``."""
        return self._rays_np(self.angles.cpu().numpy())

    def memory_bytes(self) -> int:
        """Memory held by the stored system matrix and its transpose, bytes."""
        return self.matrix.nbytes()

    @property
    def fov_radius(self) -> float:
        """Radius (mm) of the disc around the axis seen by every view (reconstruction circle)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def fov_mask(self) -> Tensor:
        """Boolean ``(H, W)`` mask of the pixels whose centre lies in the reconstruction circle."""
        h, w = self.image_shape
        y = ((h - 1) / 2 - torch.arange(h, dtype=torch.float64))[:, None] * self.pixel_size
        x = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2)[None, :] * self.pixel_size
        return (x**2 + y**2) <= self.fov_radius**2

    # --- the operator ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Line integrals ``(B, 1, n_views, n_det)`` (image units x mm) of images ``(B, 1, H, W)``."""
        self.check_input(x)
        b = x.shape[0]
        n = self.image_shape[0] * self.image_shape[1]
        xf = x.reshape(b, n)
        if self._identity_only:
            cols = xf
        else:
            cols = xf[:, self.perms].transpose(0, 1).reshape(self.n_groups * b, n)   # (G*B, N)
        out = self._spmm(cols, transpose=False).reshape(self.n_canon * self.n_det, self.n_groups, b)
        sino = out[self.row_index, self.group_index]                                  # (V, K, B)
        return sino.permute(2, 0, 1).unsqueeze(1)

    def adjoint(self, y: Tensor) -> Tensor:
        """Back-projection (exact adjoint) of sinograms ``(B, 1, n_views, n_det)`` to ``(B, 1, H, W)``."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{self.name}.adjoint: expected a torch.Tensor sinogram, got {type(y).__name__}")
        self.check_measurement(y)
        b = y.shape[0]
        h, w = self.image_shape
        yv = y[:, 0].permute(1, 2, 0)                                                  # (V, K, B)
        z = y.new_zeros(self.n_canon * self.n_det, self.n_groups, b)
        z = z.index_put((self.row_index, self.group_index), yv, accumulate=True)
        cols = self._spmm(z.reshape(-1, self.n_groups * b).T, transpose=True)       # (N, G*B)
        if self._identity_only:
            img = cols.T
        else:
            cols = cols.reshape(h * w, self.n_groups, b)
            g = torch.arange(self.n_groups, device=cols.device)
            img = cols[self.inv_perms.T, g].sum(dim=1).T                             # (B, N)
        return img.reshape(b, 1, h, w)

    def _spmm(self, rows: Tensor, transpose: bool) -> Tensor:
        """``A @ rows.T`` (or ``A^T @ rows.T``) for ``rows`` of shape ``(k, n)``, in column chunks.

        Sparse-times-dense runs fastest while the dense operand stays in cache: at most
        ``_CACHE_BYTES`` of right-hand sides (and at most 8 columns) go in one product.
        """
        k, n = rows.shape
        step = max(1, min(8, _CACHE_BYTES // max(1, n * rows.element_size())))
        fn = self.matrix.rmatmul if transpose else self.matrix.matmul
        outs = [fn(rows[c:c + step].T.contiguous()) for c in range(0, k, step)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return (f"image={self.image_shape}, pixel_size={self.pixel_size:g} mm, views={self.n_views}, "
                f"n_det={self.n_det}, canonical_views={self.n_canon}x{self.n_groups} transforms, "
                f"nnz={self.matrix.nnz}")


def _check_pixel_size(who: str, pixel_size: float) -> None:
    if not (isinstance(pixel_size, (int, float)) and pixel_size > 0 and math.isfinite(pixel_size)):
        raise ValueError(f"{who}: pixel_size must be > 0 (mm), got {pixel_size}")


def _half_diagonal(shape: tuple[int, int], pixel_size: float) -> float:
    return 0.5 * math.hypot(*shape) * pixel_size


class ParallelBeamProjector(CTProjector):
    """2D parallel-beam projector (Joseph), image ``(B, 1, H, W)`` -> sinogram ``(B, 1, V, K)``.

    Args:
        image_shape: ``(H, W)``; pixel_size: mm.
        angles: view angles theta in radians (default 180 views over ``[0, pi)``); see
            :func:`~sciprior.modalities.ct.geometry.uniform_angles`, ``sparse_view_angles``,
            ``limited_angles``.
        n_det: detector elements (default: enough to cover the image diagonal).
        det_spacing: detector pitch in mm (default ``pixel_size``).
        det_offset: detector shift in elements (e.g. 0.25 for a quarter offset).
    """

    kind = "parallel"

    def __init__(self, image_shape: Sequence[int], pixel_size: float = 1.0, angles=None,
                 n_det: int | None = None, det_spacing: float | None = None, det_offset: float = 0.0,
                 use_symmetry: bool = True):
        shape = tuple(int(v) for v in image_shape)
        _check_pixel_size("ParallelBeamProjector", pixel_size)
        self.det_spacing = float(det_spacing if det_spacing is not None else pixel_size)
        if not self.det_spacing > 0:
            raise ValueError(f"ParallelBeamProjector: det_spacing must be > 0 (mm), got {det_spacing}")
        if n_det is None:
            n_det = int(math.ceil(2 * _half_diagonal(shape, pixel_size) / self.det_spacing)) + 1
        if angles is None:
            angles = geo.uniform_angles(180, math.pi)
        super().__init__(shape, pixel_size, angles, n_det, det_offset, use_symmetry)

    @property
    def det_positions(self) -> np.ndarray:
        """Detector coordinates ``s_k`` in mm."""
        return geo.detector_positions(self.n_det, self.det_spacing, self.det_offset)

    def _rays_np(self, angles):
        return geo.parallel_rays(angles, self.det_positions)

    @property
    def fov_radius(self) -> float:
        s = self.det_positions
        return float(min(abs(s[0]), abs(s[-1])))


class FanBeamProjector(CTProjector):
    """2D fan-beam projector (Joseph), equiangular (curved) or flat detector.

    Args:
        image_shape: ``(H, W)``; pixel_size: mm.
        angles: source angles beta in radians (default 360 views over ``[0, 2 pi)``).
        source_to_center: source to rotation axis distance ``R``, mm (default: twice the image
            half-diagonal).
        source_to_detector: source to detector distance ``D``, mm (default ``2 R``).
        detector: ``"equiangular"`` or ``"flat"`` (see :mod:`~sciprior.modalities.ct.geometry`).
        n_det: detector elements (default: cover the fan that contains the image).
        det_spacing: element pitch on the detector in mm (arc length for equiangular). Default:
            ``pixel_size * D / R`` (one pixel at the rotation axis).
        det_offset: detector shift in elements.
    """

    kind = "fan"

    def __init__(self, image_shape: Sequence[int], pixel_size: float = 1.0, angles=None,
                 source_to_center: float | None = None, source_to_detector: float | None = None,
                 detector: str = "equiangular", n_det: int | None = None, det_spacing: float | None = None,
                 det_offset: float = 0.0, use_symmetry: bool = True):
        shape = tuple(int(v) for v in image_shape)
        _check_pixel_size("FanBeamProjector", pixel_size)
        r_img = _half_diagonal(shape, pixel_size)
        self.source_to_center = float(source_to_center if source_to_center is not None else 2 * r_img)
        self.source_to_detector = float(source_to_detector if source_to_detector is not None
                                        else 2 * self.source_to_center)
        if self.source_to_center <= r_img:
            raise ValueError(f"FanBeamProjector: source_to_center={self.source_to_center:g} mm puts the "
                             f"source inside the image (half-diagonal {r_img:g} mm)")
        if self.source_to_detector <= self.source_to_center:
            raise ValueError(f"FanBeamProjector: source_to_detector={self.source_to_detector:g} mm must "
                             f"exceed source_to_center={self.source_to_center:g} mm")
        if detector not in ("equiangular", "flat"):
            raise ValueError(f"FanBeamProjector: detector must be 'equiangular' or 'flat', got {detector!r}")
        self.detector = detector
        mag = self.source_to_detector / self.source_to_center
        self.det_spacing = float(det_spacing if det_spacing is not None else pixel_size * mag)
        if not self.det_spacing > 0:
            raise ValueError(f"FanBeamProjector: det_spacing must be > 0 (mm), got {det_spacing}")
        if n_det is None:
            gmax = math.asin(r_img / self.source_to_center)
            if detector == "equiangular":
                half = gmax * self.source_to_detector / self.det_spacing
            else:
                half = math.tan(gmax) * self.source_to_detector / self.det_spacing
            n_det = 2 * int(math.ceil(half)) + 2
        if angles is None:
            angles = geo.uniform_angles(360, 2 * math.pi)
        super().__init__(shape, pixel_size, angles, n_det, det_offset, use_symmetry)

    @property
    def det_positions(self) -> np.ndarray:
        """Detector coordinates ``u_k`` in mm (arc length for the equiangular detector)."""
        return geo.detector_positions(self.n_det, self.det_spacing, self.det_offset)

    @property
    def gammas(self) -> np.ndarray:
        """Fan angle of each detector element, radians."""
        return geo.fan_gammas(self.detector, self.n_det, self.det_spacing, self.det_offset,
                              self.source_to_detector)

    def _rays_np(self, angles):
        return geo.fan_rays(angles, self.gammas, self.source_to_center)

    @property
    def fov_radius(self) -> float:
        g = self.gammas
        return float(self.source_to_center * math.sin(min(abs(g[0]), abs(g[-1]))))
