"""``sciprior reconstruct CONFIG.yaml [--key value ...]``: one scan, from a typed config, to files and a report.

Data flow: config (validated, typed) -> the modality adapter reads the input (NIfTI, DICOM, fastMRI HDF5
or a bundled ``sample:NAME``), normalises it into the prior's domain and, for images, simulates the
measurement -> :class:`~sciprior.modalities.noise.Problem` -> solver with the prior loaded from its
checkpoint -> the adapter writes the reconstruction in the modality's format (NIfTI with the input's
affine, fastMRI-layout HDF5) -> ``report.json`` and ``report.png`` (:mod:`sciprior.report`).

Config schema (YAML; every key is also a ``--key value`` command-line override)::

    modality:                      # a ModalityAdapter subclass and its __init__ arguments
      class_path: CTAdapter        # or sciprior.modalities.ct_adapter.CTAdapter, MRIAdapter
      init_args: {n_views: 60, i0: 1.0e5, image_size: 128}
    input: sample:head_ct          # a file, a DICOM directory, or sample:head_ct / sample:mni152
    prior:                         # PriorSpec
      checkpoint: builtin:ct       # checkpoint directory / .safetensors, or builtin:ct, builtin:mri
      wrap: auto                   # auto | full | patch | slice
      roi: null                    # patch size for wrap=patch (default: the prior's image size)
      overlap: 0.25
    solver:                        # name + the keyword arguments of that solver function
      name: dds
      steps: 50
      eta: 0.85
    num_samples: 1                 # posterior samples (std map with > 1)
    seed: 0
    device: auto                   # auto | cpu | cuda | cuda:1 ...
    output_dir: outputs/ct_sparse_view
    progress: true

Everything is checked before any compute: unknown or misspelt keys (``solver.stepz``), wrong types,
missing input or checkpoint files, and a prior whose channels or image size do not fit the modality
fail with a message that names the key and the file. ``solver`` accepts exactly the keyword arguments
of the chosen solver function (``sciprior.solvers.get_solver(name)``) except ``denoiser``, ``problem``,
``num_samples``, ``seeds``, ``callback`` and ``progress``, which the runner sets.

From Python::

    from sciprior.reconstruct import reconstruct
    out = reconstruct("configs/ct/sparse_view.yaml",
                      overrides={"solver.steps": 20, "output_dir": "out/ct", "device": "cpu"})
    out.result.mean            # (1, 1, H, W) reconstruction in the prior's domain
    out.physical               # the same in HU
    out.report["metrics"]      # PSNR / SSIM / NMSE against the reference (simulated inputs)

or with the objects themselves (``output_dir=None`` writes nothing and only returns the results)::

    from sciprior.modalities.ct_adapter import CTAdapter
    from sciprior.reconstruct import PriorSpec, run_reconstruction
    out = run_reconstruction(CTAdapter(n_views=60, image_size=128), "sample:head_ct",
                             prior=PriorSpec(checkpoint="builtin:ct"), solver="dds",
                             solver_settings={"steps": 50}, output_dir=None)
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from sciprior.modalities.adapter import Context, InputError, ModalityAdapter, data_consistency
from sciprior.modalities.noise import Problem
from sciprior.priors.base import Denoiser

#: arguments of solver functions the runner sets itself (not part of the ``solver`` config section)
RUNNER_ARGS = frozenset({"denoiser", "denoiser2d", "problem", "num_samples", "seeds", "callback", "progress", "x0"})
DEFAULT_SOLVER = "dds"
#: modules whose ModalityAdapter subclasses can be named by short class name (``class_path: CTAdapter``)
ADAPTER_MODULES = ("sciprior.modalities.ct_adapter", "sciprior.modalities.mri_adapter")
BUILTIN_PRIORS = ("ct", "mri")


class ConfigError(ValueError):
    """An invalid reconstruction config; the message names the key (and file) at fault."""


# ---------------------------------------------------------------------------------------------
# Typed sections
# ---------------------------------------------------------------------------------------------


@dataclass
class PriorSpec:
    """Which prior, and how it covers the image.

    Args:
        checkpoint: checkpoint directory (or ``.safetensors`` file) written by
            :func:`sciprior.priors.checkpoint.save_checkpoint`, or ``builtin:ct`` / ``builtin:mri`` for
            the priors shipped in ``sciprior/assets/priors/``. ``None`` only for the classical solvers
            (``adjoint``, ``cgls``, ``tv``).
        wrap: ``full`` (the prior sees the whole image; sizes must match), ``patch`` (sliding windows of
            ``roi``, blended), ``slice`` (a 2D prior on every slice of a 3D stack; inner windows if the
            slice size differs from the prior's), or ``auto`` (full when the sizes match, else patch;
            slice-wise for 3D stacks).
        roi: window size for patch-wise priors (default: the prior's training image size).
        overlap: fraction of overlap of neighbouring windows, in [0, 1).
        sw_batch_size: windows per network call.
        blend: ``gaussian`` or ``constant`` weighting of overlapping windows.
        slice_chunk: 2D slices per network call for slice-wise priors.
    """

    checkpoint: str | None = None
    wrap: Literal["auto", "full", "patch", "slice"] = "auto"
    roi: tuple[int, int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 8
    blend: Literal["gaussian", "constant"] = "gaussian"
    slice_chunk: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"prior.overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1 or self.slice_chunk < 1:
            raise ConfigError("prior.sw_batch_size and prior.slice_chunk must be >= 1")
        if self.roi is not None:
            self.roi = tuple(int(r) for r in self.roi)
            if min(self.roi) < 1:
                raise ConfigError(f"prior.roi must be positive, got {self.roi}")


@dataclass
class PriorPlan:
    """How a checkpoint will be used for a given image shape (decided from headers, before compute)."""

    path: Path | None
    config: dict[str, Any] | None
    wrap: str  # "none" | "full" | "patch" | "slice" | "slice+patch"
    roi: tuple[int, ...] | None
    image_shape: tuple[int, ...]
    prior_shape: tuple[int, ...] | None


@dataclass
class Job:
    """A validated reconstruction: everything is checked, nothing computed yet."""

    modality: ModalityAdapter
    input: str
    prior: PriorSpec
    solver: str
    solver_settings: dict[str, Any]
    num_samples: int = 1
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None
    progress: bool = True
    baseline: bool = True
    report: bool = True
    plan: PriorPlan | None = None
    config: dict[str, Any] = field(default_factory=dict)


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
# Parsing
# ---------------------------------------------------------------------------------------------


def solver_function(name: str):
    from sciprior.solvers import available_solvers, get_solver

    try:
        return get_solver(name)
    except KeyError:
        raise ConfigError(f"solver.name: unknown solver {name!r}; choose from "
                          f"{', '.join(available_solvers())}") from None


def import_adapters() -> None:
    """Import the adapter modules so that jsonargparse resolves short ``class_path`` names."""
    import importlib

    for mod in ADAPTER_MODULES:
        importlib.import_module(mod)


def is_classical(name: str) -> bool:
    from sciprior.solvers import BASELINES

    return name in BASELINES


def solver_keys(name: str) -> list[str]:
    """The config keys the ``solver`` section accepts for solver ``name`` (besides ``name``)."""
    fn = solver_function(name)
    return [p for p in inspect.signature(fn).parameters if p not in RUNNER_ARGS]


def build_parser(solver: str = DEFAULT_SOLVER, exit_on_error: bool = False):
    """The jsonargparse parser for solver ``solver`` (its keyword arguments form the ``solver`` section)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    import_adapters()
    fn = solver_function(solver)
    parser = ArgumentParser(prog="sciprior reconstruct", exit_on_error=exit_on_error,
                            description="Reconstruct one scan with a diffusion prior (see sciprior.reconstruct).")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_subclass_arguments(ModalityAdapter, "modality", required=True,
                                  help="modality adapter (class_path: CTAdapter or MRIAdapter) and its settings")
    parser.add_argument("--input", type=str, required=True,
                        help="input file / DICOM directory / sample:head_ct / sample:mni152")
    parser.add_class_arguments(PriorSpec, "prior")
    parser.add_argument("--solver.name", type=str, default=DEFAULT_SOLVER, help="solver (sciprior info lists them)")
    parser.add_function_arguments(fn, "solver", skip=set(RUNNER_ARGS) & set(inspect.signature(fn).parameters))
    parser.add_argument("--num_samples", type=int, default=1, help="posterior samples (std map when > 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the solver's noise")
    parser.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--output_dir", type=str | None, default=None, help="directory for the outputs and report")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar while sampling")
    parser.add_argument("--baseline", type=bool, default=True, help="also compute the classical baseline")
    parser.add_argument("--report", type=bool, default=True, help="write report.json and report.png")
    return parser


