"""The reconstruction job and the registered things a config names: solvers and modalities by name."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sciprior import modalities
from sciprior.modalities.adapter import SECTION, ModalityAdapter
from sciprior.priors.cover import CoverPlan, CoverSpec
from sciprior.solvers import BASELINES, available_solvers, get_solver

#: arguments of solver functions the runner sets itself (not part of the ``solver`` config section)
RUNNER_ARGS = frozenset({"denoiser", "denoiser2d", "problem", "num_samples", "seeds", "callback", "progress", "x0"})
DEFAULT_SOLVER = "dds"


class ConfigError(ValueError):
    """An invalid reconstruction config; the message names the key (and file) at fault.

    ``key``: the config key at fault when it is known (``"input"`` for a problem with the input file itself, so
    that a batch can tell a bad input, recorded as that item's failure, from a bad config, which stops the batch).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------------
# Typed sections
# ---------------------------------------------------------------------------------------------


@dataclass
class PriorSpec(CoverSpec):
    """Which prior, and how it covers the image.

    Args:
        checkpoint: checkpoint directory (or ``.safetensors`` file) written by
            :func:`sciprior.priors.checkpoint.save_checkpoint`, or ``builtin:NAME`` for the prior a modality ships
            (``builtin:NAME/VARIANT`` for its further shipped priors). ``None`` only for the classical
            solvers (``adjoint``, ``cgls``, ``tv``).
        wrap: ``full`` (the prior sees the whole image; sizes must match), ``patch`` (sliding windows of
            ``roi``, blended), ``slice`` (a 2D prior on every slice of a 3D stack; inner windows if the
            slice size differs from the prior's), or ``auto`` (full when the sizes match, else patch;
            slice-wise for stacks).
        roi: window size for patch-wise priors (default: the prior's training image size).
        overlap: fraction of overlap of neighbouring windows, in [0, 1).
        sw_batch_size: windows per network call.
        blend: ``gaussian`` or ``constant`` weighting of overlapping windows.
        slice_chunk: 2D slices per network call for slice-wise priors.
    """

    checkpoint: str | None = None

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
    overwrite: bool = False
    plan: CoverPlan | None = None
    config: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Registered things: solvers and modalities
# ---------------------------------------------------------------------------------------------


def solver_function(name: str):
    try:
        return get_solver(name)
    except KeyError:
        raise ConfigError(f"solver.name: unknown solver {name!r}; choose from "
                          f"{', '.join(available_solvers())}") from None


def is_classical(name: str) -> bool:
    return name in BASELINES


def solver_keys(name: str) -> list[str]:
    """The config keys the ``solver`` section accepts for solver ``name`` (besides ``name``)."""
    return [p for p in inspect.signature(solver_function(name)).parameters if p not in RUNNER_ARGS]


def adapter_class(name: str) -> type[ModalityAdapter]:
    """The adapter class of modality ``name``; ConfigError naming ``modality.name`` if there is none."""
    try:
        cls = modalities.get(name).adapter
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{SECTION}.name: {e.args[0] if e.args else e}") from None
    if cls is None:
        with_adapter = [n for n in modalities.names() if modalities.get(n).adapter is not None]
        raise ConfigError(f"{SECTION}.name: the {name} modality has no reconstruction adapter yet (it provides "
                          f"training data only); modalities that reconstruct: {', '.join(with_adapter)}")
    return cls


def adapter_keys(name: str) -> list[str]:
    return [p for p in inspect.signature(adapter_class(name).__init__).parameters if p != "self"]


def make_adapter(modality: str, kwargs: Mapping[str, Any]) -> ModalityAdapter:
    """The adapter of ``modality`` built from its settings; its own checks become ConfigErrors naming the key."""
    cls = adapter_class(modality)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e)
        first = re.split(r"[\s=:.\[]", msg, maxsplit=1)[0]
        if first in adapter_keys(modality):
            raise ConfigError(f"{SECTION}.{msg}") from e
        raise ConfigError(f"{SECTION} ({modality}): {msg}") from e


__all__ = ["ConfigError", "DEFAULT_SOLVER", "Job", "PriorSpec", "RUNNER_ARGS", "adapter_class", "adapter_keys",
           "is_classical", "make_adapter", "solver_function", "solver_keys"]
