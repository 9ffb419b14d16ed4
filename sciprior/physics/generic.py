"""Generic linear operators every modality reuses.

- :class:`Identity`, :class:`Mask` (inpainting / sampling), :class:`BlockMean` (coarse-graining by an
  integer factor), :class:`Convolution` (circular, FFT; exact ``pinv``/``prox_l2``), :class:`MatrixOperator`
  (a dense matrix on the flattened image; analytic tests), :class:`Weighted` (``diag(s) A``);
- :class:`RealToComplex`: a real 1-channel image as a complex 2-channel one (a magnitude prior in front of an
  operator on complex images);
- finite differences: :class:`Gradient` (forward differences over every spatial axis, Neumann boundary) and
  :class:`SliceDifference` (``D_z``, between neighbouring slices of a volume, no boundary row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sciprior.linalg import bcast
from sciprior.physics.operator import LinearOperator, Measurement, tmap


class Identity(LinearOperator):
    """``A = I`` (denoising)."""

    def __init__(self, in_shape: Sequence[int] | None = None):
        super().__init__(in_shape, in_shape)

    def forward(self, x):
        self.check_input(x)
        return x

    def adjoint(self, y):
        return y

    def pinv(self, y):
        return y

    def prox_l2(self, z, y, gamma):
        g = _as_batch_scalar(gamma, z)
        return (z + g * y) / (1 + g)

    # no svd(): its factors are dense d x d identities; solvers that need an SVD special-case Identity


def _as_batch_scalar(gamma: float | Tensor, ref: Tensor) -> Tensor | float:
    if isinstance(gamma, Tensor) and gamma.dim() == 1:
        return bcast(gamma, ref)
    return gamma


class Mask(LinearOperator):
    """Inpainting / sampling mask: ``y = m * x`` with ``m`` in {0, 1} broadcast against the image.

    The measurement keeps the image layout (zeros where unobserved), so ``A^H = A``, ``A^+ = A``.
    Args:
        mask: tensor broadcastable to ``in_shape`` (or to ``(B, *in_shape)``), values 0/1.
    """

    def __init__(self, mask: Tensor, in_shape: Sequence[int] | None = None):
        mask = torch.as_tensor(mask)
        if in_shape is None:
            in_shape = tuple(mask.shape[1:]) if mask.dim() >= 3 else None
        super().__init__(in_shape, in_shape)
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("Mask: mask values must be 0 or 1")
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x):
        self.check_input(x)
        return x * self.mask

    def measured_support(self):
        return self.mask

    def adjoint(self, y):
        return y * self.mask

    def pinv(self, y):
        return y * self.mask

    def prox_l2(self, z, y, gamma):
        g = _as_batch_scalar(gamma, z)
        return torch.where(self.mask.bool(), (z + g * y) / (1 + g), z)


class BlockMean(LinearOperator):
    """Block-mean downsampling (coarse-graining) by integer ``factor`` over the spatial axes.

    ``y = mean of each factor^n block``. Its rows are orthogonal with norm ``1/sqrt(f^n)``, so
    ``A A^H = f^-n I`` and ``A^+ = f^n A^H`` in closed form.
    Args:
        factor: int or per-axis tuple for the spatial axes (all axes after the channel axis).
        in_shape: ``(C, H, W)`` or ``(C, D, H, W)``; spatial sizes must be divisible by the factor.
    """

    def __init__(self, factor: int | Sequence[int], in_shape: Sequence[int]):
        in_shape = tuple(in_shape)
        nsp = len(in_shape) - 1
        f = (factor,) * nsp if isinstance(factor, int) else tuple(factor)
        if len(f) != nsp:
            raise ValueError(f"BlockMean: factor {f} does not match {nsp} spatial axes of {in_shape}")
        for n, k in zip(in_shape[1:], f):
            if n % k:
                raise ValueError(f"BlockMean: spatial size {n} is not divisible by factor {k} ({in_shape})")
        out = (in_shape[0], *(n // k for n, k in zip(in_shape[1:], f)))
        super().__init__(in_shape, out)
        self.factor = f
        self.block = math.prod(f)

    def forward(self, x):
        self.check_input(x)
        pool = torch.nn.functional.avg_pool2d if len(self.factor) == 2 else torch.nn.functional.avg_pool3d
        if len(self.factor) == 1:
            pool = torch.nn.functional.avg_pool1d
        return pool(x, kernel_size=self.factor, stride=self.factor)

    def adjoint(self, y):
        self.check_measurement(y)
        out = y
        for ax, k in enumerate(self.factor):
            out = out.repeat_interleave(k, dim=2 + ax)
        return out / self.block

    def pinv(self, y):
        return self.block * self.adjoint(y)

    def prox_l2(self, z, y, gamma):
        # (A^H A + I/g) x = A^H y + z/g. With A A^H = I/b, P = b A^H A is an orthogonal projector
        # and (P/b + I/g)^-1 = g (I - P) + P / (1/b + 1/g).
        g = _as_batch_scalar(gamma, z)
        r = self.adjoint(y) + z / g
        # A^H A = P / b with P an orthogonal projector; (P/b + I/g)^-1 = g (I - P) + (1/(1/b + 1/g)) P
        p = self.block * self.adjoint(self.forward(r))
        return g * (r - p) + p / (1.0 / self.block + 1.0 / g)


class Convolution(LinearOperator):
    """Blur by a kernel with circular boundary (``y = k * x``), computed with FFTs.

    Circular convolution is diagonalised by the FFT, which gives exact ``pinv`` (with a relative
    cutoff) and ``prox_l2``. Args: kernel ``(kh, kw)`` or ``(kd, kh, kw)`` (centred), in_shape.
    """

    def __init__(self, kernel: Tensor, in_shape: Sequence[int], pinv_rcond: float = 1e-6):
        in_shape = tuple(in_shape)
        kernel = torch.as_tensor(kernel, dtype=torch.get_default_dtype())
        nsp = len(in_shape) - 1
        if kernel.dim() != nsp:
            raise ValueError(f"Convolution: kernel of {kernel.dim()} dims for {nsp} spatial axes ({in_shape})")
        if any(k > n for k, n in zip(kernel.shape, in_shape[1:])):
            raise ValueError(f"Convolution: kernel {tuple(kernel.shape)} larger than image {in_shape}")
        super().__init__(in_shape, in_shape)
        pad = torch.zeros(in_shape[1:], dtype=kernel.dtype)
        pad[tuple(slice(0, k) for k in kernel.shape)] = kernel
        shifts = tuple(-(k // 2) for k in kernel.shape)
        pad = torch.roll(pad, shifts=shifts, dims=tuple(range(nsp)))
        self.dims = tuple(range(-nsp, 0))
        self.register_buffer("otf", torch.fft.fftn(pad, dim=self.dims))
        self.pinv_rcond = pinv_rcond

    def _filter(self, x: Tensor, h: Tensor) -> Tensor:
        return torch.fft.ifftn(torch.fft.fftn(x, dim=self.dims) * h, dim=self.dims).real

    def forward(self, x):
        self.check_input(x)
        return self._filter(x, self.otf)

    def adjoint(self, y):
        self.check_measurement(y)
        return self._filter(y, self.otf.conj())

    def pinv(self, y):
        mag = self.otf.abs()
        keep = mag > self.pinv_rcond * mag.max()
        inv = torch.where(keep, 1.0 / torch.where(keep, self.otf, torch.ones_like(self.otf)),
                          torch.zeros_like(self.otf))
        return self._filter(y, inv)

    def prox_l2(self, z, y, gamma):
        g = _as_batch_scalar(gamma, z)
        rhs = torch.fft.fftn(self.adjoint(y) + z / g, dim=self.dims)
        den = self.otf.abs() ** 2 + 1.0 / g
        return torch.fft.ifftn(rhs / den, dim=self.dims).real



def gaussian_kernel(size: int, std: float, ndim: int = 2) -> Tensor:
    """Normalised isotropic Gaussian blur kernel of ``size`` per axis."""
    r = torch.arange(size, dtype=torch.get_default_dtype()) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / std) ** 2)
    k = g
    for _ in range(ndim - 1):
        k = k[..., None] * g
    return k / k.sum()


class MatrixOperator(LinearOperator):
    """A dense matrix acting on the flattened image: ``y = (x.flatten() @ M.T)``. Test/analytic use.

    The closed forms (``pinv``, ``prox_l2``, ``svd``) use the thin SVD ``M = U diag(s) V^T``, computed
    once on first use and recomputed only if the matrix changes (device, dtype or in-place edit).
    Singular values below ``rcond * max(s)`` are treated as zero (rank-deficient matrices are fine).

    Args: matrix ``(m, d)``; in_shape whose product is ``d``. Output shape ``(m,)``.
    """

    def __init__(self, matrix: Tensor, in_shape: Sequence[int] | None = None, rcond: float | None = None):
        matrix = torch.as_tensor(matrix)
        m, d = matrix.shape
        in_shape = tuple(in_shape) if in_shape is not None else (d,)
        if math.prod(in_shape) != d:
            raise ValueError(f"MatrixOperator: matrix with {d} columns does not fit image shape {in_shape}")
        super().__init__(in_shape, (m,))
        self.register_buffer("matrix", matrix)
        self.rcond = rcond
        self._svd_key: tuple | None = None
        self._svd_factors: tuple[Tensor, Tensor, Tensor] | None = None

    def forward(self, x):
        self.check_input(x)
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def adjoint(self, y):
        self.check_measurement(y)
        return (y @ self.matrix).reshape(y.shape[0], *self.in_shape)

    def _thin_svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, s, Vh)`` restricted to the numerically nonzero singular values, cached."""
        mat = self.matrix
        key = (mat.data_ptr(), mat._version, mat.dtype, mat.device)
        if self._svd_key != key or self._svd_factors is None:
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            rcond = self.rcond if self.rcond is not None else max(mat.shape) * torch.finfo(s.dtype).eps
            keep = s > rcond * (s[0] if s.numel() else 0)
            self._svd_factors = (u[:, keep].contiguous(), s[keep].contiguous(), vh[keep].contiguous())
            self._svd_key = key
        return self._svd_factors

    def pinv(self, y):
        u, s, vh = self._thin_svd()
        return (((y @ u) / s) @ vh).reshape(y.shape[0], *self.in_shape)

    def prox_l2(self, z, y, gamma):
        """``argmin_x 0.5 ||M x - y||^2 + ||x - z||^2 / (2 gamma)`` (``gamma`` scalar or per row):
        ``z + V (c - V^T z)`` with ``c = (s U^T y + V^T z / gamma) / (s^2 + 1 / gamma)``."""
        u, s, vh = self._thin_svd()
        zf = z.reshape(z.shape[0], -1)
        g = torch.as_tensor(gamma, dtype=zf.dtype, device=zf.device).reshape(-1, 1)
        zv = zf @ vh.T
        c = ((y @ u) * s + zv / g) / (s**2 + 1.0 / g)
        return (zf + (c - zv) @ vh).reshape(z.shape)

    def svd(self):
        """``(U, s, Vh)`` of the thin SVD (torch's convention; zero singular values dropped)."""
        return self._thin_svd()


