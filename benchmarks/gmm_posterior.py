"""Posterior sampling on the Gaussian-mixture protocol of MCGdiff, every sciprior solver side by side
with deepinv's DPS at equal denoiser budgets, against exact posterior samples.

Protocol (Cardoso, Janati, Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian linear inverse
problems", ICLR 2024, Sec. 4.1; details as in the authors' reference code ``scripts/viz_gaussian.py``):

- prior: 25 unit-covariance Gaussians with means ``(8i, 8j, 8i, 8j, ...)``, ``(i, j) in {-2..2}^2``,
  weights ``z_k^2 / sum z^2`` with ``z ~ N(0, 1)`` drawn per problem;
- ``A = U diag(s) V^T`` (d_y x d_x) with Haar-random orthogonal ``U, V`` and ``s ~ U(0, 1)``;
- ``x ~ prior``, ``y = A x + sigma_y eps`` with ``sigma_y = u * max(s)``, ``u ~ U(0, 1)`` per problem
  (the authors' code; ``--sigma-y`` fixes it instead);
- d_x in {8, 80, 800}, d_y in {1, 2, 4}, 20 problems per cell;
- metric: sliced Wasserstein distance (mean over 100 random unit directions of the 1-D W1) between a
  solver's ``n`` samples and ``n`` exact posterior samples (``GaussianMixturePrior.posterior``), ``n = 500``
  (1000 would double the run time); the floor is the same distance between two independent exact sample
  sets.

Budgets: every solver gets the same number of denoiser evaluations (NFE) per sample trajectory, 20 and
100 (``FULL["budgets"]``); :func:`solver_config` maps a budget to each solver's arguments (their documented
defaults otherwise): EDM's Heun sampler takes ``(budget + 1) // 2`` steps, DAPS one ODE step per level
with the exact linear-Gaussian inner draw (``mcmc="exact"``), PnP-DM splits the budget between Gibbs
iterations and its inner reverse diffusion (:func:`pnpdm_plan`; all of it goes to iterations), SMC runs one
particle per output sample. Solvers run in float32; the denoiser and the exact posterior use float64.
deepinv's DPS (``deepinv.sampling.DPS``, its defaults: VP sampling_sigmas, DDPM solver, ``weight = 1``) runs on
the same problems through the same denoiser, wrapped to deepinv's conventions (data in [0, 1],
``D(x, sigma)``). Problems run one at a time with the ``n`` samples as the batch (problems differ in
operator, prior weights and ``sigma_y``, which one ``Problem`` cannot hold).

Run (writes docs/benchmarks/gmm_posterior.md; deepinv is only in the benchmark venv):

    .venv-bench/bin/python benchmarks/gmm_posterior.py --threads 1   # full protocol, with deepinv
    .venv/bin/python benchmarks/gmm_posterior.py --quick     # writes a scratch file, never the published table

Cost with one thread: ``--quick`` about 10 s of CPU time; the full protocol about 25 minutes of CPU time,
three quarters of it in the d_x = 800 cells (wall time grows with the machine's load). ``--threads 1``
avoids thread oversubscription on a shared machine; ``--solvers``, ``--dims``, ``--obs-dims``,
``--budgets``, ``--problems`` and ``--samples`` run a subset.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    machine_info,
    make_case,
    mean_std,
    random_directions,
    sliced_wasserstein_sorted,
    sorted_projections,
    table_path,
    write_atomic,
)
from sciprior.priors.base import CountingDenoiser, Denoiser  # noqa: E402

#: the solvers, in table order; the registry of sciprior.solvers gives their modules
SOLVER_ORDER = ["edm", "dps", "pigdm", "ddnm", "dds", "diffpir", "reddiff", "daps", "pnpdm", "smc"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "gmm_posterior.md"

FULL = dict(dims=(8, 80, 800), obs_dims=(1, 2, 4), problems=20, samples=500, budgets=(20, 100))
QUICK = dict(dims=(8, 80), obs_dims=(1, 2), problems=5, samples=200, budgets=(20,))

#: hyperparameters shown in the table per solver (values: the call's, else the signature's default)
SHOWN = {
    "edm": ["steps"], "dps": ["steps", "zeta", "eta"], "pigdm": ["steps", "eta", "scale", "weight"],
    "ddnm": ["steps", "eta"], "dds": ["steps", "eta", "cg_iters"], "diffpir": ["steps", "lam", "zeta"],
    "reddiff": ["steps", "lam", "weighting"], "daps": ["steps", "ode_steps", "mcmc"],
    "pnpdm": ["steps", "prior_steps", "rho_start", "rho_min", "rho_decay"],
    "smc": ["steps", "num_particles", "ess_threshold"],
}

#: PnP-DM's Gibbs iterations for a budget (the rest of the budget goes to its inner reverse diffusion). On
#: 5 problems per d_y at d_x = 80 (seed 99, not the benchmark's), more iterations always helped: mean SW at
#: budget 20 for 2/5/10/20 iterations 8.85/8.83/8.62/8.44, at budget 100 for 5/20/50/100 iterations
#: 8.85/8.76/8.03/7.53 (prior samples: about 8.8), so the whole budget goes to iterations (one denoiser call
#: per prior step).
def pnpdm_iterations(budget: int) -> int:
    return budget


#: fixed notes on the settings, appended to the generated table
NOTES = [
    "- budgets: NFE counts batched denoiser calls per trajectory (gradient-based solvers also take one "
    "vector-Jacobian product per call, DDS runs 5 CG iterations and PiGDM/DiffPIR one closed-form solve per "
    "step, none of which calls the denoiser).",
    "- `daps`: one probability-flow ODE step per annealing level (NFE = levels; on Gaussian priors the "
    "single step is more accurate than the paper's 5, see `sciprior/solvers/daps.py`) and `mcmc=\"exact\"`: "
    "the inner target `N(x0; x0_hat, sigma^2 I) p(y | x0)` is sampled exactly (perturb-and-MAP) instead of "
    "with the paper's 100 Langevin steps, which call no denoiser but draw 100 noise images per level (630 s "
    "per d_x = 800 problem) to approximate the same draw.",
    "- `pnpdm`: `steps` Gibbs iterations with the coupling decayed geometrically from `rho_start` to `rho_min` "
    "over them (the paper's decay 0.9 reaches `rho_min` only after 33 iterations) and the exact likelihood "
    "step (linear-Gaussian problem); the largest inner EDM grid (`prior_steps`) that keeps the NFE within the "
    "budget. Spending the whole budget on iterations (one denoiser call per prior step) was best among the "
    "splits tried on d_x = 80 problems (see `pnpdm_iterations` in the script).",
    "- `smc`: one particle per output sample (`num_particles` = samples), so it evaluates the denoiser on "
    "as many rows as the other solvers.",
    "- `deepinv-dps`: deepinv's DPS with its defaults; `num_steps` time points give `num_steps - 1` "
    "denoiser calls.",
    "- `edm` takes `(budget + 1) // 2` Heun steps (2 * steps - 1 NFE).",
    "- solvers run in float32 (as with learned priors); the mixture denoiser computes in float64 inside, the "
    "exact posterior is that of the float32 operator and measurement, and the SW distance is computed in "
    "float64. The operator is `sciprior.physics.generic.MatrixOperator` (its `prox_l2` and `pinv` use a "
    "cached thin SVD: no (d, d) solve per call).",
    "- 500 samples per problem (not 1000) keep the full run within about 25 minutes of CPU time on one thread; "
    "the floor row is measured with the same number of samples.",
]


@dataclass
class Row:
    """One table row: a solver at an NFE budget."""

    solver: str
    budget: int
    sw: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    seconds: dict[int, list[float]] = field(default_factory=dict)  # d_x -> wall seconds per problem
    nfe: set[int] = field(default_factory=set)
    settings: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass
class BenchmarkResult:
    rows: list[Row]
    floor: dict[tuple[int, int], list[float]]
    notes: list[str]
    config: dict

    def row(self, solver: str, budget: int) -> Row | None:
        return next((r for r in self.rows if r.solver == solver and r.budget == budget), None)

    def mean(self, solver: str, budget: int, cell: tuple[int, int]) -> float:
        r = self.row(solver, budget)
        return mean_std(r.sw.get(cell, []))[0] if r is not None else math.nan

    def floor_mean(self, cell: tuple[int, int]) -> float:
        return mean_std(self.floor[cell])[0]


# --------------------------------------------------------------------------------------------
# Budget-matched solver settings
# --------------------------------------------------------------------------------------------


def pnpdm_plan(denoiser: Denoiser, budget: int, iterations: int, rho_start: float = 10.0,
               rho_min: float = 0.3) -> dict:
    """PnP-DM arguments spending at most ``budget`` NFE in ``iterations`` Gibbs iterations.

    The coupling decays geometrically from ``rho_start`` to ``rho_min`` over the iterations (the paper's
    sampling_sigmas reaches ``rho_min`` after 33 of its 100 iterations), and ``prior_steps`` (the global EDM grid
    whose levels below ``rho_k`` the prior step walks) is the largest whose total NFE,
    ``sum_k (1 + #levels < rho_k)``, fits the budget.
    """
    from sciprior.solvers.common import sampling_sigmas
    from sciprior.solvers.pnpdm import rho_schedule

    if not 1 <= iterations <= budget:
        raise ValueError(f"pnpdm_plan: need 1 <= iterations <= budget, got {iterations} for {budget}")
    decay = (rho_min / rho_start) ** (1.0 / max(iterations - 1, 1))
    best = 1
    for p in range(1, 4 * budget + 1):  # the NFE does not decrease with the grid size: stop at the first excess
        grid = sampling_sigmas(denoiser, p, None, None, 7.0)[:-1]
        rhos = [min(r, float(grid[0])) for r in rho_schedule(iterations, rho_start, rho_min, decay)]
        if sum(1 + int((grid < r).sum()) for r in rhos) > budget:
            break
        best = p
    return dict(steps=iterations, prior_steps=best, rho_start=rho_start, rho_min=rho_min,
                rho_decay=round(decay, 4))


def solver_config(name: str, budget: int, denoiser: Denoiser, samples: int) -> dict:
    """Keyword arguments giving solver ``name`` a budget of ``budget`` NFE per trajectory."""
    if name == "edm":
        return dict(steps=(budget + 1) // 2)  # Heun: 2 * steps - 1 evaluations
    if name == "daps":
        return dict(steps=budget, ode_steps=1, mcmc="exact")
    if name == "pnpdm":
        return pnpdm_plan(denoiser, budget, pnpdm_iterations(budget))
    if name == "smc":
        return dict(steps=budget, num_particles=samples)
    return dict(steps=budget)


def settings_label(name: str, fn: Callable, kwargs: dict) -> str:
    """``k=v`` of the shown hyperparameters: the call's values, else the function's defaults."""
    params = inspect.signature(fn).parameters
    out = []
    for key in SHOWN.get(name, ["steps"]):
        if key in kwargs:
            out.append(f"{key}={kwargs[key]}")
        elif key in params and params[key].default is not inspect.Parameter.empty:
            out.append(f"{key}={params[key].default}")
    return ", ".join(out)


def discover_solvers(names: Sequence[str] | None = None) -> tuple[dict[str, Callable], list[str]]:
    """Import the solvers that exist: ``({name: function}, notes on the missing ones)``."""
    try:
        from sciprior.solvers import SOLVERS as registry
    except ImportError:
        registry = {}
    found, notes = {}, []
    for name in names or SOLVER_ORDER:
        module, fn = registry.get(name, (f"sciprior.solvers.{name}", name))
        try:
            found[name] = getattr(importlib.import_module(module), fn)
        except ModuleNotFoundError as e:
            if e.name == module:
                notes.append(f"`{name}`: not available yet (no module `{module}`), skipped")
            else:
                notes.append(f"`{name}`: import failed ({e}), skipped")
        except (ImportError, AttributeError) as e:
            notes.append(f"`{name}`: import failed ({type(e).__name__}: {e}), skipped")
    return found, notes


# --------------------------------------------------------------------------------------------
# deepinv's DPS on the same problem, through the same denoiser
# --------------------------------------------------------------------------------------------

#: the affine map to deepinv's [0, 1] data range: x01 = (x - LO) / SPAN (the mixture lives in [-20, 20])
LO, SPAN = -20.0, 40.0


def deepinv_version() -> str | None:
    try:
        import deepinv
    except ImportError:
        return None
    return getattr(deepinv, "__version__", "unknown")


def run_deepinv_dps(denoiser: Denoiser, case, budget: int, n: int, seed: int) -> tuple[torch.Tensor, int]:
    """deepinv's DPS (defaults) on ``case`` with ``budget`` denoiser calls (``num_steps = budget + 1``
    time points): (n, d) samples in the prior's units and the counted NFE.

    deepinv expects denoisers on [0, 1] data; ``x01 = (x - LO) / SPAN`` maps the mixture there, so
    ``D01(x01, s01) = (D(SPAN x01 + LO, SPAN s01) - LO) / SPAN``, the physics becomes
    ``A01 = SPAN A`` and the measurement ``y01 = y - A (LO 1)``, with the noise unchanged.
    """
    import deepinv as dinv

    counted = CountingDenoiser(denoiser)

    class Wrapped(dinv.models.Denoiser):
        def forward(self, x, sigma, **kwargs):
            s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
            s = s * SPAN if s.numel() > 1 else float(s) * SPAN
            out = counted((x * SPAN + LO).reshape(x.shape[0], *denoiser.image_shape), s)  # x's dtype
            return ((out - LO) / SPAN).reshape(x.shape)

    a = case.problem.operator.matrix
    d = a.shape[1]
    physics = dinv.physics.LinearPhysics(
        A=lambda x: SPAN * x.reshape(x.shape[0], -1).to(a.dtype) @ a.T,
        A_adjoint=lambda y: (SPAN * y.to(a.dtype) @ a).reshape(y.shape[0], 1, 1, d),
        noise_model=dinv.physics.GaussianNoise(case.sigma_y))
    y01 = case.problem.y - a @ torch.full((d,), LO, dtype=a.dtype)
    model = dinv.sampling.DPS(Wrapped(), num_steps=budget + 1, device="cpu", rng=torch.Generator())
    with torch.no_grad():
        out = model(y01.repeat(n, 1), physics, x_init=(n, 1, 1, d), seed=seed)
    return out.reshape(n, d).double() * SPAN + LO, counted.nfe


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _case_seed(seed: int, d_x: int, d_y: int, p: int) -> int:
    return (seed * 1_000_003 + d_x * 10_007 + d_y * 101 + p) % (2**31 - 1)


def run_benchmark(*, dims: Sequence[int] = FULL["dims"], obs_dims: Sequence[int] = FULL["obs_dims"],
                  problems: int = FULL["problems"], samples: int = FULL["samples"],
                  budgets: Sequence[int] = FULL["budgets"], directions: int = 100,
                  solvers: Sequence[str] | None = None, deepinv: bool = True, sigma_y: float | None = None,
                  seed: int = 0, dtype: str = "float32",
                  log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Run the protocol; returns SW distances per (solver, budget) and cell ``(d_x, d_y)``."""
    log = log or (lambda msg: None)
    fns, notes = discover_solvers(solvers)
    dinv_ver = deepinv_version() if deepinv else None
    if deepinv and dinv_ver is None:
        notes.append("`deepinv-dps`: not installed (deepinv is not importable in this environment)")
    rows = [Row(name, k) for name in fns for k in budgets]
    rows += [Row("deepinv-dps", k, error=None if dinv_ver else "not installed") for k in budgets] if deepinv else []
    floor: dict[tuple[int, int], list[float]] = {}
    for d_x in dims:
        for d_y in obs_dims:
            cell = (d_x, d_y)
            floor[cell] = []
            t_cell = time.perf_counter()
            for p in range(problems):
                cseed = _case_seed(seed, d_x, d_y, p)
                case = make_case(d_x, d_y, cseed, sigma_y, getattr(torch, dtype))
                den = case.prior  # the exact mixture denoiser
                g = torch.Generator().manual_seed(cseed + 1)
                post = case.prior.posterior(case.problem)
                ref = post.sample(samples, generator=g).reshape(samples, d_x)
                other = post.sample(samples, generator=g).reshape(samples, d_x)
                dirs = random_directions(directions, d_x, g)
                ref_sorted = sorted_projections(ref, dirs)
                floor[cell].append(sliced_wasserstein_sorted(sorted_projections(other, dirs), ref_sorted))
                for row in rows:
                    if row.error is not None and row.solver == "deepinv-dps":
                        continue
                    try:
                        if row.solver == "deepinv-dps":
                            row.settings.add(f"num_steps={row.budget + 1}, VP, DDPM, weight=1")
                            t0 = time.perf_counter()
                            x, nfe = run_deepinv_dps(den, case, row.budget, samples, cseed)
                        else:
                            kwargs = solver_config(row.solver, row.budget, den, samples)
                            row.settings.add(settings_label(row.solver, fns[row.solver], kwargs))
                            t0 = time.perf_counter()  # the solver's run only, not the choice of its settings
                            res = fns[row.solver](den, case.problem, num_samples=samples, seeds=[cseed],
                                                  progress=False, **kwargs)
                            x, nfe = res.samples.reshape(samples, d_x), res.nfe
                    except Exception as e:  # a solver failing must not stop the others
                        row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        log(f"{row.solver} budget={row.budget} failed on {cell}: {row.error}")
                        continue
                    row.seconds.setdefault(d_x, []).append(time.perf_counter() - t0)
                    row.nfe.add(int(nfe))
                    x = x.double()
                    row.sw.setdefault(cell, []).append(
                        sliced_wasserstein_sorted(sorted_projections(x, dirs), ref_sorted)
                        if bool(torch.isfinite(x).all()) else math.inf)
            log(f"cell d_x={d_x} d_y={d_y} done in {time.perf_counter() - t_cell:.0f} s; "
                f"floor {mean_std(floor[cell])[0]:.3f}")
    config = dict(dims=tuple(dims), obs_dims=tuple(obs_dims), problems=problems, samples=samples,
                  budgets=tuple(budgets), directions=directions, sigma_y=sigma_y, seed=seed, deepinv=dinv_ver,
                  dtype=dtype)
    return BenchmarkResult(rows, floor, notes, config)


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "diverged"
    return f"{m:.3f} ± {s:.3f}"


