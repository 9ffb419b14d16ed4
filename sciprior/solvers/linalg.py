"""Batched Krylov solvers on image-shaped tensors (each batch item solved independently)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-item real inner product, shape (B, 1, ..., 1) broadcastable against ``a``."""
    p = (a.conj() * b).real if a.is_complex() else a * b
    return p.reshape(p.shape[0], -1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor | None = None,
                       iters: int = 20, tol: float = 0.0) -> Tensor:
    """Solve ``M x = rhs`` for a symmetric positive (semi-)definite ``M`` given as ``apply``.

    Batched: every item has its own step sizes and stops updating once its relative residual
    ``||r|| / ||rhs||`` falls below ``tol``. Returns x with the shape of ``rhs``.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rs = _dot(r, r)
    stop = (tol * tol) * _dot(rhs, rhs)
    tiny = torch.finfo(rhs.real.dtype if rhs.is_complex() else rhs.dtype).tiny
    for _ in range(iters):
        active = rs > stop
        if not bool(active.any()):
            break
        mp = apply(p)
        alpha = torch.where(active, rs / _dot(p, mp).clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = _dot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
    return x
