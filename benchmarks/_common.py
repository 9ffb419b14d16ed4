"""Shared pieces of the benchmarks: the MCGdiff Gaussian-mixture protocol, a fast exact GMM denoiser,
exact posterior sampling, the sliced Wasserstein distance, machine info and atomic writes.

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

from sciprior.modalities.base import MatrixOperator
from sciprior.modalities.noise import Gaussian, Problem
from sciprior.priors.analytic import GaussianMixturePrior, MixturePosterior
from sciprior.priors.base import Denoiser, sigma_batch

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


def make_case(d_x: int, d_y: int, seed: int, sigma_y: float | None = None) -> GMMCase:
    """A random problem: prior weights ``w_k = z_k^2 / sum z^2``, ``A = U diag(s) V^T`` with Haar ``U, V``
    and ``s ~ U(0, 1)`` (sorted), ``x ~ prior``, ``y = A x + sigma_y eps``.

    ``sigma_y``: None draws it as the MCGdiff authors' reference code does (``sigma_y = u * max(s)``,
    ``u ~ U(0, 1)``, one per problem); a float fixes it.
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
    return GMMCase(prior, problem, float(sigma_y), s, x)


class FastGMMDenoiser(Denoiser):
    """The exact denoiser of an isotropic :class:`GaussianMixturePrior`, with matrix products.

    Same function as ``GaussianMixturePrior.forward`` (float64 inside, output in the input's dtype),
    but ``||x - mu_k||^2 = ||x||^2 - 2 x.mu_k + ||mu_k||^2`` avoids the (rows, K, d) difference tensor, which
    at d = 800 and 1000 rows costs 160 MB and dominates the benchmark's run time.
    """

    def __init__(self, prior: GaussianMixturePrior):
        super().__init__()
        if not prior.isotropic:
            raise ValueError("FastGMMDenoiser needs isotropic component covariances")
        self.register_buffer("log_w", prior.log_w.clone())
        self.register_buffer("means", prior.means.clone())
        self.register_buffer("var", prior.covs.clone())
        self.register_buffer("mean_sq", (prior.means**2).sum(1))
        self.sigma_data, self.sigma_min, self.sigma_max = prior.sigma_data, prior.sigma_min, prior.sigma_max
        self.image_shape = prior.image_shape

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        s2 = sigma_batch(sigma, x).double()[:, None] ** 2  # (R, 1)
        xf = x.reshape(x.shape[0], -1).double()
        d = xf.shape[1]
        tot = self.var[None] + s2  # (R, K)
        dist = (xf**2).sum(1, keepdim=True) - 2 * xf @ self.means.T + self.mean_sq[None]
        gamma = (self.log_w - 0.5 * dist / tot - 0.5 * d * torch.log(tot)).softmax(-1)
        out = (gamma * s2 / tot) @ self.means + (gamma * self.var[None] / tot).sum(1, keepdim=True) * xf
        return out.to(x.dtype).reshape(x.shape)


def sample_posterior(post: MixturePosterior, n: int, generator: torch.Generator) -> Tensor:
    """(B, n, *image_shape) exact draws; one Cholesky factor when all component covariances agree.

    Same law as ``MixturePosterior.sample``, without its (n, d, d) gather of per-draw factors (5 GB at
    d = 800, n = 1000).
    """
    covs = post.covs
    if not torch.allclose(covs, covs[:1].expand_as(covs), rtol=1e-10, atol=1e-12):
        return post.sample(n, generator=generator)
    b, k, d = post.means.shape
    chol = torch.linalg.cholesky(covs[0] + 1e-12 * torch.eye(d, dtype=covs.dtype))
    out = torch.empty(b, n, d, dtype=post.means.dtype)
    for i in range(b):
        comp = torch.multinomial(post.log_weights[i].softmax(-1), n, replacement=True, generator=generator)
        z = torch.randn((n, d), generator=generator, dtype=post.means.dtype)
        out[i] = post.means[i, comp] + z @ chol.T
    return out.reshape(b, n, *post.image_shape)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Sliced 1-Wasserstein distance between two equal-size sample sets (n, d), averaged over the
    given unit ``directions`` (L, d); per direction, ``W1 = mean |sort(a.t) - sort(b.t)|``."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal sample sets: {tuple(a.shape)} vs {tuple(b.shape)}")
    pa = torch.sort(a.double() @ directions.T, dim=0).values
    pb = torch.sort(b.double() @ directions.T, dim=0).values
    return float((pa - pb).abs().mean())


def random_directions(num: int, d: int, generator: torch.Generator) -> Tensor:
    v = torch.randn(num, d, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def machine_info() -> str:
    """One line: CPU model, cores, OS, Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / n)