def _ratio(result: BenchmarkResult, row: Row, cells: list[tuple[int, int]]) -> float:
    """Mean over the cells of (solver SW / floor SW), inf when a cell is missing."""
    vals = [result.mean(row.solver, row.budget, c) / result.floor_mean(c) for c in cells]
    return sum(vals) / len(vals) if all(math.isfinite(v) for v in vals) else math.inf


def reading(result: BenchmarkResult) -> list[str]:
    """A few generated sentences: the best solver per budget and how close SMC gets to the floor."""
    cfg = result.config
    cells = [(dx, dy) for dx in cfg["dims"] for dy in cfg["obs_dims"]]
    out = []
    for k in cfg["budgets"]:
        ranked = sorted((r for r in result.rows if r.budget == k and r.sw and r.solver != "edm"),
                        key=lambda r: _ratio(result, r, cells))
        if not ranked:
            continue
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        line = (f"- {k} NFE: best `{best.solver}` at {_ratio(result, best, cells):.2f}x the floor "
                f"(mean over the cells of SW / floor)")
        if second is not None:
            line += f", next `{second.solver}` at {_ratio(result, second, cells):.2f}x"
        out.append(line + ".")
        smc = result.row("smc", k)
        if smc is not None and smc.sw and all(c in smc.sw for c in cells):
            ratios = [result.mean("smc", k, c) / result.floor_mean(c) for c in cells]
            worst = cells[max(range(len(cells)), key=lambda i: ratios[i])]
            out.append(f"- {k} NFE: `smc` is {min(ratios):.2f}x-{max(ratios):.2f}x the floor across the cells "
                       f"(worst at d_x={worst[0]}, d_y={worst[1]}).")
    return out