def _solver_name_from_argv(argv: Sequence[str]) -> str | None:
    name = None
    files = []
    for i, a in enumerate(argv):
        if a == "--solver.name" and i + 1 < len(argv):
            name = argv[i + 1]
        elif a.startswith("--solver.name="):
            name = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    if name is not None:
        return name
    for f in reversed(files):
        found = _solver_name_from_file(f)
        if found is not None:
            return found
    return None


def _solver_name_from_file(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {path!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}") from e
    return _solver_name_from_dict(data)


def _solver_name_from_dict(data: Any) -> str | None:
    if isinstance(data, Mapping) and isinstance(data.get("solver"), Mapping):
        name = data["solver"].get("name")
        return None if name is None else str(name)
    return None


def _expand_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"solver.steps": 10, "prior": {"wrap": "patch"}}`` -> nested dict."""
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"overrides: key {key!r} conflicts with another override")
        if isinstance(value, Mapping) and isinstance(d.get(parts[-1]), dict):
            d[parts[-1]] = _merge(d[parts[-1]], value)
        else:
            d[parts[-1]] = copy.deepcopy(value)
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _friendly(e: Exception, solver: str) -> ConfigError:
    """A jsonargparse error as a ConfigError; unknown solver keys list what the solver accepts."""
    msg = str(e).strip()
    m = re.search(r"(?:--)?solver\.(\w+)", msg) if ("unrecognized" in msg or "does not accept" in msg) else None
    if m is None and "Group 'solver' does not accept option" in msg:
        m = re.search(r"option '(\w+)'", msg)
    if m is not None:
        return ConfigError(f"solver.{m.group(1)}: unknown setting for solver {solver!r}; it accepts: "
                           f"{', '.join(['name', *solver_keys(solver)])}  ({msg})")
    m = re.search(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", msg)
    if m is not None:
        cls = m.group(1).rsplit(".", 1)[-1]
        accepted = _init_args(m.group(1))
        return ConfigError(f"modality.init_args.{m.group(2)}: unknown setting for {cls}"
                           + (f"; it accepts: {', '.join(accepted)}" if accepted else ""))
    return ConfigError(f"invalid reconstruction config: {msg}")


def _init_args(class_path: str) -> list[str]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def parse_args(argv: Sequence[str]) -> Job:
    """``CONFIG.yaml [--key value ...]`` (or ``--config CONFIG.yaml ...``) -> a validated :class:`Job`."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    solver = _solver_name_from_argv(argv) or DEFAULT_SOLVER
    parser = build_parser(solver)
    try:
        ns = parser.parse_args(argv)
    except Exception as e:  # jsonargparse.ArgumentError and type errors
        raise _friendly(e, solver) from e
    return _job_from_namespace(parser, ns, solver)


