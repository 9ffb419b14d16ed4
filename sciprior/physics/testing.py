"""Checks every operator of the package must pass, and the registry of their small examples.

``register_example(name)`` registers a zero-argument factory that builds a small instance of an operator.
Examples live in ``examples.py`` modules (:mod:`sciprior.physics.examples`, ``sciprior.modalities.<name>.examples``)
that only the tests import (:func:`load_examples`), so importing a modality does not build or register anything.
The one shared adjointness test (``tests/physics/test_adjoint.py``) runs :func:`check_adjoint` on every example.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sciprior.physics.operator import LinearOperator, inner, tmap

#: example name -> factory returning a small instance of a linear operator
EXAMPLES: dict[str, Callable[[], LinearOperator]] = {}


def register_example(name: str):
    """Decorator for a zero-argument factory that builds a small example of an operator (the shared
    adjointness test runs every registered example)."""

    def wrap(factory: Callable[[], LinearOperator]):
        if name in EXAMPLES:
            raise ValueError(f"operator example {name!r} is registered twice")
        EXAMPLES[name] = factory
        return factory

    return wrap


def load_examples(modules: Iterable[str]) -> dict[str, Callable[[], LinearOperator]]:
    """Import the example modules ``modules`` (dotted names; each registers its examples on import) and return
    the whole registry."""
    for name in modules:
        importlib.import_module(name)
    return EXAMPLES


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