def render_markdown(result: BenchmarkResult, command: str, extra: Sequence[str] = ()) -> str:
    cfg = result.config
    cells = [(dx, dy) for dx in cfg["dims"] for dy in cfg["obs_dims"]]
    sig = "u * max(s), u ~ U(0,1) per problem" if cfg["sigma_y"] is None else f"{cfg['sigma_y']:g}"
    dims = "/".join(str(d) for d in cfg["dims"])
    lines = [
        "# Gaussian-mixture posterior benchmark (MCGdiff protocol)",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine_info()}",
        f"- deepinv: {cfg['deepinv'] or 'not installed'}",
        f"- protocol: 25-component unit-variance mixture, means (8i, 8j, 8i, 8j, ...), weights z^2/sum z^2; "
        f"A = U diag(s) V^T, s ~ U(0,1); sigma_y = {sig}; {cfg['problems']} problems per cell; "
        f"sliced Wasserstein (W1, {cfg['directions']} random directions) between {cfg['samples']} solver "
        f"samples and {cfg['samples']} exact posterior samples; seed {cfg['seed']}.",
        "- entries: mean ± std of the SW distance over the problems of the cell (lower is better). "
        "budget: denoiser evaluations (NFE) allowed per sample trajectory; NFE: what the solver reported "
        "(a range when it varies between problems); time: mean wall seconds per problem "
        f"({cfg['samples']} samples) at d_x = {dims}.",
        *([f"- subset of the protocol (not the full d_x x d_y x budget grid): {cfg['dims']} x {cfg['obs_dims']}"
           f" x {cfg['budgets']}"] if (cfg["dims"], cfg["obs_dims"], cfg["budgets"])
          != (FULL["dims"], FULL["obs_dims"], FULL["budgets"]) else []),
        "- every solver uses the exact mixture denoiser and its documented defaults except the settings "
        "listed (chosen to spend the budget, see the notes); `edm` draws prior samples (ignores y): a "
        "reference, not a posterior sampler.",
        "",
    ]
    head = "| solver | budget | settings | NFE | " + " | ".join(f"d_x={dx}, d_y={dy}" for dx, dy in cells)
    head += " | time [s] |"
    lines += [head, "|" + "---|" * (len(cells) + 5)]
    lines.append("| exact (floor) | - | - | - | " + " | ".join(_fmt(result.floor.get(c, [])) for c in cells)
                 + " | - |")
    for row in sorted(result.rows, key=lambda r: (r.budget, _order(r.solver))):
        if row.error == "not installed":
            lines.append(f"| {row.solver} | {row.budget} | - | - | "
                         + " | ".join("not installed" for _ in cells) + " | - |")
            continue
        nfe = "-" if not row.nfe else (str(min(row.nfe)) if len(row.nfe) == 1
                                       else f"{min(row.nfe)}-{max(row.nfe)}")
        entries = [_fmt(row.sw.get(c, [])) if row.sw.get(c) else ("error" if row.error else "n/a")
                   for c in cells]
        t = " / ".join(f"{sum(v) / len(v):.2g}" if (v := row.seconds.get(d)) else "-" for d in cfg["dims"])
        settings = "; ".join(sorted(row.settings)) or "-"
        lines.append(f"| {row.solver} | {row.budget} | {settings} | {nfe} | " + " | ".join(entries) + f" | {t} |")
    read = reading(result)
    if read:
        lines += ["", "Reading (generated from the numbers above):", ""] + read
    notes = list(result.notes) + [f"`{r.solver}` budget={r.budget}: {r.error}" for r in result.rows
                                  if r.error and r.error != "not installed"]
    if notes or extra:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes] + list(extra)
    return "\n".join(lines) + "\n"