def parse_config(config: str | os.PathLike | Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Job:
    """A YAML file (or dict) plus ``overrides`` (dotted keys or nested dicts) -> a validated :class:`Job`."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"config: no such file {str(p)!r}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config: {p} must hold a mapping, got {type(data).__name__}")
    extra = _expand_overrides(overrides)
    if isinstance(extra.get("solver"), dict) and "name" in extra["solver"] and isinstance(data.get("solver"), dict) \
            and extra["solver"]["name"] != data["solver"].get("name", DEFAULT_SOLVER) and \
            not any(str(k).startswith("solver.") for k in (overrides or {})):
        data = {**data, "solver": {}}  # a new solver section replaces the old one (other settings apply)
    data = _merge(data, extra)
    solver = _solver_name_from_dict(data) or DEFAULT_SOLVER
    parser = build_parser(solver)
    try:
        ns = parser.parse_object(data)
    except Exception as e:
        raise _friendly(e, solver) from e
    return _job_from_namespace(parser, ns, solver)


def _job_from_namespace(parser, ns, solver: str) -> Job:
    echo = ns.clone().as_dict()
    echo.pop("config", None)
    echo.pop("__path__", None)
    try:
        init = parser.instantiate(ns) if hasattr(parser, "instantiate") else parser.instantiate_classes(ns)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid reconstruction config: {e}") from e
    settings = {k: v for k, v in vars(init.solver).items() if k != "name"}
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}
    job = Job(modality=init.modality, input=init.input, prior=init.prior, solver=solver,
              solver_settings=settings, num_samples=init.num_samples, seed=init.seed, device=init.device,
              output_dir=init.output_dir, progress=init.progress, baseline=init.baseline, report=init.report,
              config=echo)
    validate(job)
    return job


def check_solver_settings(solver: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``settings`` against the solver's signature (names and types), before any compute."""
    from jsonargparse import ArgumentParser

    fn = solver_function(solver)
    sub = ArgumentParser(exit_on_error=False)
    sub.add_function_arguments(fn, "solver", skip=set(RUNNER_ARGS) & set(inspect.signature(fn).parameters))
    try:
        ns = sub.parse_object({"solver": dict(settings)})
    except Exception as e:
        raise _friendly(e, solver) from e
    return {k: v for k, v in vars(ns.solver).items() if k in settings}


# ---------------------------------------------------------------------------------------------
# Validation (headers only, no compute)
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(spec: str, key: str = "prior.checkpoint") -> Path:
    """A checkpoint path from ``spec``: a directory / .safetensors file or ``builtin:NAME``."""
    if spec.startswith("builtin:"):
        from importlib.resources import files

        name = spec[len("builtin:"):]
        if name not in BUILTIN_PRIORS:
            raise ConfigError(f"{key}: unknown builtin prior {spec!r}; choose from "
                              f"{', '.join('builtin:' + n for n in BUILTIN_PRIORS)}")
        path = Path(str(files("sciprior").joinpath("assets", "priors", name)))
        if not (path / "model.safetensors").is_file():
            raise ConfigError(f"{key}: prior {spec} not found at {path}; train it with "
                              f"`sciprior train configs/{name}/train.yaml` (and export it there), or set "
                              f"{key} to a checkpoint directory")
        return path
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise ConfigError(f"{key}: no such checkpoint {str(path)!r}")
    return path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"device: {device!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available (use auto or cpu)")
    return dev


