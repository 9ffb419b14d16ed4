"""``sciprior reconstruct CONFIG.yaml [--key value ...]``: one scan, from a typed config, to files and a report.

Data flow: config (validated before any compute, :mod:`sciprior.app.config`) -> the modality's adapter reads the
input (NIfTI, DICOM, HDF5, a bundled ``sample:NAME``), normalises it into the prior's domain and, for images,
simulates the measurement -> :class:`~sciprior.physics.problem.Problem` -> solver with the prior loaded from its
checkpoint and wrapped to cover the image (:mod:`sciprior.priors.cover`) -> the adapter writes the reconstruction
in the modality's format -> ``report.json`` and ``report.png`` (:mod:`sciprior.app.report`).

From Python::

    from sciprior.app import reconstruct
    out = reconstruct("configs/NAME/CONFIG.yaml",
                      overrides={"solver.steps": 20, "output_dir": "out/run", "device": "cpu"})
    out.result.mean            # (1, C, H, W) reconstruction in the prior's domain
    out.physical               # the same in the modality's physical units
    out.report["metrics"]      # PSNR / SSIM / NMSE against the reference (simulated inputs)

or with the objects themselves (``output_dir=None`` writes nothing and only returns the results)::

    from sciprior import modalities
    from sciprior.app.reconstruct import PriorSpec, run_reconstruction
    adapter = modalities.get("NAME").adapter(image_size=128)
    out = run_reconstruction(adapter, "sample:SAMPLE", prior=PriorSpec(checkpoint="builtin:NAME"), solver="dds",
                             solver_settings={"steps": 50}, output_dir=None)

(the README shows the calls with the shipped modalities).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sciprior.app.config import (
    DEFAULT_SOLVER,
    ConfigError,
    Job,
    PriorSpec,
    check_solver_settings,
    help_parser,
    is_classical,
    parse_args,
    parse_config,
    resolve_device,
    solver_function,
    translate_legacy_argv,
    validate,
)
from sciprior.app.report import build_report, write_figure, write_report
from sciprior.io.outdir import OutputDirError, StagedOutput, planned_names
from sciprior.io.paths import InputError
from sciprior.modalities.adapter import Context, ModalityAdapter
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.priors.checkpoint import CheckpointError, load_checkpoint
from sciprior.priors.cover import CoverPlan, wrap_prior
from sciprior.priors.wrappers import SliceWisePrior


@dataclass
class ReconstructionOutput:
    """What :func:`run` returns.

    Attributes:
        result: the solver's :class:`~sciprior.solvers.common.Result` (prior domain).
        problem, context: from the adapter.
        physical: the reconstruction (posterior mean) in physical units (HU, MR magnitude).
        baseline: the classical reconstruction in the prior's domain (or None).
        report: the report dictionary (as in report.json).
        files: the files written (empty when ``output_dir`` is None).
    """

    result: Any
    problem: Problem
    context: Context
    physical: Tensor
    baseline: Tensor | None
    report: dict[str, Any]
    files: list[Path]


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def load_prior(plan: CoverPlan, spec: PriorSpec, device: torch.device) -> Denoiser | None:
    """Load the checkpoint and wrap it as planned (patch / slice-wise)."""
    if plan.path is None:
        return None
    den: Denoiser = load_checkpoint(plan.path, map_location=device)
    den.eval()
    for p in den.parameters():
        p.requires_grad_(False)
    return wrap_prior(den, plan, spec)


def _call_solver(job: Job, denoiser: Denoiser | None, problem: Problem):
    fn = solver_function(job.solver)
    params = inspect.signature(fn).parameters
    kwargs = dict(job.solver_settings)
    if "progress" in params:
        kwargs["progress"] = job.progress
    if is_classical(job.solver):
        res = fn(problem, **kwargs)
        if job.num_samples > 1:
            warnings.warn(f"solver {job.solver!r} is deterministic: num_samples={job.num_samples} ignored",
                          stacklevel=2)
        return res
    first = next(iter(params))
    if first == "denoiser2d":  # volume solvers take the 2D prior and do the slicing themselves
        if isinstance(denoiser, SliceWisePrior):
            denoiser = denoiser.inner
    return fn(denoiser, problem, num_samples=job.num_samples, seeds=[job.seed] * problem.batch_size, **kwargs)


class NonFiniteResultError(RuntimeError):
    """The solver returned NaN or Inf values (nothing is written)."""


def check_finite(result, job: Job) -> None:
    """Refuse a result with NaN/Inf values before anything is written, naming the likely causes."""
    for what in ("mean", "samples", "std"):
        t = getattr(result, what, None)
        if t is None:
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            ckpt = job.plan.path if job.plan is not None else None
            raise NonFiniteResultError(
                f"solver {job.solver!r} returned {bad} NaN/Inf value(s) of {t.numel()} in its {what}; nothing was "
                f"written. Check the prior checkpoint ({ckpt}) and the solver settings "
                f"({', '.join(f'{k}={v}' for k, v in job.solver_settings.items()) or 'defaults'})")


def run(job: Job) -> ReconstructionOutput:
    """Run a validated job: load the prior and the input, solve, write the outputs and the report.

    The outputs are written into a staging directory and committed to ``job.output_dir`` as a whole after
    everything succeeded (:class:`~sciprior.io.outdir.StagedOutput`): an error at any point leaves no file."""
    if job.plan is None:
        validate(job)
    staged = StagedOutput(job.output_dir, "output_dir", job.overwrite) if job.output_dir is not None else None
    with staged if staged is not None else contextlib.nullcontext():  # the directory is checked and created first
        return _run(job, staged)


def _run(job: Job, staged: StagedOutput | None) -> ReconstructionOutput:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(job.device)
    adapter = job.modality.to(device)

    t = time.perf_counter()
    denoiser = load_prior(job.plan, job.prior, device)
    timings["load_prior"] = time.perf_counter() - t

    t = time.perf_counter()
    problem, context = adapter.load(job.input)
    timings["load_input"] = time.perf_counter() - t
    if tuple(problem.image_shape) != tuple(job.plan.image_shape):
        raise RuntimeError(f"{type(adapter).__name__}.load produced images of shape {problem.image_shape}, "
                           f"but its header check announced {job.plan.image_shape}")

    baseline = None
    if job.baseline:
        t = time.perf_counter()
        with torch.no_grad():
            baseline = adapter.baseline(problem, context)
        timings["baseline"] = time.perf_counter() - t

    t = time.perf_counter()
    result = _call_solver(job, denoiser, problem)
    timings["solve"] = time.perf_counter() - t
    check_finite(result, job)

    physical = adapter.to_physical(result.mean, context)
    staged_files: list[Path] = []
    if staged is not None:
        t = time.perf_counter()
        staged_files = list(adapter.write(result, context, staged.path))
        timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    outputs: list[Path] = []
    if staged is not None:
        names = [str(staged.final(f).relative_to(staged.target)) for f in staged_files]
        if job.report:
            names += ["report.json", "report.png"]
        outputs = [staged.target / n for n in planned_names(names)]
    report = build_report(job, problem, context, result, baseline, timings, outputs, device)
    files: list[Path] = []
    if staged is not None:
        if job.report:
            t = time.perf_counter()
            write_figure(job, adapter, problem, context, result, baseline, report, staged.path)
            report["timings_s"]["report"] = round(time.perf_counter() - t, 4)
            write_report(report, staged.path)
        files = staged.commit({"input": job.input, "solver": job.solver})
    return ReconstructionOutput(result, problem, context, physical, baseline, report, files)


def reconstruct(config: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                ) -> ReconstructionOutput:
    """Parse, validate and run a reconstruction config (YAML path or dict) with optional ``overrides``
    (``{"solver.steps": 20}`` or nested dicts). See the module docstring."""
    return run(parse_config(config, overrides))


def run_reconstruction(modality: ModalityAdapter, input: str, prior: PriorSpec | str | None = None,
                       solver: str = DEFAULT_SOLVER, solver_settings: Mapping[str, Any] | None = None, *,
                       num_samples: int = 1, seed: int = 0, device: str = "auto", output_dir: str | None = None,
                       progress: bool = True, baseline: bool = True, report: bool = True,
                       overwrite: bool = False) -> ReconstructionOutput:
    """The same as :func:`reconstruct` with the objects built in Python (settings validated the same way)."""
    spec = prior if isinstance(prior, PriorSpec) else PriorSpec(checkpoint=prior)
    settings = check_solver_settings(solver, solver_settings or {})
    job = Job(modality, input, spec, solver, settings, num_samples, seed, device,
              None if output_dir is None else str(output_dir), progress, baseline, report, overwrite,
              config={"modality": {"name": modality.name},
                      "input": input, "prior": vars(spec), "solver": {"name": solver, **settings},
                      "num_samples": num_samples, "seed": seed, "device": device, "output_dir": output_dir})
    validate(job)
    return run(job)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``sciprior reconstruct CONFIG.yaml [--key value ...]``; exit code 0 on success, 2 on a config error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv):
        full = argv if not argv or argv[0].startswith("-") else ["--config", *argv]
        full = translate_legacy_argv(full)
        try:
            parser = help_parser(full)
        except ConfigError as e:
            print(f"sciprior reconstruct: error: {e}", file=sys.stderr)
            return 2
        if not argv:
            parser.print_help()
            return 2
        try:
            parser.parse_args(full)
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    try:
        job = parse_args(argv)
    except ConfigError as e:
        print(f"sciprior reconstruct: error: {e}", file=sys.stderr)
        return 2
    if job.output_dir is None:
        print("sciprior reconstruct: error: output_dir is not set (add output_dir: DIR to the config or pass "
              "--output_dir DIR)", file=sys.stderr)
        return 2
    try:
        out = run(job)
    except (OutputDirError, CheckpointError) as e:  # changed since the checks (before any compute)
        print(f"sciprior reconstruct: error: {e}", file=sys.stderr)
        return 2
    except (InputError, NonFiniteResultError) as e:  # the data or the result turned out unusable; nothing written
        print(f"sciprior reconstruct: error: {e}", file=sys.stderr)
        return 1
    r = out.report
    line = f"{job.solver}: NFE {r['nfe']}, {r['timings_s']['solve']:.1f} s on {r['device']}"
    m = r.get("metrics") or {}
    rec = m.get("reconstruction") if m else None
    if rec:
        line += f", PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}"
        base = m.get("baseline")
        if base:
            line += f" ({r['baseline']['name']}: {base['psnr']:.2f} dB)"
    line += f", data residual {r['data_consistency']['reconstruction']:.3g}"
    print(line)
    for name, fm in m.items():  # the modality's own conventions (ModalityAdapter.extra_metrics)
        if not (isinstance(fm, dict) and isinstance(fm.get("reconstruction"), dict) and "target" in fm):
            continue
        others = ", ".join(f"{k}: {v['psnr']:.2f} dB" for k, v in fm.items()
                           if isinstance(v, dict) and "psnr" in v and k != "reconstruction")
        rec = fm["reconstruction"]
        print(f"  {name} metrics (vs {fm['target']}): PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}, NMSE "
              f"{rec['nmse']:.4f} ({others})")
    if r["data_consistency"].get("warning"):
        print(f"sciprior reconstruct: warning: {r['data_consistency']['warning']}", file=sys.stderr)
    for f in out.files:
        print(f"  wrote {f}")
    return 0


__all__ = ["ConfigError", "Job", "NonFiniteResultError", "PriorSpec", "ReconstructionOutput", "check_finite",
           "load_prior", "main", "parse_args", "parse_config", "reconstruct", "run", "run_reconstruction", "validate"]
