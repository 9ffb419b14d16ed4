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
from sciprior.io.paths import InputError
from sciprior.modalities.adapter import Context, ModalityAdapter
from sciprior.physics.problem import Problem
from sciprior.priors.base import Denoiser
from sciprior.priors.checkpoint import load_checkpoint
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


def run(job: Job) -> ReconstructionOutput:
    """Run a validated job: load the prior and the input, solve, write the outputs and the report."""
    if job.plan is None:
        validate(job)
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

    physical = adapter.to_physical(result.mean, context)
    files: list[Path] = []
    if job.output_dir is not None:
        t = time.perf_counter()
        files = list(adapter.write(result, context, Path(job.output_dir)))
        timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    report = build_report(job, problem, context, result, baseline, timings, files, device)
    if job.output_dir is not None and job.report:
        t = time.perf_counter()
        files += write_report(report, Path(job.output_dir))
        files.append(write_figure(job, adapter, problem, context, result, baseline, report, Path(job.output_dir)))
        report["timings_s"]["report"] = time.perf_counter() - t
    return ReconstructionOutput(result, problem, context, physical, baseline, report, files)


def reconstruct(config: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                ) -> ReconstructionOutput:
    """Parse, validate and run a reconstruction config (YAML path or dict) with optional ``overrides``
    (``{"solver.steps": 20}`` or nested dicts). See the module docstring."""
    return run(parse_config(config, overrides))


def run_reconstruction(modality: ModalityAdapter, input: str, prior: PriorSpec | str | None = None,
                       solver: str = DEFAULT_SOLVER, solver_settings: Mapping[str, Any] | None = None, *,
                       num_samples: int = 1, seed: int = 0, device: str = "auto", output_dir: str | None = None,
                       progress: bool = True, baseline: bool = True, report: bool = True) -> ReconstructionOutput:
    """The same as :func:`reconstruct` with the objects built in Python (settings validated the same way)."""
    spec = prior if isinstance(prior, PriorSpec) else PriorSpec(checkpoint=prior)
    settings = check_solver_settings(solver, solver_settings or {})
    job = Job(modality, input, spec, solver, settings, num_samples, seed, device,
              None if output_dir is None else str(output_dir), progress, baseline, report,
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
    except InputError as e:  # the data turned out unusable (e.g. the noise level cannot be estimated)
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
    for f in out.files:
        print(f"  wrote {f}")
    return 0


__all__ = ["ConfigError", "Job", "PriorSpec", "ReconstructionOutput", "load_prior", "main", "parse_args",
           "parse_config", "reconstruct", "run", "run_reconstruction", "validate"]
