"""Volumes ``(B, C, D, H, W)`` measured slice by slice.

- :class:`SliceStackOperator`: one 2D operator applied to every slice (a stack of CT slices each measured by
  the 2D projector, per-slice 2D SENSE MRI, ...). It is block-diagonal over slices, so its adjoint, normal
  operator and closed forms are the 2D ones slice by slice. Measurements are ``(B, D, *out2d)``: slice ``d``
  of item ``b`` is ``y[b, d]``.
- :class:`PerSliceOperator`: a different 2D operator per slice (e.g. per-slice coil maps of a k-space volume).
- :func:`stack_operator`: the operator of a ``D``-slice stack from one shared operator or a list of them.
- :func:`to_slices` / :func:`from_slices`: ``(B, C, D, H, W) <-> (B * D, C, H, W)``, item-major.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from sciprior.physics.operator import LinearOperator, Measurement, tmap

# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def to_slices(x: Tensor) -> Tensor:
    """``(B, C, D, H, W) -> (B * D, C, H, W)``, item-major (all slices of item 0 first)."""
    if x.dim() != 5:
        raise ValueError(f"to_slices: expected a (B, C, D, H, W) volume, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    return x.transpose(1, 2).reshape(b * d, c, h, w)


def from_slices(xs: Tensor, depth: int) -> Tensor:
    """Inverse of :func:`to_slices`: ``(B * D, C, H, W) -> (B, C, D, H, W)``."""
    if xs.dim() != 4 or xs.shape[0] % depth:
        raise ValueError(f"from_slices: expected (B * {depth}, C, H, W) slices, got shape {tuple(xs.shape)}")
    n, c, h, w = xs.shape
    return xs.reshape(n // depth, depth, c, h, w).transpose(1, 2).contiguous()


def _measurement_to_slices(y: Measurement, depth: int, who: str) -> Measurement:
    """``(B, D, *out2d) -> (B * D, *out2d)`` (tensors or tuples of tensors)."""

    def cut(t: Tensor) -> Tensor:
        if t.dim() < 2 or t.shape[1] != depth:
            raise ValueError(f"{who}: expected a measurement of shape (B, {depth}, ...), "
                             f"got {tuple(t.shape)}")
        return t.reshape(t.shape[0] * depth, *t.shape[2:])

    return tmap(cut, y)


def _measurement_from_slices(ys: Measurement, depth: int) -> Measurement:
    return tmap(lambda t: t.reshape(t.shape[0] // depth, depth, *t.shape[1:]), ys)


def _cat_measurements(parts: list[Measurement]) -> Measurement:
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p, 0) for p in zip(*parts))
    return torch.cat(parts, 0)


class SliceStackOperator(LinearOperator):
    """A 2D linear operator applied to every slice ``x[:, :, d]`` of ``(B, C, D, H, W)`` volumes.

    Args:
        op2d: the 2D operator on ``(N, C, H, W)`` images (needs ``in_shape``); e.g. a CT projector or a
            multi-coil SENSE operator.
        depth: number of slices ``D``.
        chunk_size: apply ``op2d`` to at most this many slices per call (over the whole batch), which
            bounds the operator's transient memory; ``None`` applies it to all ``B * D`` slices at once.
            The result does not depend on it, up to rounding where ``op2d``'s kernels (matrix products,
            FFTs) round differently for different batch sizes.

    Shapes: image ``(B, C, D, H, W)`` with ``(C, H, W) = op2d.in_shape``; measurement
    ``(B, D, *op2d.out_shape)`` (a tuple of such tensors when ``op2d`` returns a tuple). Units and noise
    convention are those of ``op2d`` (e.g. line integrals for CT, k-space for MRI), slice by slice.
    Closed forms: ``pinv`` and ``prox_l2`` exist exactly when ``op2d`` has them (block-diagonal).
    """

    def __init__(self, op2d: LinearOperator, depth: int, chunk_size: int | None = None):
        if not isinstance(op2d, LinearOperator):
            raise TypeError(f"SliceStackOperator: op2d must be a LinearOperator, got {type(op2d).__name__}")
        if op2d.in_shape is None or len(op2d.in_shape) != 3:
            raise ValueError(f"SliceStackOperator: {op2d.name} must have a 2D image shape (C, H, W), "
                             f"got in_shape={op2d.in_shape}")
        if isinstance(depth, bool) or int(depth) != depth or depth < 1:
            raise ValueError(f"SliceStackOperator: depth must be a positive int, got {depth!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"SliceStackOperator: chunk_size must be None or >= 1, got {chunk_size!r}")
        c, h, w = op2d.in_shape
        depth = int(depth)
        out = (depth, *op2d.out_shape) if op2d.out_shape is not None else None
        super().__init__((c, depth, h, w), out)
        self.op2d = op2d
        self.depth = depth
        self.chunk_size = int(chunk_size) if chunk_size is not None else None

    @property
    def name(self) -> str:
        return f"SliceStack[{self.op2d.name} x {self.depth}]"

    def measured_support(self):
        """The 2D operator's support, shared by every slice (when it broadcasts over ``(B, D)``)."""
        s = self.op2d.measured_support()
        if isinstance(s, Tensor) and self.op2d.out_shape is not None and s.dim() <= len(self.op2d.out_shape):
            return s
        return None  # tuple-valued or batch-shaped supports: every entry counts as measured

    # --- per-slice application ------------------------------------------------------------------
    def _chunked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` over leading-dim chunks of the (B * D)-row arguments, results concatenated."""
        n = args[0][0].shape[0] if isinstance(args[0], tuple) else args[0].shape[0]
        k = self.chunk_size
        if k is None or n <= k:
            return fn(*args)

        def part(a: Any, i: int) -> Any:
            if isinstance(a, tuple):
                return tuple(t[i:i + k] for t in a)
            if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n:
                return a[i:i + k]
            return a

        return _cat_measurements([fn(*(part(a, i) for a in args)) for i in range(0, n, k)])

    def slices_of(self, y: Measurement) -> Measurement:
        """A measurement ``(B, D, ...)`` as ``(B * D, ...)`` rows of ``op2d``'s measurements."""
        return _measurement_to_slices(y, self.depth, self.name)

    def stack(self, ys: Measurement) -> Measurement:
        """Inverse of :meth:`slices_of`: ``(B * D, ...) -> (B, D, ...)``."""
        return _measurement_from_slices(ys, self.depth)

    def forward(self, x: Tensor) -> Measurement:
        self.check_input(x)
        return self.stack(self._chunked(self.op2d, to_slices(x)))

    def adjoint(self, y: Measurement) -> Tensor:
        self.check_measurement(y)
        return from_slices(self._chunked(self.op2d.adjoint, self.slices_of(y)), self.depth)

    def normal(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return from_slices(self._chunked(self.op2d.normal, to_slices(x)), self.depth)

    # --- closed forms (block-diagonal) ---------------------------------------------------------
    @property
    def has_pinv(self) -> bool:
        return self.op2d.has_pinv

    @property
    def has_prox_l2(self) -> bool:
        return self.op2d.has_prox_l2

    def pinv(self, y: Measurement) -> Tensor:
        if not self.has_pinv:
            raise NotImplementedError(f"{self.name}: {self.op2d.name} has no closed-form pseudo-inverse")
        return from_slices(self._chunked(self.op2d.pinv, self.slices_of(y)), self.depth)

    def prox_l2(self, z: Tensor, y: Measurement, gamma: float | Tensor) -> Tensor:
        """Slice-wise ``op2d.prox_l2``; a per-item ``gamma`` of shape (B,) applies to all of its slices."""
        if not self.has_prox_l2:
            raise NotImplementedError(f"{self.name}: {self.op2d.name} has no closed-form proximal operator")
        self.check_input(z)
        g = gamma
        if isinstance(g, Tensor) and g.dim() == 1:
            g = g.repeat_interleave(self.depth)
        return from_slices(self._chunked(self.op2d.prox_l2, to_slices(z), self.slices_of(y), g), self.depth)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, chunk_size={self.chunk_size}"


class PerSliceOperator(LinearOperator):
    """One 2D operator per slice of a ``(B, C, D, H, W)`` stack (block-diagonal over depth).

    For slices measured with different operators (e.g. per-slice ESPIRiT coil maps of a fastMRI
    volume); slices sharing one operator use :class:`SliceStackOperator`.
    The measurement is ``(B, D, *out2d)``; the adjoint is the per-slice adjoints.
    """

    def __init__(self, ops: Sequence[LinearOperator]):
        ops = list(ops)
        if not ops:
            raise ValueError("PerSliceOperator: needs at least one operator")
        in2d, out2d = ops[0].in_shape, ops[0].out_shape
        for op in ops[1:]:
            if op.in_shape != in2d or op.out_shape != out2d:
                raise ValueError(f"PerSliceOperator: slice operators disagree on shapes "
                                 f"({op.in_shape} -> {op.out_shape} vs {in2d} -> {out2d})")
        if in2d is None or len(in2d) != 3 or out2d is None:
            raise ValueError(f"PerSliceOperator: slice operators need a (C, H, W) in_shape and an "
                             f"out_shape, got {in2d} -> {out2d}")
        super().__init__((in2d[0], len(ops), *in2d[1:]), (len(ops), *out2d))
        self.ops = torch.nn.ModuleList(ops)
        self.depth = len(ops)

    @property
    def name(self) -> str:
        return f"PerSlice[{self.depth} x {self.ops[0].name}]"

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return torch.stack([op(x[:, :, k]) for k, op in enumerate(self.ops)], dim=1)

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return torch.stack([op.adjoint(y[:, k]) for k, op in enumerate(self.ops)], dim=2)


def stack_operator(ops: LinearOperator | Sequence[LinearOperator], depth: int) -> LinearOperator:
    """The operator of a ``depth``-slice stack: shared (one operator) or per slice (a list)."""
    if isinstance(ops, LinearOperator):
        return SliceStackOperator(ops, depth)
    if len(ops) != depth:
        raise ValueError(f"stack_operator: {len(ops)} operators for {depth} slices")
    return PerSliceOperator(ops)