class Weighted(LinearOperator):
    """``x -> s * A x`` for a fixed per-entry real weight ``s`` (a tensor or tuple shaped like A's output,
    e.g. the square root of WLS weights): the whitened operator of a weighted least-squares term."""

    def __init__(self, op: LinearOperator, s: Measurement, in_shape: Sequence[int]):
        super().__init__(in_shape, op.out_shape)
        self.op, self.s = op, s

    @property
    def name(self) -> str:
        return f"W^1/2 {self.op.name}"

    def forward(self, x):
        return tmap(torch.mul, self.s, self.op(x))

    def adjoint(self, y):
        return self.op.adjoint(tmap(torch.mul, self.s, y))


class RealToComplex(LinearOperator):
    """Embed a real image ``(B, 1, H, W)`` as a complex one in channels ``(B, 2, H, W)`` = (x, 0).

    The adjoint keeps the real part (channel 0). Used to put a magnitude (real) prior in front of the
    SENSE operator, whose image domain is complex.
    """

    def __init__(self, image_size: tuple[int, int]):
        h, w = (int(v) for v in image_size)
        super().__init__((1, h, w), (2, h, w))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return torch.cat((x, torch.zeros_like(x)), dim=1)

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return y[:, :1]

    def pinv(self, y: Tensor) -> Tensor:
        return y[:, :1]


