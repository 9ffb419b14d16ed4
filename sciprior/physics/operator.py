"""The operator contract: forward models from the prior's image domain to the measurement domain.

Shapes: images are ``(B, *in_shape)`` (``in_shape`` = ``(C, H, W)`` or ``(C, D, H, W)``), real.
Measurements are ``(B, *out_shape)`` tensors, real or complex, or a tuple of such tensors for a
:class:`StackedOperator` (several measurements of one image: multimodal fusion).

Every :class:`LinearOperator` has ``forward`` and ``adjoint`` (the exact adjoint for the real inner
product ``<u, v> = sum Re(conj(u) v)``), ``.H``, ``normal`` (A^H A), composition ``A @ B``, sums
``A + B`` and scaling ``c * A``. Closed forms (``pinv``, ``prox_l2``, ``svd``) are optional fast paths;
``has_pinv`` / ``has_prox_l2`` say when they exist. Generic operators are in :mod:`sciprior.physics.generic`,
slice stacks in :mod:`sciprior.physics.stack`; every example operator a package registers
(:func:`sciprior.physics.testing.register_example`) passes the one shared adjointness test.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sciprior.linalg import rowdot

Measurement = Tensor | tuple[Tensor, ...]

# --------------------------------------------------------------------------------------------
# Measurement-space helpers (tensors or tuples of tensors)
# --------------------------------------------------------------------------------------------


def inner(u: Measurement, v: Measurement) -> Tensor:
    """Real inner product per batch item, ``sum Re(conj(u) * v)`` (tuples: summed over their parts); shape (B,)."""
    if isinstance(u, tuple):
        return sum(inner(a, b) for a, b in zip(u, v, strict=True))
    return rowdot(u, v)


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

        :meth:`~sciprior.physics.problem.Problem.simulate` adds noise only on the support: an
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

    The measurement is a tuple; pair it with a :class:`~sciprior.physics.noise.StackedNoise`
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
