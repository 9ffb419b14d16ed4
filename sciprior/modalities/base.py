"""Operator contract: forward models from the prior's image domain to the measurement domain.

Shapes: images are ``(B, *in_shape)`` (``in_shape`` = ``(C, H, W)`` or ``(C, D, H, W)``), real.
Measurements are ``(B, *out_shape)`` tensors, real or complex, or a tuple of such tensors for a
:class:`StackedOperator` (several measurements of one image: multimodal fusion).

Every :class:`LinearOperator` has ``forward`` and ``adjoint`` (the exact adjoint for the real inner
product ``<u, v> = sum Re(conj(u) v)``), ``.H``, ``normal`` (A^H A), composition ``A @ B``, sums
``A + B`` and scaling ``c * A``. Closed forms (``pinv``, ``prox_l2``, ``svd``) are optional fast paths;
``has_pinv`` / ``has_prox_l2`` say when they exist. Operators register themselves with
:func:`register_operator` so the shared adjointness test runs over all of them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Measurement = Tensor | tuple[Tensor, ...]

# --------------------------------------------------------------------------------------------
# Registry: name -> factory returning a small instance for the shared adjointness test.
# --------------------------------------------------------------------------------------------

OPERATOR_REGISTRY: dict[str, Callable[[], LinearOperator]] = {}


def register_operator(name: str):
    """Decorator for a zero-argument factory that builds a small example of an operator.

    Every registered factory is picked up by ``tests/modalities/test_adjoint.py``.
    """

    def wrap(factory: Callable[[], LinearOperator]):
        if name in OPERATOR_REGISTRY:
            raise ValueError(f"operator example {name!r} is registered twice")
        OPERATOR_REGISTRY[name] = factory
        return factory

    return wrap


# --------------------------------------------------------------------------------------------
# Measurement-space helpers (tensors or tuples of tensors)
# --------------------------------------------------------------------------------------------


def inner(u: Measurement, v: Measurement) -> Tensor:
    """Real inner product per batch item, ``sum Re(conj(u) * v)``; returns shape (B,)."""
    if isinstance(u, tuple):
        return sum(inner(a, b) for a, b in zip(u, v, strict=True))
    prod = (u.conj() * v).real if (u.is_complex() or v.is_complex()) else u * v
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def norm_sq(u: Measurement) -> Tensor:
    """Squared norm per batch item, shape (B,)."""
    return inner(u, u)


def tmap(fn: Callable[..., Tensor], *args: Measurement) -> Measurement:
    """Apply ``fn`` elementwise over tensors or matching tuples of tensors."""
    if isinstance(args[0], tuple):
        return tuple(fn(*parts) for parts in zip(*args, strict=True))
    return fn(*args)


def repeat_batch(y: Measurement, n: int) -> Measurement:
    """Repeat each batch item ``n`` times along dim 0 (item-major: a0 a0 a1 a1 ...)."""
    return tmap(lambda t: t.repeat_interleave(n, dim=0), y)


def batch_size(y: Measurement) -> int:
    return y[0].shape[0] if isinstance(y, tuple) else y.shape[0]


def _bcast(c: Tensor, ref: Tensor) -> Tensor:
    """Reshape a per-item (B,) tensor to broadcast against ``ref`` (B, ...)."""
    return c.reshape(-1, *([1] * (ref.dim() - 1)))


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


class Operator(nn.Module):
    """A (possibly nonlinear) forward model ``x -> A(x)``.

    Args:
        in_shape: image shape without batch, e.g. ``(1, 64, 64)``; ``None`` skips the check.
        out_shape: measurement shape without batch (informative; tuple-valued ops leave it None).
    Nonlinear operators get their vector-Jacobian product from autograd via :meth:`vjp`.
    """

    def __init__(self, in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None):
        super().__init__()
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.out_shape = tuple(out_shape) if out_shape is not None else None

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming this operator if ``x`` is not a real (B, *in_shape) tensor."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: expected a torch.Tensor image, got {type(x).__name__}")
        if self.in_shape is not None and tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"{self.name}: expected image of shape (B, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if x.is_complex():
            raise TypeError(f"{self.name}: the image domain is real (complex images are 2 channels), "
                            f"got dtype {x.dtype}")

    def check_measurement(self, y: Measurement) -> None:
        """Raise a ValueError naming this operator if ``y`` does not have ``(B, *out_shape)``."""
        if self.out_shape is None or isinstance(y, tuple):
            return
        if tuple(y.shape[1:]) != self.out_shape:
            raise ValueError(
                f"{self.name}: expected measurement of shape (B, {', '.join(map(str, self.out_shape))}), "
                f"got {tuple(y.shape)}"
            )

    def forward(self, x: Tensor) -> Measurement:  # pragma: no cover - abstract
        raise NotImplementedError

    def measured_support(self) -> Measurement | None:
        """Where the measurement holds data: 1 on measured entries, 0 on entries the forward model
        always sets to zero (unsampled k-space, masked pixels), broadcastable to ``(B, *out_shape)``
        (a tuple for stacked operators); ``None`` when every entry is measured.

        :meth:`~sciprior.modalities.noise.Problem.simulate` adds noise only on the support: an
        unmeasured entry is not a noisy measurement of zero (it would inflate residual norms, e.g.
        DPS's step normalisation ``||y - A x0||``, by a constant noise floor).
        """
        return None

    def vjp(self, x: Tensor, v: Measurement) -> Tensor:
        """Vector-Jacobian product ``J_A(x)^T v`` through autograd."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = self(x)
            (g,) = torch.autograd.grad(inner(out, v).sum(), x)
        return g


class LinearOperator(Operator):
    """A linear operator with its exact adjoint."""

    def forward(self, x: Tensor) -> Measurement:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: Measurement) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, x: Tensor, v: Measurement) -> Tensor:
        return self.adjoint(v)

    def normal(self, x: Tensor) -> Tensor:
        """``A^H A x`` (image domain to image domain)."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> LinearOperator:
        return AdjointOperator(self)

    # --- optional closed forms -------------------------------------------------------------
    @property
    def has_pinv(self) -> bool:
        return type(self).pinv is not LinearOperator.pinv

    @property
    def has_prox_l2(self) -> bool:
        return type(self).prox_l2 is not LinearOperator.prox_l2

    def pinv(self, y: Measurement) -> Tensor:
        """Moore-Penrose pseudo-inverse ``A^+ y`` (only where a closed form exists)."""
        raise NotImplementedError(f"{self.name} has no closed-form pseudo-inverse")

    def prox_l2(self, z: Tensor, y: Measurement, gamma: float | Tensor) -> Tensor:
        """``argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma)`` in closed form, where it exists."""
        raise NotImplementedError(f"{self.name} has no closed-form proximal operator")

    def svd(self):
        """Closed-form thin SVD ``A = U diag(s) Vh`` as tensors ``(U, s, Vh)`` (torch's convention; optional)."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    # --- algebra ----------------------------------------------------------------------------
    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __mul__(self, c: float) -> LinearOperator:
        if not isinstance(c, (int, float)):
            return NotImplemented
        return ScaledOperator(self, float(c))

    __rmul__ = __mul__


class AdjointOperator(LinearOperator):
    """``A^H`` as an operator of its own."""

    def __init__(self, op: LinearOperator):
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    @property
    def name(self) -> str:
        return f"{self.op.name}.H"

    def forward(self, y):
        return self.op.adjoint(y)

    def adjoint(self, x):
        return self.op.forward(x)

    @property
    def H(self) -> LinearOperator:
        return self.op


class ComposedOperator(LinearOperator):
    """``(A @ B) x = A(B(x))``."""

    def __init__(self, outer: LinearOperator, inner_op: LinearOperator):
        super().__init__(inner_op.in_shape, outer.out_shape)
        if outer.in_shape is not None and inner_op.out_shape is not None and outer.in_shape != inner_op.out_shape:
            raise ValueError(
                f"cannot compose {outer.name} (input {outer.in_shape}) with {inner_op.name} "
                f"(output {inner_op.out_shape})"
            )
        self.outer, self.inner_op = outer, inner_op

    @property
    def name(self) -> str:
        return f"({self.outer.name} @ {self.inner_op.name})"

    def forward(self, x):
        return self.outer(self.inner_op(x))

    def measured_support(self):
        return self.outer.measured_support()

    def adjoint(self, y):
        return self.inner_op.adjoint(self.outer.adjoint(y))


class SumOperator(LinearOperator):
    """``(A + B) x = A x + B x`` (same input and output spaces)."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        super().__init__(a.in_shape, a.out_shape)
        for attr in ("in_shape", "out_shape"):
            sa, sb = getattr(a, attr), getattr(b, attr)
            if sa is not None and sb is not None and sa != sb:
                raise ValueError(f"cannot add {a.name} and {b.name}: {attr} {sa} != {sb}")
        self.a, self.b = a, b

    @property
    def name(self) -> str:
        return f"({self.a.name} + {self.b.name})"

    def forward(self, x):
        return tmap(torch.add, self.a(x), self.b(x))

    def adjoint(self, y):
        return self.a.adjoint(y) + self.b.adjoint(y)


class ScaledOperator(LinearOperator):
    """``(c A) x``; keeps closed forms of ``A`` (pinv scales by 1/c, prox rescales gamma)."""

    def __init__(self, op: LinearOperator, c: float):
        super().__init__(op.in_shape, op.out_shape)
        if c == 0:
            raise ValueError(f"cannot scale {op.name} by zero")
        self.op, self.c = op, c

    @property
    def name(self) -> str:
        return f"{self.c:g}*{self.op.name}"

    def forward(self, x):
        return tmap(lambda t: self.c * t, self.op(x))

    def measured_support(self):
        return self.op.measured_support()

    def adjoint(self, y):
        return self.c * self.op.adjoint(y)

    @property
    def has_pinv(self) -> bool:
        return self.op.has_pinv

    @property
    def has_prox_l2(self) -> bool:
        return self.op.has_prox_l2

    def pinv(self, y):
        return self.op.pinv(y) / self.c

    def prox_l2(self, z, y, gamma):
        # ||cAx - y||^2/2 + ||x-z||^2/(2g) = c^2 (||Ax - y/c||^2/2 + ||x-z||^2/(2 g c^2))
        return self.op.prox_l2(z, tmap(lambda t: t / self.c, y), gamma * self.c**2)


class StackedOperator(LinearOperator):
    """Several linear measurements of one image, ``x -> (A_1 x, ..., A_k x)`` (multimodal fusion).

    The measurement is a tuple; pair it with a :class:`~sciprior.modalities.noise.StackedNoise`
    holding one noise model per operator.
    """

    def __init__(self, ops: Sequence[LinearOperator]):
        ops = list(ops)
        if not ops:
            raise ValueError("StackedOperator needs at least one operator")
        shapes = {op.in_shape for op in ops if op.in_shape is not None}
        if len(shapes) > 1:
            raise ValueError(f"StackedOperator: operators disagree on the image shape: {sorted(shapes)}")
        super().__init__(shapes.pop() if shapes else None, None)
        self.ops = nn.ModuleList(ops)

    @property
    def name(self) -> str:
        return "Stack[" + ", ".join(op.name for op in self.ops) + "]"

    def forward(self, x):
        return tuple(op(x) for op in self.ops)

    def measured_support(self):
        parts = [op.measured_support() for op in self.ops]
        if all(p is None for p in parts):
            return None
        return tuple(p if p is not None else 1.0 for p in parts)  # 1.0: every entry of that measurement

    def adjoint(self, y):
        if not isinstance(y, tuple) or len(y) != len(self.ops):
            raise ValueError(f"{self.name}: expected a tuple of {len(self.ops)} measurements")
        return sum(op.adjoint(yi) for op, yi in zip(self.ops, y))


# --------------------------------------------------------------------------------------------
# Generic operators reused by every modality
# --------------------------------------------------------------------------------------------


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

    def svd(self):
        return None


def _as_batch_scalar(gamma: float | Tensor, ref: Tensor) -> Tensor | float:
    if isinstance(gamma, Tensor) and gamma.dim() == 1:
        return _bcast(gamma, ref)
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


def operator_matrix(op: LinearOperator, in_shape: Sequence[int] | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Dense matrix of a (small) linear operator, built column by column from the identity basis.

    With ``dtype=torch.float64`` a double-precision copy of the operator is applied. Complex
    outputs give complex matrices. Shape ``(m, d)``.
    """
    in_shape = tuple(in_shape or op.in_shape)
    d = math.prod(in_shape)
    if dtype == torch.float64:
        op = copy.deepcopy(op).double()
    eye = torch.eye(d, dtype=dtype).reshape(d, *in_shape)
    with torch.no_grad():
        out = op(eye)
    if isinstance(out, tuple):
        out = torch.cat([o.reshape(d, -1) for o in out], dim=1)
    return out.reshape(d, -1).T


# --------------------------------------------------------------------------------------------
# Adjointness check
# --------------------------------------------------------------------------------------------


def check_adjoint(op: LinearOperator, batch: int = 2, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> float:
    """Relative adjointness error ``|<Ax, y> - <x, A^H y>| / (|<Ax,y>| + |<x,A^H y>|)`` (max over batch).

    ``x`` and ``y`` are random (``y`` drawn in the measurement's own dtype, complex where needed).
    """
    if op.in_shape is None:
        raise ValueError(f"check_adjoint: {op.name} has no in_shape; give it one")
    g = generator or torch.Generator().manual_seed(0)
    x = torch.randn((batch, *op.in_shape), generator=g, dtype=dtype)
    ax = op(x)

    def rand_like(t: Tensor) -> Tensor:
        if t.is_complex():
            return torch.complex(torch.randn(t.shape, generator=g, dtype=dtype),
                                 torch.randn(t.shape, generator=g, dtype=dtype)).to(t.dtype)
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    y = tmap(rand_like, ax)
    aty = op.adjoint(y)
    if aty.shape != x.shape:
        raise ValueError(f"check_adjoint: {op.name}.adjoint returned shape {tuple(aty.shape)}, "
                         f"expected {tuple(x.shape)}")
    lhs = inner(ax, y).double()
    rhs = inner(x, aty).double()
    err = (lhs - rhs).abs() / (lhs.abs() + rhs.abs()).clamp_min(1e-30)
    return float(err.max())


# --------------------------------------------------------------------------------------------
# Small examples of the generic operators, checked by the shared adjointness test
# --------------------------------------------------------------------------------------------


def _example_mask() -> Mask:
    g = torch.Generator().manual_seed(1)
    return Mask((torch.rand((1, 12, 10), generator=g) > 0.4).float(), (1, 12, 10))


register_operator("identity")(lambda: Identity((2, 6, 5)))
register_operator("mask")(_example_mask)
register_operator("block_mean_2d")(lambda: BlockMean(2, (2, 8, 6)))
register_operator("block_mean_3d")(lambda: BlockMean((1, 2, 3), (1, 4, 6, 9)))
register_operator("convolution_2d")(lambda: Convolution(gaussian_kernel(5, 1.2), (1, 16, 12)))
register_operator("convolution_3d")(lambda: Convolution(gaussian_kernel(3, 0.8, ndim=3), (1, 6, 8, 7)))
register_operator("matrix")(lambda: MatrixOperator(torch.randn(7, 12, generator=torch.Generator().manual_seed(2)),
                                                   (3, 4)))
register_operator("composed_scaled_sum")(
    lambda: 0.5 * (BlockMean(2, (1, 8, 8)) @ Convolution(gaussian_kernel(3, 1.0), (1, 8, 8)))
    + BlockMean(2, (1, 8, 8))
)
register_operator("stacked")(lambda: StackedOperator([_example_mask(), BlockMean(2, (1, 12, 10)),
                                                      Identity((1, 12, 10)).H]))
