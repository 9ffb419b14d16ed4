"""Posterior samplers and classical baselines: plain functions over the Problem/Denoiser contracts.

``get_solver(name)`` returns the function; ``available_solvers()`` lists the names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sciprior.solvers.common import Result  # noqa: F401

#: solver name -> (module, function)
SOLVERS: dict[str, tuple[str, str]] = {
    "edm": ("sciprior.solvers.edm", "edm_sampler"),
    "dps": ("sciprior.solvers.dps", "dps"),
    "pigdm": ("sciprior.solvers.pigdm", "pigdm"),
    "ddnm": ("sciprior.solvers.ddnm", "ddnm"),
    "dds": ("sciprior.solvers.dds", "dds"),
    "diffpir": ("sciprior.solvers.diffpir", "diffpir"),
    "reddiff": ("sciprior.solvers.reddiff", "reddiff"),
    "daps": ("sciprior.solvers.daps", "daps"),
    "pnpdm": ("sciprior.solvers.pnpdm", "pnpdm"),
    "smc": ("sciprior.solvers.smc", "smc"),
    "dds_volume": ("sciprior.solvers.dds3d", "dds_volume"),
}

#: classical baselines (no denoiser): name -> (module, function)
BASELINES: dict[str, tuple[str, str]] = {
    "adjoint": ("sciprior.solvers.classical", "adjoint_recon"),
    "cgls": ("sciprior.solvers.classical", "cgls"),
    "tv": ("sciprior.solvers.classical", "tv_pdhg"),
}


def get_solver(name: str) -> Callable:
    """The solver (``SOLVERS``, takes a denoiser) or baseline (``BASELINES``) function called ``name``."""
    table = {**SOLVERS, **BASELINES}
    if name not in table:
        raise KeyError(f"unknown solver {name!r}; choose from {', '.join(sorted(table))}")
    module, fn = table[name]
    return getattr(importlib.import_module(module), fn)


def available_solvers() -> list[str]:
    return sorted(SOLVERS) + sorted(BASELINES)