# --------------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------------


def gradient(x: Tensor) -> Tensor:
    """Forward differences with Neumann boundary over every spatial axis.

    ``x`` is (B, C, *spatial) with 1-3 spatial axes; returns (B, nd, C, *spatial) where component
    ``k`` is ``x[i+1] - x[i]`` along spatial axis ``k`` and 0 on the last slice (Chambolle 2004,
    "An algorithm for total variation minimization and applications").
    """
    if x.dim() < 3:
        raise ValueError(f"gradient: expected (B, C, *spatial) with at least one spatial axis, "
                         f"got shape {tuple(x.shape)}")
    parts = []
    for ax in range(2, x.dim()):
        d = torch.diff(x, dim=ax)
        pad = torch.zeros_like(x.narrow(ax, 0, 1))
        parts.append(torch.cat([d, pad], dim=ax))
    return torch.stack(parts, dim=1)


def divergence(v: Tensor) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`gradient`: ``<grad x, v> = -<x, div v>``.

    ``v`` is (B, nd, C, *spatial) with ``nd`` spatial axes; returns (B, C, *spatial).
    """
    nd = v.dim() - 3
    if nd < 1 or v.shape[1] != nd:
        raise ValueError(f"divergence: expected (B, nd, C, *spatial) with nd = number of spatial axes, "
                         f"got shape {tuple(v.shape)}")
    out = torch.zeros_like(v[:, 0])
    for k in range(nd):
        ax = 2 + k  # spatial axis in the (B, C, *spatial) layout
        vk = v[:, k]
        n = vk.shape[ax]
        # The last slice of a forward difference is structurally zero: ignore it.
        vk = torch.cat([vk.narrow(ax, 0, n - 1), torch.zeros_like(vk.narrow(ax, 0, 1))], dim=ax)
        shifted = torch.cat([torch.zeros_like(vk.narrow(ax, 0, 1)), vk.narrow(ax, 0, n - 1)], dim=ax)
        out = out + vk - shifted
    return out


class Gradient(LinearOperator):
    """:func:`gradient` as a linear operator; its adjoint is ``-divergence``.

    Args: in_shape ``(C, H, W)`` or ``(C, D, H, W)``. Output ``(nd, C, *spatial)``.
    """

    def __init__(self, in_shape: Sequence[int]):
        in_shape = tuple(in_shape)
        if len(in_shape) < 2:
            raise ValueError(f"Gradient: in_shape must be (C, *spatial), got {in_shape}")
        super().__init__(in_shape, (len(in_shape) - 1, *in_shape))

    def forward(self, x):
        self.check_input(x)
        return gradient(x)

    def adjoint(self, y):
        self.check_measurement(y)
        return -divergence(y)


def total_variation(x: Tensor, isotropic: bool = True) -> Tensor:
    """TV per item, shape (B,): the sum over voxels and channels of ``|grad x|_2`` (isotropic) or
    ``|grad x|_1`` (anisotropic), forward differences with Neumann boundary, in the image's units."""
    return tv_from_grad(gradient(x), isotropic)