def _unet_multiple(cfg: Mapping[str, Any]) -> int:
    kw = cfg.get("network", {}).get("kwargs", {})
    return 2 ** (len(kw.get("channels", (32, 64, 64))) - 1)


def plan_prior(spec: PriorSpec, path: Path | None, cfg: Mapping[str, Any] | None, image_shape: tuple[int, ...],
               channels_key: str) -> PriorPlan:
    """Decide how the prior covers images of ``image_shape``; ConfigError naming the keys if it cannot."""
    if path is None or cfg is None:
        return PriorPlan(None, None, "none", None, image_shape, None)
    kw = cfg["network"].get("kwargs", {})
    den = cfg["denoiser"]
    prior_shape = tuple(den["image_shape"]) if den.get("image_shape") else None
    in_ch = int(kw.get("in_channels", prior_shape[0] if prior_shape else 1))
    spatial = int(kw.get("spatial_dims", 2))
    where = f"prior.checkpoint ({path})"
    if in_ch != image_shape[0]:
        raise ConfigError(f"{where}: the prior has {in_ch} channel(s) but the modality produces "
                          f"{image_shape[0]}-channel images (set by {channels_key}); use a prior trained for "
                          f"this image model")
    mult = _unet_multiple(cfg)
    target_sp = tuple(image_shape[1:])
    is_stack = len(target_sp) == 3
    wrap = spec.wrap
    if spatial == 3:
        if wrap in ("slice",):
            raise ConfigError(f"prior.wrap: 'slice' needs a 2D prior; {where} is 3D")
        if not is_stack:
            raise ConfigError(f"{where}: a 3D prior cannot reconstruct one 2D slice; set modality.init_args.slices "
                              "to a range or 'all'")
        plane = target_sp
    else:
        if is_stack and wrap in ("full", "patch"):
            raise ConfigError(f"prior.wrap: {wrap!r} with a 2D prior cannot cover a 3D stack {target_sp}; "
                              "use wrap: slice or auto")
        plane = target_sp[1:] if is_stack else target_sp
    psp = tuple(prior_shape[1:]) if prior_shape else None
    inner = "full"
    roi = None
    if wrap == "full" or (wrap in ("auto", "slice") and (psp is None or psp == plane)):
        if psp is not None and psp != plane:
            raise ConfigError(f"prior.wrap: 'full' needs images of the prior's size {psp}, but the modality gives "
                              f"{plane} (modality.init_args.image_size); use wrap: patch or set image_size")
        bad = [s for s in plane if s % mult]
        if bad:
            raise ConfigError(f"modality.init_args.image_size: the image size {plane} must be a multiple of {mult} "
                              f"for the UNet of {where}; change image_size or use wrap: patch")
    else:
        inner = "patch"
        roi = tuple(spec.roi) if spec.roi is not None else psp
        if roi is None:
            raise ConfigError(f"prior.roi: required for wrap=patch when {where} has no recorded image size")
        if len(roi) != len(plane):
            raise ConfigError(f"prior.roi: {roi} has {len(roi)} dims but the prior works on {len(plane)}D images")
        if any(r % mult for r in roi):
            raise ConfigError(f"prior.roi: {roi} must be a multiple of {mult} for the UNet of {where}")
    if spatial == 2 and is_stack:
        kind = "slice" if inner == "full" else "slice+patch"
    else:
        kind = inner
    return PriorPlan(path, dict(cfg), kind, roi, tuple(image_shape), prior_shape)


