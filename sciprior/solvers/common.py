"""Shared pieces of every solver: the :class:`Result`, per-item seeded noise, NFE counting, progress.

Conventions:
- A solver is a plain function ``solve(denoiser, problem, *, steps, num_samples, seeds, callback,
  progress, ...) -> Result``.
- ``num_samples`` posterior samples are drawn for each of the problem's B items; internally the
  problem is repeated item-major to a batch of ``B * num_samples``.
- ``seeds`` (one int per item, default ``0..B-1``) seed that item's noise with its own CPU generator,
  so results do not depend on the device, the batch makeup or the number of devices.
- ``callback(step: int, x: Tensor, x0: Tensor, sigma: float)`` is called once per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sciprior.linalg import real_dtype
from sciprior.physics.problem import Problem
from sciprior.priors.base import CountingDenoiser, Denoiser, karras_sigmas

Callback = Callable[[int, Tensor, Tensor, float], None]


@dataclass
class Result:
    """What a solver returns.

    Attributes:
        samples: (B, S, *image_shape) posterior samples (S = num_samples).
        mean: (B, *image_shape) sample mean (the reconstruction).
        std: (B, *image_shape) sample standard deviation, or None when S == 1.
        nfe: network (denoiser) evaluations per sample trajectory (batched calls).
        timings: seconds, at least ``{"total": ...}``.
        info: solver-specific extras (e.g. SMC effective sample sizes).
    """

    samples: Tensor
    mean: Tensor
    std: Tensor | None
    nfe: int
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class ItemNoise:
    """Gaussian noise for a batch of ``B * S`` rows where item ``b`` draws from its own generator.

    Rows are item-major (``b*S + s``). Noise is drawn on the CPU and moved to the target device, so a
    seed gives the same numbers on every device. Normal draws are made in float32 (torch's vectorised
    CPU sampler, about 5x faster than its float64 path, which dominated float64 solver runs) and cast
    to the state dtype; uniform draws are made in the state dtype (float64 for float64 states).
    """

    def __init__(self, seeds: Sequence[int], num_samples: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        self.dtype = dtype

    def _draw(self, fn, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        if len(self.generators) == 1:  # one item: no concatenation copy
            out = fn((self.num_samples, *shape), generator=self.generators[0], dtype=dtype)
        else:
            out = torch.empty((len(self.generators) * self.num_samples, *shape), dtype=dtype)
            for i, g in enumerate(self.generators):
                out[i * self.num_samples:(i + 1) * self.num_samples] = fn(
                    (self.num_samples, *shape), generator=g, dtype=dtype)
        return out.to(device=self.device, dtype=self.dtype)

    def randn(self, *shape: int) -> Tensor:
        """Standard normal noise of shape ``(B * S, *shape)`` in the state dtype."""
        return self._draw(torch.randn, shape, torch.float32 if self.dtype == torch.float64 else self.dtype)

    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) noise of shape ``(B * S, *shape)``."""
        return self._draw(torch.rand, shape, self.dtype)

    def generator(self, item: int) -> torch.Generator:
        return self.generators[item]


@dataclass
class Setup:
    """What :func:`prepare` hands a solver."""

    denoiser: CountingDenoiser
    problem: Problem  # repeated to B * S rows
    noise: ItemNoise
    batch: int
    num_samples: int
    device: torch.device
    dtype: torch.dtype
    start: float

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch * self.num_samples, *self.problem.image_shape)


def problem_device(problem: Problem) -> tuple[torch.device, torch.dtype]:
    """The device and real floating dtype of a problem's measurement (the working precision of a solver)."""
    y = problem.y[0] if isinstance(problem.y, tuple) else problem.y
    return y.device, real_dtype(y)


def sampling_sigmas(denoiser: Denoiser, steps: int, sigma_min: float | None = None,
                    sigma_max: float | None = None, rho: float = 7.0) -> Tensor:
    """The EDM schedule of every sampler: ``karras_sigmas(steps, ...)`` (float64, ``steps`` decreasing levels plus
    a trailing 0); ``sigma_min``/``sigma_max`` default to the denoiser's trained range."""
    return karras_sigmas(steps, sigma_min if sigma_min is not None else denoiser.sigma_min,
                         sigma_max if sigma_max is not None else denoiser.sigma_max, rho)


def prior_variance(sigma: float, sigma_data: float) -> float:
    """``r^2 = sigma^2 sigma_d^2 / (sigma^2 + sigma_d^2)``: ``Var[x0 | x_t]`` for ``x0 ~ N(mu, sigma_d^2 I)``.

    With ``sigma_d = 1`` this is PiGDM's ``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` (= ``1 - abar_t`` in VP form).
    """
    return sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)


def prepare(denoiser: Denoiser, problem: Problem, num_samples: int = 1,
            seeds: Sequence[int] | None = None) -> Setup:
    """Validate inputs, repeat the problem for ``num_samples`` and set up seeded noise."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    b = problem.batch_size
    if seeds is None:
        seeds = list(range(b))
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b} items")
    if denoiser.image_shape is not None and tuple(denoiser.image_shape) != tuple(problem.image_shape):
        raise ValueError(f"the prior expects images of shape {tuple(denoiser.image_shape)} but the problem's "
                         f"image_shape is {tuple(problem.image_shape)}")
    device, dtype = problem_device(problem)
    counted = denoiser if isinstance(denoiser, CountingDenoiser) else CountingDenoiser(denoiser)
    counted.nfe = 0
    return Setup(counted, problem.repeat(num_samples) if num_samples > 1 else problem,
                 ItemNoise(seeds, num_samples, device, dtype), b, num_samples, device, dtype,
                 time.perf_counter())


def finish(setup: Setup, x: Tensor, nfe: int | None = None, **info) -> Result:
    """Reshape final states into a :class:`Result` (per-trajectory NFE from the counter)."""
    x = x.detach()
    samples = x.reshape(setup.batch, setup.num_samples, *x.shape[1:])
    mean = samples.mean(dim=1)
    std = samples.std(dim=1) if setup.num_samples > 1 else None
    total = time.perf_counter() - setup.start
    return Result(samples, mean, std, setup.denoiser.nfe if nfe is None else nfe,
                  {"total": total}, info)


def steps_bar(n: int, progress: bool, desc: str):
    """Iterator over ``range(n)`` with a tqdm bar when ``progress`` is true."""
    return tqdm(range(n), desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