def _order(name: str) -> int:
    order = SOLVER_ORDER + ["deepinv-dps"]
    return order.index(name) if name in order else len(order)


def run_and_write(out: str | Path, command: str, *, quick: bool = False, **overrides) -> BenchmarkResult:
    """Run the full (or ``quick``) protocol with ``overrides`` and write the table to ``out`` atomically."""
    cfg = dict(QUICK if quick else FULL)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    start, cpu = time.perf_counter(), time.process_time()
    result = run_benchmark(**cfg)
    text = render_markdown(result, command, NOTES) + (
        f"\nTotal run time: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU "
        f"(torch threads {torch.get_num_threads()}).\n")
    write_atomic(out, text)
    return result


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap and keep freed memory (no ``mmap`` per
    tensor), so the many short-lived (samples, d) tensors reuse warm pages instead of faulting fresh ones
    in (10-15 % of the run time here). Linux/glibc only; returns whether it applied."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # mallopt parameters: M_MMAP_THRESHOLD = -3 (its maximum, 32 MiB), M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2
        return bool(libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30) and libc.mallopt(-2, 64 << 20))
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d_x in {8, 80}, d_y in {1, 2}, 5 problems, "
                                                          "200 samples, budget 20 (seconds)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown table to write (atomically); default docs/benchmarks/gmm_posterior.md, with --quick "
                         "a scratch file (a quick check never overwrites the published table)")
    ap.add_argument("--solvers", nargs="*", default=None, help="subset of sciprior solvers")
    ap.add_argument("--no-deepinv", action="store_true", help="skip deepinv's DPS")
    ap.add_argument("--sigma-y", type=float, default=None, help="fixed noise std instead of u * max(s)")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default=None,
                    help="precision of the solvers' states (default float32; the denoiser and the exact "
                         "posterior compute in float64)")
    ap.add_argument("--dims", type=int, nargs="*", default=None, help="d_x values (even)")
    ap.add_argument("--obs-dims", type=int, nargs="*", default=None, help="d_y values")
    ap.add_argument("--budgets", type=int, nargs="*", default=None, help="NFE budgets per trajectory")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's; 1 is faster on a shared, busy machine)")
    args = ap.parse_args(argv)
    args.out = table_path(args.out, DEFAULT_OUT, args.quick)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/gmm_posterior.py", *(shlex.quote(a) for a in argv)])
    run_and_write(args.out, command, quick=args.quick, problems=args.problems, samples=args.samples,
                  solvers=args.solvers, deepinv=not args.no_deepinv, sigma_y=args.sigma_y, seed=args.seed,
                  dims=args.dims or None, obs_dims=args.obs_dims or None, budgets=args.budgets or None,
                  dtype=args.dtype,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(Path(args.out).read_text())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
