"""``sciprior batch CONFIG.yaml [--key value ...]``: the config of a batch and its command line.

Config (``sciprior batch CONFIG.yaml`` / ``python -m sciprior.app.batch CONFIG.yaml``), the fields of
:class:`BatchConfig`::

    inputs: data/*.npy            # a glob, a manifest (.csv/.tsv with a `path` column, or .txt/.lst),
                                  # or a list of paths
    output_dir: out/
    process_item: mypkg.recon:ReconstructItem   # function or class, by import path
    process_kwargs: {steps: 50}   # passed to the class (or bound to the function)
    devices: 2
    num_nodes: 1
    accelerator: cpu              # cpu | gpu | cuda | auto
    strategy: auto                # auto | ddp | ddp_spawn ...
    base_seed: 0
    overwrite: false
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from sciprior.app.batch.engine import BatchSummary, run_batch
from sciprior.app.batch.inputs import load_process_item, resolve_inputs
from sciprior.app.batch.reconstruct_item import PROCESS_ITEMS


@dataclass
class BatchConfig:
    """Schema of ``sciprior batch CONFIG.yaml`` (see the module docstring for an example).

    Attributes:
        inputs: glob, manifest path (.csv/.tsv/.txt/.lst) or list of paths.
        output_dir: where outputs, summary.csv and the engine state (.sciprior_batch/) go.
        process_item: ``reconstruct`` (the default: :class:`sciprior.app.batch.reconstruct_item.ReconstructItem`,
            whose ``process_kwargs`` are ``config`` (a reconstruction YAML) and ``overrides``), or the
            import path ``package.module:attr`` of your own per-input function or class.
        process_kwargs: its keyword arguments (class constructor, or bound to the function).
        devices: devices per node (Lightning Trainer).
        num_nodes: number of nodes (Lightning Trainer).
        accelerator: cpu, gpu, cuda, auto (Lightning Trainer).
        strategy: auto, ddp, ddp_spawn, ... (Lightning Trainer).
        base_seed: each item's seed is base_seed + a stable hash of its name.
        overwrite: process inputs that are already done again.
        retry_failed: process inputs that failed in an earlier run again.
        progress: show Lightning's progress bar.
        num_threads: torch threads per process (null: Lightning's choice).
        barrier_timeout_h: hours finished ranks wait for the slowest one.
    """

    inputs: str | list[str]
    output_dir: str
    process_item: str = "reconstruct"
    process_kwargs: dict[str, Any] = field(default_factory=dict)
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    base_seed: int = 0
    overwrite: bool = False
    retry_failed: bool = True
    progress: bool = True
    num_threads: int | None = None
    barrier_timeout_h: float = 72.0


def build_parser(exit_on_error: bool = True):
    """jsonargparse parser of :class:`BatchConfig` (``--config FILE`` plus ``--key value`` overrides);
    with ``exit_on_error=False`` a bad key raises ``jsonargparse.ArgumentError`` instead of exiting."""
    parser = ArgumentParser(prog="sciprior batch", description="Reconstruct many inputs (sciprior.app.batch).",
                            exit_on_error=exit_on_error)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config with the fields below")
    parser.add_class_arguments(BatchConfig, nested_key=None, as_group=False)
    return parser


def parse_config(argv: Sequence[str], exit_on_error: bool = True) -> BatchConfig:
    """``CONFIG.yaml [--key value ...]`` (or ``--config CONFIG.yaml ...``) -> :class:`BatchConfig`.
    Unknown or ill-typed keys fail here, naming the key, before any compute."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    parser = build_parser(exit_on_error)
    ns = parser.parse_args(argv)
    d = ns.as_dict()
    d.pop("config", None)
    d.pop("__path__", None)
    return BatchConfig(**{f.name: d[f.name] for f in dataclasses.fields(BatchConfig) if f.name in d})


def run_batch_config(cfg: BatchConfig) -> BatchSummary:
    """:func:`run_batch` with the fields of a :class:`BatchConfig`.

    With ``process_item: reconstruct`` the reconstruction config is validated against the first input
    before anything runs (a typo fails here, naming the key)."""
    kw = dataclasses.asdict(cfg)
    target = kw.pop("process_item")
    if target in PROCESS_ITEMS:
        if target == "reconstruct":
            if "config" not in kw["process_kwargs"]:
                raise ValueError("process_kwargs.config: `process_item: reconstruct` needs the path of a "
                                 "reconstruction config (e.g. configs/<modality>/<task>.yaml)")
            first = resolve_inputs(kw["inputs"], kw["output_dir"], kw["base_seed"])
            if first:
                load_process_item(PROCESS_ITEMS[target], {**kw["process_kwargs"], "first_input": first[0].path})
        target = PROCESS_ITEMS[target]
    return run_batch(kw.pop("inputs"), kw.pop("output_dir"), target, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """``sciprior batch CONFIG.yaml [--devices 2 ...]``: exit code 0 when no input failed, else 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(argv)
    try:
        summary = run_batch_config(cfg)
    except (ValueError, FileNotFoundError) as e:  # config errors (named key / file), before any compute
        print(f"sciprior batch: error: {e}", file=sys.stderr)
        return 2
    bad = summary.names("failed") + summary.names("missing")
    if bad:
        print(f"batch: {len(bad)} input(s) failed: {', '.join(bad[:10])}" + (" ..." if len(bad) > 10 else ""),
              file=sys.stderr)
    return 1 if bad else 0


__all__ = ["BatchConfig", "build_parser", "main", "parse_config", "run_batch_config"]
