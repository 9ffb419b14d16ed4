"""Every check of a reconstruction job that needs no compute: input, checkpoint, prior cover, trained domain."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sciprior import modalities
from sciprior.app.job import ConfigError, Job, is_classical, solver_function
from sciprior.io.limits import check_allocation
from sciprior.io.outdir import OutputDirError, check_output_dir
from sciprior.io.paths import InputError
from sciprior.modalities.adapter import SECTION, ModalityAdapter
from sciprior.priors.checkpoint import verify_checkpoint
from sciprior.priors.cover import CoverError, CoverKeys, plan_cover
from sciprior.solvers import BASELINES


def resolve_checkpoint(spec: str, key: str = "prior.checkpoint") -> Path:
    """A checkpoint path from ``spec``: a directory / .safetensors file or ``builtin:NAME``."""
    if spec.startswith("builtin:"):
        name, _, variant = spec[len("builtin:"):].partition("/")
        shipped = {f"builtin:{n}": modalities.get(n).prior for n in modalities.names()
                   if modalities.get(n).prior is not None}
        for n in modalities.names():
            shipped.update({f"builtin:{n}/{v}": p for v, p in modalities.get(n).prior_variants.items()})
        if spec not in shipped:
            raise ConfigError(f"{key}: unknown builtin prior {spec!r}; choose from {', '.join(sorted(shipped))}")
        path = Path(shipped[spec])
        if not (path / "model.safetensors").is_file():
            recipe = f"configs/{name}/train{'_' + variant if variant else ''}.yaml"
            raise ConfigError(f"{key}: prior {spec} not found at {path}; train it with "
                              f"`sciprior train {recipe}` (and export it there), or set "
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


def validate(job: Job) -> Job:
    """Check the input, the checkpoint and their compatibility; fills ``job.plan``. No compute."""
    adapter = job.modality
    if not isinstance(adapter, ModalityAdapter) or type(adapter) is ModalityAdapter:
        raise ConfigError(f"{SECTION}: expected a modality adapter, got {type(adapter).__name__}")
    if job.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {job.num_samples}")
    resolve_device(job.device)
    solver_function(job.solver)
    job.solver_settings = {**job.solver_settings}
    try:
        adapter.check_input(job.input, "input")
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(str(e), key="input") from e
    path = cfg = None
    if job.prior.checkpoint is None:
        if not is_classical(job.solver):
            raise ConfigError(f"prior.checkpoint: solver {job.solver!r} needs a prior checkpoint (a directory or "
                              f"builtin:NAME); only {', '.join(sorted(BASELINES))} run without one")
    else:
        path = resolve_checkpoint(job.prior.checkpoint)
        try:
            cfg = verify_checkpoint(path)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"prior.checkpoint: {e}") from e
    try:
        shape = tuple(adapter.image_shape(job.input))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(str(e) if str(e).startswith("input") else f"input: {e}", key="input") from e
    nbytes, what = adapter.memory_estimate(shape)
    try:
        check_allocation(nbytes, what, f"{SECTION}.image_size")
    except InputError as e:
        raise ConfigError(str(e), key=f"{SECTION}.image_size") from e
    keys = CoverKeys(channels=adapter.channels_key, image_size=f"{SECTION}.image_size", slices=f"{SECTION}.slices")
    try:
        job.plan = plan_cover(job.prior, path, cfg, shape, adapter.axes(shape), keys)
    except CoverError as e:
        raise ConfigError(str(e)) from e
    if cfg is not None:
        msg = adapter.check_trained_domain(modalities.trained_reader((cfg.get("metadata") or {}).get("data")))
        if msg:
            raise ConfigError(f"{msg} (prior.checkpoint {path})")
    try:
        check_output_dir(job.output_dir, "output_dir", job.overwrite)
    except OutputDirError as e:
        raise ConfigError(str(e), key="output_dir") from e
    return job


__all__ = ["resolve_checkpoint", "resolve_device", "validate"]
