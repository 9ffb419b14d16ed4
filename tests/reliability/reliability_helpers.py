"""Shared helpers of the bad-input catalogue (tests/reliability): run a command in-process, watch what it computes,
and check what it left on disk.

Every case of the catalogue asserts four things: the exit status; that the message names the key, file or
shape at fault; that it failed before any solver step (where the fault can be seen without compute); and that
the directory it was pointed at holds nothing new afterwards. :func:`refused` checks all four.

A uniquely named module (not ``conftest``): test modules import it by name.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sciprior.priors.checkpoint import save_checkpoint
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet

ROOT = Path(__file__).resolve().parents[2]
CT_TRAINED = {"data": {"modality": "ct", "reader": {"name": "slices", "window": [-1024.0, 3071.0], "clip": True}}}
MRI_TRAINED = {"data": {"modality": "mri", "reader": {"name": "slices", "percentiles": [0.5, 99.5]}}}
#: what ``python -c 'import this'`` prints first: a config that imports ``this`` shows it
ZEN = "Beautiful is better than ugly"


@dataclass
class Outcome:
    rc: int
    err: str
    out: str


def run_main(main: Callable[[list[str]], int], argv: Sequence[str]) -> Outcome:
    """``main(argv)`` in this process; its exit status (a SystemExit counts) and what it printed."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                err.write(e.code)
    return Outcome(int(rc), err.getvalue(), out.getvalue())


def run_subprocess(args: Sequence[str], cwd: Path, timeout: float = 300) -> Outcome:
    """``python -m sciprior.cli ARGS`` in ``cwd`` (the working directory is on sys.path there, as for any user)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "sciprior.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    return Outcome(res.returncode, res.stderr, res.stdout)


def tree(root: Path) -> set[str]:
    """Every file and directory below ``root`` (relative paths); empty if it does not exist."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def tiny_prior(path: Path, channels: int = 1, size: int | None = 64, metadata=None) -> Path:
    """An untrained 2-level MONAI UNet checkpoint (milliseconds per call) with the training record ``metadata``."""
    torch.manual_seed(0)
    net = build_unet(in_channels=channels, channels=(8, 8), attention_levels=(False, False), num_head_channels=8,
                     norm_num_groups=8)
    shape = (channels, size, size) if size is not None else None
    return save_checkpoint(EDMDenoiser(net, image_shape=shape), path, metadata=metadata)


def with_(cfg: dict, dotted: str, value) -> dict:
    """A deep copy of ``cfg`` with the dotted key set to ``value`` (missing sections created)."""
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def write_config(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


class Spy:
    """Records which compute stages of ``sciprior reconstruct`` ran (prior loading, the input, the solver)."""

    def __init__(self, monkeypatch):
        rec = importlib.import_module("sciprior.app.reconstruct")  # the module (sciprior.app exports a function)

        self.calls: list[str] = []
        load_prior, call_solver = rec.load_prior, rec._call_solver

        def spy_load_prior(*a, **k):
            self.calls.append("load_prior")
            return load_prior(*a, **k)

        def spy_solver(*a, **k):
            self.calls.append("solver")
            return call_solver(*a, **k)

        monkeypatch.setattr(rec, "load_prior", spy_load_prior)
        monkeypatch.setattr(rec, "_call_solver", spy_solver)


def refused(outcome: Outcome, rc: int, pattern: str, *, watched: Path, before: set[str], spy: Spy | None = None,
            solver_may_run: bool = False) -> None:
    """The four properties of a refused bad input (see the module docstring)."""
    assert outcome.rc == rc, f"exit status {outcome.rc}, expected {rc}; stderr:\n{outcome.err[-3000:]}"
    assert re.search(pattern, outcome.err, re.S), f"message does not match {pattern!r}:\n{outcome.err[-3000:]}"
    assert "Traceback" not in outcome.err, f"a raw traceback instead of a message:\n{outcome.err[-3000:]}"
    if spy is not None and not solver_may_run:
        assert "solver" not in spy.calls, f"the solver ran before the error ({spy.calls})"
    new = tree(watched) - before
    assert not new, f"new files after a refused run: {sorted(new)[:10]}"


__all__ = ["CT_TRAINED", "MRI_TRAINED", "Outcome", "ROOT", "Spy", "ZEN", "refused", "run_main", "run_subprocess",
           "tiny_prior", "tree", "with_", "write_config"]