def tv_from_grad(g: Tensor, isotropic: bool) -> Tensor:
    mag = g.square().sum(dim=1).sqrt() if isotropic else g.abs().sum(dim=1)
    return mag.reshape(mag.shape[0], -1).sum(dim=1)


def slice_diff(x: Tensor) -> Tensor:
    """``D_z x = x[:, :, 1:] - x[:, :, :-1]``: ``(B, C, D, H, W) -> (B, C, D - 1, H, W)`` (image units)."""
    if x.dim() != 5:
        raise ValueError(f"slice_diff: expected a (B, C, D, H, W) volume, got shape {tuple(x.shape)}")
    return x[:, :, 1:] - x[:, :, :-1]


def slice_diff_adjoint(v: Tensor) -> Tensor:
    """``D_z^T v``: ``(B, C, D - 1, H, W) -> (B, C, D, H, W)``; ``(D_z^T v)_d = v_{d-1} - v_d`` with
    ``v_{-1} = v_{D-1} = 0``."""
    if v.dim() != 5:
        raise ValueError(f"slice_diff_adjoint: expected (B, C, D - 1, H, W), got shape {tuple(v.shape)}")
    zero = torch.zeros_like(v[:, :, :1])
    padded = torch.cat([zero, v, zero], dim=2)
    return padded[:, :, :-1] - padded[:, :, 1:]


class SliceDifference(LinearOperator):
    """:func:`slice_diff` as a linear operator, ``(C, D, H, W) -> (C, D - 1, H, W)``, ``D >= 2``."""

    def __init__(self, in_shape: Sequence[int]):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 4 or in_shape[1] < 2:
            raise ValueError(f"SliceDifference: in_shape must be (C, D, H, W) with D >= 2, got {in_shape}")
        c, d, h, w = in_shape
        super().__init__(in_shape, (c, d - 1, h, w))

    def forward(self, x):
        self.check_input(x)
        return slice_diff(x)

    def adjoint(self, y):
        self.check_measurement(y)
        return slice_diff_adjoint(y)
