"""Shared pieces of the benchmarks: the MCGdiff Gaussian-mixture protocol (with a dense operator whose
closed forms go through its SVD), the sliced Wasserstein distance, machine info and atomic writes.

Nothing here downloads anything; every random draw comes from an explicit, seeded generator.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks._timing import cpu_model
from sciprior.io import write_text_atomic
from sciprior.physics.generic import MatrixOperator
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from sciprior.priors.analytic import GaussianMixturePrior

# --------------------------------------------------------------------------------------------
# The Gaussian-mixture protocol of MCGdiff (Cardoso et al., ICLR 2024, Sec. 4 / App. B)
# --------------------------------------------------------------------------------------------

GRID = range(-2, 3)
SPACING = 8.0


def grid_means(d_x: int) -> Tensor:
    """The 25 means ``(8i, 8j, 8i, 8j, ...)`` for ``(i, j)`` in ``{-2..2}^2``, shape (25, d_x); d_x even."""
    if d_x % 2:
        raise ValueError(f"the mixture protocol tiles coordinate pairs: d_x must be even, got {d_x}")
    rows = [[SPACING * i, SPACING * j] * (d_x // 2) for i in GRID for j in GRID]
    return torch.tensor(rows, dtype=torch.float64)


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed orthogonal (n, n) matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@dataclass
class GMMCase:
    """One random problem of the protocol."""

    prior: GaussianMixturePrior
    problem: Problem
    sigma_y: float
    singular_values: Tensor
    x_true: Tensor


def make_case(d_x: int, d_y: int, seed: int, sigma_y: float | None = None,
              dtype: torch.dtype = torch.float64) -> GMMCase:
    """A random problem: prior weights ``w_k = z_k^2 / sum z^2``, ``A = U diag(s) V^T`` with Haar ``U, V``
    and ``s ~ U(0, 1)`` (sorted), ``x ~ prior``, ``y = A x + sigma_y eps``.

    ``sigma_y``: None draws it as the MCGdiff authors' reference code does (``sigma_y = u * max(s)``,
    ``u ~ U(0, 1)``, one per problem); a float fixes it. Everything is drawn in float64; ``dtype`` is the
    precision of the returned operator and measurement (what solvers run in), and the exact posterior
    (``case.prior.posterior(case.problem)``) is that of the rounded operator and measurement.
    """
    g = torch.Generator().manual_seed(int(seed))
    weights = torch.randn(25, generator=g, dtype=torch.float64) ** 2
    weights = weights / weights.sum()
    prior = GaussianMixturePrior(weights, grid_means(d_x), torch.ones(25, dtype=torch.float64),
                                 image_shape=(1, d_x))
    u = random_orthogonal(d_y, g)
    v = random_orthogonal(d_x, g)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=torch.float64), descending=True).values
    a = u @ torch.diag(s) @ v[:d_y]
    if sigma_y is None:
        sigma_y = float(torch.rand((), generator=g, dtype=torch.float64)) * float(s.max())
    x = prior.sample(1, generator=g)
    problem = Problem.simulate(MatrixOperator(a, (1, d_x)), x, Gaussian(sigma_y), generator=g)
    if dtype != torch.float64:
        problem = Problem(MatrixOperator(a.to(dtype), (1, d_x)), problem.y.to(dtype), problem.noise,
                          problem.image_shape, reference=x.to(dtype))
    return GMMCase(prior, problem, float(sigma_y), s, x)


def sorted_projections(a: Tensor, directions: Tensor) -> Tensor:
    """(L, n) sorted projections ``sort(directions @ a^T)`` of a sample set ``a`` (n, d) on unit
    ``directions`` (L, d) (sorted along a contiguous axis; computed once for a fixed reference set)."""
    return torch.sort(directions @ a.double().T, dim=1).values


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Sliced 1-Wasserstein distance between two equal-size sample sets (n, d), averaged over the
    given unit ``directions`` (L, d); per direction, ``W1 = mean |sort(a.t) - sort(b.t)|``."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal sample sets: {tuple(a.shape)} vs {tuple(b.shape)}")
    return sliced_wasserstein_sorted(sorted_projections(a, directions), sorted_projections(b, directions))


def sliced_wasserstein_sorted(pa: Tensor, pb: Tensor) -> float:
    """:func:`sliced_wasserstein` from two :func:`sorted_projections` (L, n)."""
    if pa.shape != pb.shape:
        raise ValueError(f"sliced_wasserstein needs equal sample sets: {tuple(pa.shape)} vs {tuple(pb.shape)}")
    return float((pa - pb).abs().mean())


def random_directions(num: int, d: int, generator: torch.Generator) -> Tensor:
    v = torch.randn(num, d, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def machine_info() -> str:
    """One line: CPU model, cores, OS, Python and torch versions."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def table_path(out: str | Path | None, published: Path, quick: bool) -> Path:
    """Where a benchmark writes its table: ``out`` when given, else the published table under docs/ for a full
    run, and a scratch file (``<tmp>/sciprior-benchmarks/<name>``) for a ``--quick`` check, which must never
    overwrite the published full table."""
    if out is not None:
        return Path(out)
    if quick:
        return Path(tempfile.gettempdir()) / "sciprior-benchmarks" / published.name
    return published


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`sciprior.io.write_text_atomic`)."""
    return write_text_atomic(path, text)


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / n)
