"""Linear algebra on batches of image-shaped tensors: each batch row (item) is independent.

The one copy of the helpers every layer uses: per-row inner products (:func:`rowdot`), per-row scalars
broadcast against a batch (:func:`bcast`), the real dtype of a (possibly complex or tuple-valued)
measurement (:func:`real_dtype`), batched conjugate gradients (:func:`conjugate_gradient`) and the
power-iteration operator norm (:func:`operator_norm`). Nothing here knows operators beyond ``op(x)`` and
``op.adjoint(y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def bcast(v: Tensor, ref: Tensor) -> Tensor:
    """Reshape a per-row ``(B,)`` tensor so that it broadcasts against ``ref`` ``(B, ...)``."""
    return v.reshape(-1, *([1] * (ref.dim() - 1)))


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Real inner product per row, ``sum Re(conj(a) * b)`` over all but the first axis; shape ``(B,)``."""
    prod = (a.conj() * b).real if (a.is_complex() or b.is_complex()) else a * b
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def real_dtype(y: Tensor | Sequence[Tensor]) -> torch.dtype:
    """The real floating dtype of a measurement (a tensor, or the first tensor of a tuple): ``float32`` for
    ``complex64`` data; integer data (e.g. counts) give the default dtype."""
    t = y[0] if isinstance(y, (tuple, list)) else y
    dtype = t.real.dtype if t.is_complex() else t.dtype
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor | None = None,
                       iters: int = 20, tol: float = 0.0) -> Tensor:
    """Solve ``M x = rhs`` for a symmetric positive (semi-)definite ``M`` given as ``apply``.

    Batched: every item has its own step sizes and stops updating once its relative residual
    ``||r|| / ||rhs||`` falls below ``tol``. Returns x with the shape of ``rhs``.
    """

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return bcast(rowdot(a, b), a)

    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rs = dot(r, r)
    stop = (tol * tol) * dot(rhs, rhs)
    tiny = torch.finfo(rhs.real.dtype if rhs.is_complex() else rhs.dtype).tiny
    for _ in range(iters):
        active = rs > stop
        if not bool(active.any()):
            break
        mp = apply(p)
        alpha = torch.where(active, rs / dot(p, mp).clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = dot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
    return x


def operator_norm(op, shape: Sequence[int], *, iters: int = 50, tol: float = 1e-7, seed: int = 0,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """Largest singular value ``||op||_2`` by power iteration on ``op^H op``.

    Args:
        op: a linear operator (``op(x)`` and ``op.adjoint(y)``; ``op.in_shape`` is checked when set).
        shape: the full input shape ``(B, *in_shape)``. Each batch row is iterated on its own, so the
            result is a (B,) tensor: per-item norms of operators that act differently on each row
            (e.g. per-item weights). For an ordinary operator pass ``(1, *in_shape)`` and take
            ``float(...)``.
        iters: maximum number of power iterations (one ``op`` and one ``op.adjoint`` each).
        tol: stop when every row's estimate changes by less than ``tol`` relative.
        seed: seed of the (CPU) random start vector, so the estimate is reproducible on any device.
    Returns ``sqrt(||op^H op v||)`` for the last unit iterate ``v``: a lower bound that converges to
    ``||op||`` (slowly when the top singular values are clustered, e.g. finite differences; callers
    that need an upper bound should add a safety margin).
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"operator_norm: iters must be a positive int, got {iters!r}")
    shape = tuple(int(s) for s in shape)
    in_shape = getattr(op, "in_shape", None)
    if in_shape is not None and shape[1:] != tuple(in_shape):
        raise ValueError(f"operator_norm: shape {shape} is not (B, *in_shape) for {getattr(op, 'name', op)} "
                         f"with in_shape {in_shape}")
    dtype = dtype or torch.get_default_dtype()
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(shape, generator=g, dtype=dtype).to(device or "cpu")
    tiny = torch.finfo(dtype).tiny
    est = torch.zeros(shape[0], dtype=dtype, device=x.device)
    with torch.no_grad():
        for _ in range(iters):
            x = x / bcast(rowdot(x, x).sqrt().clamp_min(tiny), x)
            z = op.adjoint(op(x))
            new = rowdot(z, z).sqrt()
            done = bool(((new - est).abs() <= tol * new).all())
            est = new
            if done or bool((new == 0).all()):
                break
            x = z
    return est.sqrt()


__all__ = ["bcast", "conjugate_gradient", "operator_norm", "real_dtype", "rowdot"]
