"""Posterior sampling on the Gaussian-mixture protocol of MCGdiff, every sciprior solver side by side
with deepinv's DPS, against exact posterior samples.

Protocol (Cardoso, Janati, Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian linear inverse
problems", ICLR 2024, Sec. 4.1; details as in the authors' reference code ``scripts/viz_gaussian.py``):

- prior: 25 unit-covariance Gaussians with means ``(8i, 8j, 8i, 8j, ...)``, ``(i, j) in {-2..2}^2``,
  weights ``z_k^2 / sum z^2`` with ``z ~ N(0, 1)`` drawn per problem;
- ``A = U diag(s) V^T`` (d_y x d_x) with Haar-random orthogonal ``U, V`` and ``s ~ U(0, 1)``;
- ``x ~ prior``, ``y = A x + sigma_y eps`` with ``sigma_y = u * max(s)``, ``u ~ U(0, 1)`` per problem
  (the authors' code; ``--sigma-y`` fixes it instead);
- d_x in {8, 80, 800}, d_y in {1, 2, 4}, 20 problems per cell;
- metric: sliced Wasserstein distance (mean over 100 random unit directions of the 1-D W1) between a
  solver's ``n`` samples and ``n`` exact posterior samples (``GaussianMixturePrior.posterior``), ``n = 1000``;
  the floor is the same distance between two independent exact sample sets.

Solvers: every solver of ``sciprior.solvers`` that exists when this runs, each at its documented
default hyperparameters, at 20 and 100 steps, driven by the exact mixture denoiser; plus deepinv's DPS
(``deepinv.sampling.DPS``, its defaults: VP schedule, DDPM solver, ``weight = 1``) on the same problems
through the same denoiser, wrapped to deepinv's conventions (data in [0, 1], ``D(x, sigma)``). Problems
run one at a time with the ``n`` samples as the batch (problems differ in operator, prior weights and
``sigma_y``, which one ``Problem`` cannot hold without changing what solvers see).

Run (writes docs/benchmarks/gmm_posterior.md):

    .venv-bench/bin/python benchmarks/gmm_posterior.py --threads 1   # full, with deepinv
    .venv/bin/python benchmarks/gmm_posterior.py --quick --out /tmp/gmm.md

Cost on a 2-core CPU: ``--quick`` about a minute; the full protocol about a day, three quarters of it in
DAPS and PnP-DM at their default inner loops (measured for one d_x = 800 problem, 1000 samples, 100
steps: DAPS 630 s, PnP-DM ~350 s (5x its 69 s at 20 steps), the others together ~150 s, SMC 4 s);
``--solvers`` picks a subset. On a shared, busy machine ``--threads 1`` avoids thread oversubscription
(10x slowdowns seen).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
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
    FastGMMDenoiser,
    machine_info,
    make_case,
    mean_std,
    random_directions,
    sample_posterior,
    sliced_wasserstein,
    write_atomic,
)
from sciprior.priors.base import CountingDenoiser, Denoiser  # noqa: E402

#: the solvers, in table order, as (name, module, function); the registry of sciprior.solvers wins
SOLVER_ORDER = ["edm", "dps", "pigdm", "ddnm", "dds", "diffpir", "reddiff", "daps", "pnpdm", "smc"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "gmm_posterior.md"

FULL = dict(dims=(8, 80, 800), obs_dims=(1, 2, 4), problems=20, samples=1000, steps=(20, 100))
QUICK = dict(dims=(8, 80), obs_dims=(1, 2), problems=5, samples=200, steps=(20,))


@dataclass
class Row:
    """One table row: a solver at a number of steps."""

    solver: str
    steps: int
    sw: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    nfe: set[int] = field(default_factory=set)
    error: str | None = None


@dataclass
class BenchmarkResult:
    rows: list[Row]
    floor: dict[tuple[int, int], list[float]]
    notes: list[str]
    config: dict

    def row(self, solver: str, steps: int) -> Row | None:
        return next((r for r in self.rows if r.solver == solver and r.steps == steps), None)

    def mean(self, solver: str, steps: int, cell: tuple[int, int]) -> float:
        r = self.row(solver, steps)
        return mean_std(r.sw.get(cell, []))[0] if r is not None else math.nan

    def floor_mean(self, cell: tuple[int, int]) -> float:
        return mean_std(self.floor[cell])[0]


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


def run_deepinv_dps(denoiser: Denoiser, case, steps: int, n: int, seed: int) -> tuple[torch.Tensor, int]:
    """deepinv's DPS (defaults) on ``case``: (n, d) samples in the prior's units and the NFE.

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
            out = counted(x.reshape(x.shape[0], *denoiser.image_shape).double() * SPAN + LO, s)
            return ((out - LO) / SPAN).reshape(x.shape).to(x.dtype)

    a = case.problem.operator.matrix
    d = a.shape[1]
    physics = dinv.physics.LinearPhysics(
        A=lambda x: SPAN * x.reshape(x.shape[0], -1).to(a.dtype) @ a.T,
        A_adjoint=lambda y: (SPAN * y.to(a.dtype) @ a).reshape(y.shape[0], 1, 1, d),
        noise_model=dinv.physics.GaussianNoise(case.sigma_y))
    y01 = case.problem.y - a @ torch.full((d,), LO, dtype=a.dtype)
    model = dinv.sampling.DPS(Wrapped(), num_steps=steps, device="cpu", rng=torch.Generator())
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
                  steps: Sequence[int] = FULL["steps"], directions: int = 100,
                  solvers: Sequence[str] | None = None, deepinv: bool = True, sigma_y: float | None = None,
                  seed: int = 0, log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Run the protocol; returns SW distances per (solver, steps) and cell ``(d_x, d_y)``."""
    log = log or (lambda msg: None)
    fns, notes = discover_solvers(solvers)
    dinv_ver = deepinv_version() if deepinv else None
    if deepinv and dinv_ver is None:
        notes.append("`deepinv-dps`: not installed (deepinv is not importable in this environment)")
    rows = [Row(name, k) for name in fns for k in steps]
    dinv_rows = {k: Row("deepinv-dps", k) for k in steps} if dinv_ver else {}
    if deepinv and dinv_ver is None:
        rows += [Row("deepinv-dps", k, error="not installed") for k in steps]
    rows += list(dinv_rows.values())
    floor: dict[tuple[int, int], list[float]] = {}
    for d_x in dims:
        for d_y in obs_dims:
            cell = (d_x, d_y)
            floor[cell] = []
            for p in range(problems):
                cseed = _case_seed(seed, d_x, d_y, p)
                case = make_case(d_x, d_y, cseed, sigma_y)
                den = FastGMMDenoiser(case.prior)
                g = torch.Generator().manual_seed(cseed + 1)
                post = case.prior.posterior(case.problem)
                ref = sample_posterior(post, samples, g).reshape(samples, d_x)
                other = sample_posterior(post, samples, g).reshape(samples, d_x)
                dirs = random_directions(directions, d_x, g)
                floor[cell].append(sliced_wasserstein(ref, other, dirs))
                for row in rows:
                    if row.error is not None and row.solver == "deepinv-dps":
                        continue
                    t0 = time.perf_counter()
                    try:
                        if row.solver == "deepinv-dps":
                            x, nfe = run_deepinv_dps(den, case, row.steps, samples, cseed)
                        else:
                            res = fns[row.solver](den, case.problem, steps=row.steps, num_samples=samples,
                                                  seeds=[cseed], progress=False)
                            x, nfe = res.samples.reshape(samples, d_x), res.nfe
                    except Exception as e:  # a solver failing must not stop the others
                        row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        log(f"{row.solver} steps={row.steps} failed on {cell}: {row.error}")
                        continue
                    row.seconds.append(time.perf_counter() - t0)
                    if row.seconds[-1] > 10:
                        log(f"{row.solver} steps={row.steps}: {row.seconds[-1]:.0f} s on {cell} problem {p}")
                    row.nfe.add(int(nfe))
                    x = x.double()
                    row.sw.setdefault(cell, []).append(
                        sliced_wasserstein(x, ref, dirs) if bool(torch.isfinite(x).all()) else math.inf)
            log(f"cell d_x={d_x} d_y={d_y} done; floor {mean_std(floor[cell])[0]:.3f}")
    config = dict(dims=tuple(dims), obs_dims=tuple(obs_dims), problems=problems, samples=samples,
                  steps=tuple(steps), directions=directions, sigma_y=sigma_y, seed=seed, deepinv=dinv_ver)
    return BenchmarkResult(rows, floor, notes, config)


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "diverged"
    return f"{m:.3f} ± {s:.3f}"


def render_markdown(result: BenchmarkResult, command: str) -> str:
    cfg = result.config
    cells = [(dx, dy) for dx in cfg["dims"] for dy in cfg["obs_dims"]]
    sig = "u * max(s), u ~ U(0,1) per problem" if cfg["sigma_y"] is None else f"{cfg['sigma_y']:g}"
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
        "- entries: mean ± std of the SW distance over the problems of the cell (lower is better); NFE: "
        "denoiser evaluations per sample trajectory; time: mean wall seconds per problem "
        f"({cfg['samples']} samples).",
        *([f"- subset of the protocol (not the full d_x x d_y x steps grid): {cfg['dims']} x {cfg['obs_dims']}"
           f" x {cfg['steps']}"] if (cfg["dims"], cfg["obs_dims"], cfg["steps"])
          != (FULL["dims"], FULL["obs_dims"], FULL["steps"]) else []),
        "- solvers run at their documented default hyperparameters with the exact mixture denoiser; "
        "`edm` draws prior samples (ignores y): a reference, not a posterior sampler.",
        "",
    ]
    head = "| solver | steps | NFE | " + " | ".join(f"d_x={dx}, d_y={dy}" for dx, dy in cells)
    head += " | time [s] |"
    lines += [head, "|" + "---|" * (len(cells) + 4)]
    lines.append("| exact (floor) | - | - | " + " | ".join(_fmt(result.floor.get(c, [])) for c in cells)
                 + " | - |")
    for row in sorted(result.rows, key=lambda r: (r.steps, _order(r.solver))):
        if row.error == "not installed":
            lines.append(f"| {row.solver} | {row.steps} | - | " + " | ".join("not installed" for _ in cells)
                         + " | - |")
            continue
        nfe = "-" if not row.nfe else (str(min(row.nfe)) if len(row.nfe) == 1
                                       else f"{min(row.nfe)}-{max(row.nfe)}")
        entries = [_fmt(row.sw.get(c, [])) if row.sw.get(c) else ("error" if row.error else "n/a")
                   for c in cells]
        t = f"{sum(row.seconds) / len(row.seconds):.2f}" if row.seconds else "-"
        lines.append(f"| {row.solver} | {row.steps} | {nfe} | " + " | ".join(entries) + f" | {t} |")
    notes = list(result.notes) + [f"`{r.solver}` steps={r.steps}: {r.error}" for r in result.rows
                                  if r.error and r.error != "not installed"]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _order(name: str) -> int:
    order = SOLVER_ORDER + ["deepinv-dps"]
    return order.index(name) if name in order else len(order)


def run_and_write(out: str | Path, command: str, *, quick: bool = False, **overrides) -> BenchmarkResult:
    """Run the full (or ``quick``) protocol with ``overrides`` and write the table to ``out`` atomically."""
    cfg = dict(QUICK if quick else FULL)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    start = time.perf_counter()
    result = run_benchmark(**cfg)
    text = render_markdown(result, command) + f"\nTotal run time: {time.perf_counter() - start:.0f} s.\n"
    write_atomic(out, text)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d_x in {8, 80}, d_y in {1, 2}, 5 problems, "
                                                          "200 samples, 20 steps (about a minute)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown table to write (atomically)")
    ap.add_argument("--solvers", nargs="*", default=None, help="subset of sciprior solvers")
    ap.add_argument("--no-deepinv", action="store_true", help="skip deepinv's DPS")
    ap.add_argument("--sigma-y", type=float, default=None, help="fixed noise std instead of u * max(s)")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's; 1 is faster on a shared, busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/gmm_posterior.py", *(shlex.quote(a) for a in argv)])
    run_and_write(args.out, command, quick=args.quick, problems=args.problems, samples=args.samples,
                  solvers=args.solvers, deepinv=not args.no_deepinv, sigma_y=args.sigma_y, seed=args.seed,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(Path(args.out).read_text())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
