"""``sciprior batch CONFIG.yaml [--key value ...]``: the config of a batch and its command line.

Config (``sciprior batch CONFIG.yaml`` / ``python -m sciprior.app.batch CONFIG.yaml``), the fields of
:class:`BatchConfig`::

    inputs: data/*.npy            # a glob, a manifest (.csv/.tsv with a `path` column, or .txt/.lst),
                                  # or a list of paths
    output_dir: out/
    process_item: reconstruct     # a registered processor NAME (never an import path): `reconstruct`, or one
                                  # an installed package declares in the entry-point group sciprior.processors
    process_kwargs:               # its settings, checked against its signature before anything runs
      config: configs/NAME/task.yaml
      overrides: {solver.steps: 20}
    devices: 2
    num_nodes: 1
    accelerator: cpu              # cpu | gpu | cuda | auto
    strategy: auto                # auto | ddp | ddp_spawn ...
    base_seed: 0
    overwrite: false

Every ``--config`` file is read strictly first (a mapping, no duplicate key, no YAML tags: the file and line are
named); then the fields are parsed (an unknown or ill-typed key is named), and every other check runs before any
compute (:func:`sciprior.app.batch.prepare_batch`). Exit codes: 0 when every input is done, 1 when some input
failed, 2 for an error of the config (nothing is computed or written then).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from sciprior.app.batch.engine import BatchSummary, PreparedBatch, prepare_batch
from sciprior.io.yamlfiles import YAMLFileError, load_yaml


@dataclass
class BatchConfig:
    """Schema of ``sciprior batch CONFIG.yaml`` (see the module docstring for an example).

    Attributes:
        inputs: glob, manifest path (.csv/.tsv/.txt/.lst) or list of paths.
        output_dir: where outputs, summary.csv and the engine state (.sciprior_batch/) go.
        process_item: the name of a registered processor: ``reconstruct`` (the default:
            :class:`sciprior.app.batch.reconstruct_item.ReconstructItem`, whose ``process_kwargs`` are ``config``
            (a reconstruction YAML) and ``overrides``), or one an installed package declares in the entry-point
            group ``sciprior.processors``. Never an import path.
        process_kwargs: its keyword arguments (class constructor, or bound to the function).
        devices: devices per node (Lightning Trainer): a number >= 1, ``auto`` or a list of device indices.
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


# ---------------------------------------------------------------------------------------------------
# parsing


def build_parser(exit_on_error: bool = True):
    """jsonargparse parser of :class:`BatchConfig` (``--config FILE`` plus ``--key value`` overrides);
    with ``exit_on_error=False`` a bad key raises ``jsonargparse.ArgumentError`` instead of exiting."""
    parser = ArgumentParser(prog="sciprior batch", description="Reconstruct many inputs (sciprior.app.batch).",
                            exit_on_error=exit_on_error)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config with the fields below")
    parser.add_class_arguments(BatchConfig, nested_key=None, as_group=False)
    return parser


def _config_files(argv: Sequence[str]) -> list[str]:
    files = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def _friendly(e: Exception) -> str:
    """A jsonargparse error in one line, naming the key (and listing the keys of a batch config when the key is
    not one of them)."""
    msg = " ".join(str(e).split())
    keys = ", ".join(f.name for f in dataclasses.fields(BatchConfig))
    m = (re.search(r"Option '([^']+)' is not accepted", msg) or re.search(r'Key "([^"]+)" is not expected', msg)
         or re.search(r"unrecognized arguments: (\S+)", msg))
    if m:
        return f"{m.group(1).lstrip('-')}: not a setting of a batch config; the settings are: {keys}  ({msg})"
    m = re.search(r'Parser key "([^"]+)": (.*)', msg)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    return msg


def parse_config(argv: Sequence[str], exit_on_error: bool = True) -> BatchConfig:
    """``CONFIG.yaml [--key value ...]`` (or ``--config CONFIG.yaml ...``) -> :class:`BatchConfig`.
    Every config file is read strictly first (:func:`load_yaml`); unknown or ill-typed keys fail here, naming the
    key, before any compute."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    for f in _config_files(argv):
        load_yaml(f, "--config")
    parser = build_parser(exit_on_error)
    ns = parser.parse_args(argv)
    d = ns.as_dict()
    d.pop("config", None)
    d.pop("__path__", None)
    return BatchConfig(**{f.name: d[f.name] for f in dataclasses.fields(BatchConfig) if f.name in d})


def prepare_batch_config(cfg: BatchConfig) -> PreparedBatch:
    """:func:`prepare_batch` with the fields of a :class:`BatchConfig`: every check, nothing written."""
    kw = dataclasses.asdict(cfg)
    return prepare_batch(kw.pop("inputs"), kw.pop("output_dir"), kw.pop("process_item"), **kw)


def run_batch_config(cfg: BatchConfig) -> BatchSummary:
    """:func:`run_batch` with the fields of a :class:`BatchConfig` (checked before anything runs)."""
    return prepare_batch_config(cfg).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``sciprior batch CONFIG.yaml [--devices 2 ...]``: exit code 0 when no input failed, 1 when some input
    failed, 2 for a config error (before any compute; nothing written)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_usage(sys.stderr)
        print("sciprior batch: error: give a config file (sciprior batch CONFIG.yaml [--key value ...])",
              file=sys.stderr)
        return 2
    try:
        cfg = parse_config(argv, exit_on_error=False)
    except SystemExit as e:  # --help / --print_config
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except (ValueError, ArgumentError) as e:  # BatchConfigError, YAMLFileError: the file / key is named
        print(f"sciprior batch: error: {_friendly(e)}", file=sys.stderr)
        return 2
    try:
        prepared = prepare_batch_config(cfg)
    except (ValueError, OSError) as e:  # BatchConfigError and input errors: named key / file, nothing computed
        print(f"sciprior batch: error: {e}", file=sys.stderr)
        return 2
    summary = prepared.run()
    bad = summary.names("failed") + summary.names("missing")
    if bad:
        print(f"batch: {len(bad)} input(s) failed: {', '.join(bad[:10])}" + (" ..." if len(bad) > 10 else ""),
              file=sys.stderr)
    return 1 if bad else 0


__all__ = ["BatchConfig", "YAMLFileError", "build_parser", "load_yaml", "main", "parse_config",
           "prepare_batch_config", "run_batch_config"]