def validate(job: Job) -> Job:
    """Check the input, the checkpoint and their compatibility; fills ``job.plan``. No compute."""
    from sciprior.priors.checkpoint import read_config

    if not isinstance(job.modality, ModalityAdapter) or type(job.modality) is ModalityAdapter:
        raise ConfigError(f"modality.class_path: expected a modality adapter (CTAdapter, MRIAdapter), got "
                          f"{type(job.modality).__name__}")
    if job.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {job.num_samples}")
    resolve_device(job.device)
    solver_function(job.solver)
    job.solver_settings = {**job.solver_settings}
    try:
        job.modality.check_input(job.input, "input")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    path = cfg = None
    if job.prior.checkpoint is None:
        if not is_classical(job.solver):
            raise ConfigError(f"prior.checkpoint: solver {job.solver!r} needs a prior checkpoint (a directory, "
                              f"builtin:ct or builtin:mri); only adjoint, cgls and tv run without one")
    else:
        path = resolve_checkpoint(job.prior.checkpoint)
        try:
            cfg = read_config(path)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"prior.checkpoint: {e}") from e
    try:
        shape = tuple(job.modality.image_shape(job.input))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(f"input: {e}") from e
    job.plan = plan_prior(job.prior, path, cfg, shape, job.modality.channels_key)
    if cfg is not None:
        msg = job.modality.check_trained_domain((cfg.get("metadata") or {}).get("data"))
        if msg:
            raise ConfigError(f"{msg} (prior.checkpoint {path})")
    if job.output_dir is not None:
        out = Path(job.output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output_dir: {str(out)!r} exists and is not a directory")
    return job


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def load_prior(plan: PriorPlan, spec: PriorSpec, device: torch.device) -> Denoiser | None:
    """Load the checkpoint and wrap it as planned (patch / slice-wise)."""
    from sciprior.priors.checkpoint import load_checkpoint
    from sciprior.priors.wrappers import PatchPrior, SliceWisePrior

    if plan.path is None:
        return None
    den: Denoiser = load_checkpoint(plan.path, map_location=device)
    den.eval()
    for p in den.parameters():
        p.requires_grad_(False)
    shape = plan.image_shape
    if plan.wrap in ("patch", "slice+patch"):
        inner_shape = (shape[0], *shape[-2:]) if plan.wrap == "slice+patch" else shape
        den = PatchPrior(den, plan.roi, overlap=spec.overlap, sw_batch_size=spec.sw_batch_size, mode=spec.blend,
                         image_shape=inner_shape)
    if plan.wrap in ("slice", "slice+patch"):
        den = SliceWisePrior(den, axis=2, chunk_size=spec.slice_chunk, image_shape=shape)
    return den


def _call_solver(job: Job, denoiser: Denoiser | None, problem: Problem):
    fn = solver_function(job.solver)
    params = inspect.signature(fn).parameters
    kwargs = dict(job.solver_settings)
    if "progress" in params:
        kwargs["progress"] = job.progress
    if is_classical(job.solver):
        res = fn(problem, **kwargs)
        if job.num_samples > 1:
            import warnings

            warnings.warn(f"solver {job.solver!r} is deterministic: num_samples={job.num_samples} ignored",
                          stacklevel=2)
        return res
    first = next(iter(params))
    if first == "denoiser2d":  # volume solvers take the 2D prior and do the slicing themselves
        from sciprior.priors.wrappers import SliceWisePrior

        if isinstance(denoiser, SliceWisePrior):
            denoiser = denoiser.inner
    return fn(denoiser, problem, num_samples=job.num_samples, seeds=[job.seed] * problem.batch_size, **kwargs)


def run(job: Job) -> ReconstructionOutput:
    """Run a validated job: load the prior and the input, solve, write the outputs and the report."""
    from sciprior import report as rep

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

    report = rep.build_report(job, problem, context, result, baseline, timings, files, device)
    if job.output_dir is not None and job.report:
        t = time.perf_counter()
        files += rep.write_report(report, Path(job.output_dir))
        files.append(rep.write_figure(job, adapter, problem, context, result, baseline, report, Path(job.output_dir)))
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
              config={"modality": {"class_path": f"{type(modality).__module__}.{type(modality).__name__}"},
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
        try:
            parser = build_parser(_solver_name_from_argv(full) or DEFAULT_SOLVER, exit_on_error=True)
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


__all__ = ["ConfigError", "Job", "PriorPlan", "PriorSpec", "ReconstructionOutput", "build_parser",
           "check_solver_settings", "data_consistency", "load_prior", "main", "parse_args", "parse_config",
           "plan_prior", "reconstruct", "resolve_checkpoint", "run", "run_reconstruction", "validate"]
