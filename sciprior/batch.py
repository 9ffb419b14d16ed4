"""Batch engine: reconstruct many inputs with Lightning's predict loop, spread over devices and nodes.

``run_batch(inputs, output_dir, process_item, ...)`` knows nothing about modalities. It hands each
input to ``process_item(spec: ItemSpec) -> ItemOutput`` (a function, a class instantiated once per
process, or an import path ``"package.module:attr"``), which reconstructs ONE input and returns the
arrays / files to write and a metrics dict. The engine guarantees:

- **Every input is processed exactly once** per run. The pending inputs are listed by global rank 0
  and broadcast; each rank takes the items ``rank, rank + W, rank + 2W, ...`` (:class:`ShardSampler`,
  no padding, no duplicates; Lightning's own distributed sampler is switched off).
- **Results do not depend on the number of devices.** Each item's seed is
  ``item_seed(name, base_seed)`` (``base_seed`` plus a stable hash of the item's name, never the rank
  or batch position); ``torch``, ``numpy`` and ``random`` are seeded with it before the item runs,
  and ``spec.seed`` is what ``process_item`` passes to a solver (``seeds=[spec.seed]``).
- **Atomic outputs.** The :class:`BatchWriter` (a ``BasePredictionWriter``) writes every file to a
  hidden temp file ``.tmp-<token>-<final name>[.part]`` in the output directory, fsyncs it and
  ``os.replace``-s it (what ``process_item`` wrote into ``spec.scratch_dir`` becomes the directory
  ``<output_dir>/<name>/`` by one rename); then it writes the item's record
  ``.sciprior_batch/items/<name>.json`` the same way. The record, written last, is the commit: an
  item is done when its record says ``ok`` and all its outputs exist. A killed job leaves at most
  ``.tmp-*`` files/directories, which the next run deletes.
- **Resumable.** Done items are skipped (``overwrite=False``), so a killed or SLURM-requeued job
  picks up where it stopped; failed items are retried unless ``retry_failed=False``.
- **Failures are contained.** An exception in ``process_item`` (or in writing its outputs) marks that
  item ``failed`` with the error message; the other items go on.
- **A summary of every item** (``summary.csv`` and ``summary.json`` in the output directory, one row
  per input: status ok / failed / skipped, error, wall time, rank, host, seed, outputs, metrics) is
  merged by global rank 0 from the per-item records once every rank has finished, so it is complete
  after any sequence of kills and restarts.

Gradients: the predict loop runs with ``inference_mode=False`` (under ``torch.no_grad``), so a solver
that needs gradients (DPS, PiGDM) enables them locally with ``torch.enable_grad()``.

Multi-node: ``output_dir`` must be on a file system that every node sees. Do not run two batch jobs on
the same ``output_dir`` at the same time. See ``scripts/slurm_batch.sh`` (SLURM, auto-requeue) and
``scripts/batch_example.py``.

Config (``sciprior batch CONFIG.yaml`` / ``python -m sciprior.batch CONFIG.yaml``), the fields of
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

import csv
import dataclasses
import functools
import glob as globlib
import hashlib
import importlib
import io
import json
import logging
import os
import random
import shutil
import socket
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger("sciprior.batch")

STATE_DIR = ".sciprior_batch"  #: engine state inside the output directory (records, Lightning files)
TMP_PREFIX = ".tmp-"  #: prefix of in-flight files; never a final output
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")
_PATH_COLUMNS = ("path", "input", "file")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_SUMMARY_COLUMNS = ("index", "name", "input", "status", "error", "wall_time_s", "rank", "host", "seed",
                    "outputs", "run_id", "finished_at")

Scalar = float | int | str | bool | None


# ---------------------------------------------------------------------------------------------------
# the job description


@dataclass(frozen=True)
class ItemSpec:
    """One input of a batch, as ``process_item`` receives it (picklable, no tensors).

    Attributes:
        index: position in the run's full (sorted) input list.
        name: unique key of the input; output files are ``<output_dir>/<name><suffix>``.
        path: absolute path of the input file (or directory, e.g. a DICOM series).
        seed: ``item_seed(name, base_seed)``: seed ALL randomness of this item from it.
        output_dir: absolute output directory.
        params: extra manifest columns for this item (strings), e.g. a per-item acceleration.
        rank: global rank of the process running the item; world_size: number of processes.
        device: the device this process runs on (``"cpu"``, ``"cuda:1"``, ...): put tensors there.
        scratch_dir: an empty private directory (hidden, inside ``output_dir``). Whatever
            ``process_item`` writes there is committed as the directory ``<output_dir>/<name>/`` by one
            atomic rename after the item succeeds (for runners that write several files into an output
            directory, e.g. ``reconstruct``); it is deleted if the item fails.
    """

    index: int
    name: str
    path: str
    seed: int
    output_dir: str
    params: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    scratch_dir: str = ""

    def output_path(self, suffix: str) -> Path:
        """Final path of the output with ``suffix`` (e.g. ``".nii.gz"``, ``"_std.npy"``)."""
        return Path(self.output_dir) / f"{self.name}{suffix}"

    def generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A fresh ``torch.Generator`` seeded with :attr:`seed`."""
        return torch.Generator(device=device).manual_seed(self.seed)


FileContent = bytes | str | Callable[[Path], None]


@dataclass
class ItemOutput:
    """What ``process_item`` returns for one input.

    Attributes:
        arrays: ``suffix -> array`` (numpy array or tensor), written as ``<name><suffix>.npy``:
            ``{"": x}`` gives ``case1.npy``, ``{"_std": s}`` gives ``case1_std.npy``.
        files: ``suffix -> content`` written as ``<name><suffix>``; content is ``bytes``, ``str``
            (UTF-8) or a writer ``f(path)`` that creates exactly ``path`` (it gets a temp path with the
            same suffix, so format detection by extension works): ``{".nii.gz": lambda p: nib.save(img, p)}``.
        metrics: scalars for the summary (floats, ints, strings, bools; 1-element tensors are converted).
    """

    arrays: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, FileContent] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


ProcessItem = Callable[[ItemSpec], ItemOutput]


def item_seed(name: str, base_seed: int = 0) -> int:
    """``(base_seed + blake2b-64(name)) mod 2**63``: stable across processes, machines and Python runs
    (unlike ``hash()``), independent of rank, batch position and device count."""
    h = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")
    return (int(base_seed) + h) % (2**63)


# ---------------------------------------------------------------------------------------------------
# inputs


def _strip_ext(fname: str) -> str:
    p = PurePath(fname)
    if p.suffix.lower() in _COMPRESSION and len(p.suffixes) >= 2:
        return p.name[: -len("".join(p.suffixes[-2:]))]
    return p.stem if p.suffix else p.name


def _check_name(name: str, where: str) -> str:
    bad = not name or name.startswith(".") or any(c in name for c in "/\\\0\n\r\t") or name in (".", "..")
    if bad:
        raise ValueError(f"batch inputs: {where}: item name {name!r} cannot be used as a file name "
                         "(empty, starts with '.', or contains a path separator or control character)")
    return name


def _default_names(paths: Sequence[str]) -> list[str]:
    """File names without extension; on clashes, paths relative to the common parent joined by ``__``."""
    names = [_strip_ext(os.path.basename(os.path.normpath(p))) for p in paths]
    if len(set(names)) == len(names):
        return names
    root = os.path.commonpath([os.path.dirname(os.path.normpath(p)) for p in paths])
    names = []
    for p in paths:
        rel = os.path.relpath(os.path.normpath(p), root)
        head, tail = os.path.split(rel)
        names.append("__".join([*PurePath(head).parts, _strip_ext(tail)]))
    seen: dict[str, str] = {}
    for n, p in zip(names, paths):
        if n in seen:
            raise ValueError(f"batch inputs: {seen[n]} and {p} both get the name {n!r}; give the items "
                             "explicit names with a CSV manifest (columns `path`, `name`)")
        seen[n] = p
    return names


def _read_manifest(path: Path) -> tuple[list[str], list[str | None], list[dict[str, str]]]:
    """Paths (absolute), names (or None) and extra columns of a manifest; see :func:`resolve_inputs`."""
    if not path.is_file():
        raise FileNotFoundError(f"batch inputs: manifest {path} does not exist")
    base = path.parent
    paths: list[str] = []
    names: list[str | None] = []
    params: list[dict[str, str]] = []
    lines: list[int] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            cols = [c.strip() for c in (reader.fieldnames or [])]
            key = next((c for c in _PATH_COLUMNS if c in cols), None)
            if key is None:
                raise ValueError(f"batch inputs: manifest {path} needs a column named one of "
                                 f"{_PATH_COLUMNS}; its header is {cols}")
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row.get(key):
                    continue
                paths.append(row[key])
                names.append(row.get("name") or None)
                params.append({k: v for k, v in row.items() if k not in (key, "name") and k})
                lines.append(reader.line_num)
    else:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            paths.append(line)
            names.append(None)
            params.append({})
            lines.append(i)
    if not paths:
        raise ValueError(f"batch inputs: manifest {path} lists no inputs")
    resolved = [os.path.abspath(os.path.join(base, os.path.expanduser(p))) for p in paths]
    missing = [f"line {ln}: {p}" for ln, p in zip(lines, resolved) if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"batch inputs: manifest {path} lists {len(missing)} missing input(s): "
                                + "; ".join(missing[:5]) + more)
    return resolved, names, params


def _expand(pattern: str) -> list[str]:
    pattern = os.path.expanduser(pattern)
    if globlib.has_magic(pattern):
        found = sorted(os.path.abspath(p) for p in globlib.glob(pattern, recursive=True))
        if not found:
            raise FileNotFoundError(f"batch inputs: the glob {pattern!r} matched no files")
        return found
    if not os.path.exists(pattern):
        raise FileNotFoundError(f"batch inputs: {pattern} does not exist")
    return [os.path.abspath(pattern)]


def resolve_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                   base_seed: int = 0) -> list[ItemSpec]:
    """The run's items, in a deterministic order.

    ``inputs`` is one of
    - a glob string (``"data/**/*.nii.gz"``, recursive ``**`` allowed), sorted;
    - a manifest path ending in ``.csv``/``.tsv`` (header with a ``path`` column, alias ``input`` or
      ``file``; optional ``name``; other columns become ``spec.params``) or ``.txt``/``.lst`` (one path a
      line, ``#`` comments); relative paths are relative to the manifest's directory; manifest order;
    - a single existing file or directory, or a list of paths / globs (list order).
    Names default to the file name without extension (``scan.nii.gz`` -> ``scan``), or the path relative
    to the inputs' common parent joined by ``__`` when file names clash.

    Raises:
        FileNotFoundError: naming the manifest / glob / path that is missing or matches nothing.
        ValueError: an empty manifest, duplicate inputs or names.
    """
    names: list[str | None]
    if isinstance(inputs, (str, os.PathLike)):
        s = os.fspath(inputs)
        if not globlib.has_magic(s) and PurePath(s).suffix.lower() in MANIFEST_SUFFIXES:
            paths, names, params = _read_manifest(Path(s).expanduser())
        else:
            paths = _expand(s)
            names, params = [None] * len(paths), [{} for _ in paths]
    else:
        if len(inputs) == 0:
            raise ValueError("batch inputs: the list of inputs is empty")
        paths = [p for item in inputs for p in _expand(os.fspath(item))]
        names, params = [None] * len(paths), [{} for _ in paths]
    dup = sorted({p for p in paths if paths.count(p) > 1}) if len(set(paths)) != len(paths) else []
    if dup:
        raise ValueError(f"batch inputs: listed more than once: {dup[:5]}")
    if all(n is None for n in names):
        final = _default_names(paths)
    else:
        defaults = _default_names(paths)
        final = [n if n is not None else d for n, d in zip(names, defaults)]
    final = [_check_name(n, p) for n, p in zip(final, paths)]
    if len(set(final)) != len(final):
        clash = sorted({n for n in final if final.count(n) > 1})
        raise ValueError(f"batch inputs: item names are not unique: {clash[:5]}")
    out = os.path.abspath(os.fspath(output_dir))
    return [ItemSpec(i, n, p, item_seed(n, base_seed), out, dict(prm))
            for i, (n, p, prm) in enumerate(zip(final, paths, params))]


def _import_target(target: str) -> Any:
    """The object named by ``"package.module:attr"`` (or ``"package.module.attr"``)."""
    mod_name, sep, attr = target.partition(":")
    if not sep:
        mod_name, _, attr = target.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"process_item {target!r}: expected 'package.module:function'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"process_item {target!r}: cannot import module {mod_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"process_item {target!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_process_item(target: str | ProcessItem, kwargs: Mapping[str, Any] | None = None) -> ProcessItem:
    """Resolve ``"package.module:attr"`` (or ``"package.module.attr"``) or a callable.

    A class is instantiated once with ``kwargs`` (its instance is the callable, so a model is loaded
    once per process); a function gets ``kwargs`` bound with ``functools.partial``.
    """
    obj = _import_target(target) if isinstance(target, str) else target
    kwargs = dict(kwargs or {})
    if isinstance(obj, type):
        return obj(**kwargs)
    if not callable(obj):
        raise TypeError(f"process_item {target!r} is not callable")
    return functools.partial(obj, **kwargs) if kwargs else obj


# ---------------------------------------------------------------------------------------------------
# atomic files and records


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, content: FileContent) -> Path:
    """Write ``path`` atomically: temp file ``.tmp-<token>-<name>[.part]`` next to it, fsync, ``os.replace``.

    ``content``: bytes, str (UTF-8) or ``writer(temp_path)``. Readers see the old file or the whole new
    one, never a partial file; on error the temp file is removed and the error re-raised.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")
    in_memory = isinstance(content, (bytes, bytearray, memoryview, str))
    if in_memory:  # no output-like suffix on in-flight files unless a writer needs it to pick the format
        tmp = tmp.with_name(tmp.name + ".part")
    try:
        if in_memory:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        elif callable(content):
            content(tmp)
            if not tmp.is_file():
                raise FileNotFoundError(f"the writer for {path.name} did not create the file it was given "
                                        f"({tmp})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            raise TypeError(f"cannot write a {type(content).__name__} to {path.name}: "
                            "expected bytes, str or a writer function f(path)")
        os.replace(tmp, path)
    except BaseException:
        for q in path.parent.glob(f"{tmp.name}*"):  # also what a writer created under a changed name
            q.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _commit_dir(scratch: Path, target: Path) -> None:
    """Move the filled ``scratch`` directory to ``target`` with one rename (files fsynced first); an
    existing ``target`` (overwrite) is moved aside first and deleted after."""
    for root, _, files in os.walk(scratch):
        for f in files:
            with open(os.path.join(root, f), "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))
    old = None
    if target.exists():
        old = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{target.name}.old")
        os.replace(target, old)
    os.replace(scratch, target)
    _fsync_dir(target.parent)
    if old is not None:
        _remove(old)


def _npy_bytes(value: Any, key: str) -> bytes:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"array {key!r} has dtype object; give a numeric array or tensor")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _scalar(v: Any, key: str) -> Scalar:
    if isinstance(v, (torch.Tensor, np.ndarray)):
        if (v.numel() if isinstance(v, torch.Tensor) else v.size) != 1:
            raise TypeError(f"metric {key!r} is an array of shape {tuple(v.shape)}; metrics must be scalars")
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"metric {key!r} has type {type(v).__name__}; metrics must be scalars")


def _items_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / STATE_DIR / "items"


def _record_path(output_dir: str | os.PathLike, name: str) -> Path:
    return _items_dir(output_dir) / f"{name}.json"


def read_record(output_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The stored record of item ``name`` (or None if absent or unreadable)."""
    try:
        return json.loads(_record_path(output_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(spec: ItemSpec) -> bool:
    """True when the item's record says ``ok`` and all its outputs exist."""
    rec = read_record(spec.output_dir, spec.name)
    return (rec is not None and rec.get("status") == "ok" and rec.get("input") == spec.path
            and all((Path(spec.output_dir) / o).exists() for o in rec.get("outputs", [])))


def _clean_tmp(output_dir: Path) -> int:
    """Delete the in-flight files and scratch directories an interrupted run left behind."""
    n = 0
    for d in (output_dir, _items_dir(output_dir)):
        if d.is_dir():
            for p in d.glob(f"{TMP_PREFIX}*"):
                _remove(p)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------
# Lightning pieces


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``num_items``: disjoint across ranks, covering every
    index exactly once, no padding (ranks may get one item more than others, or none)."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: rank {rank} is not in [0, {world_size})")
        self.num_items, self.rank, self.world_size = int(num_items), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))


class _SpecDataset(Dataset):
    def __init__(self, specs: Sequence[ItemSpec]):
        self.specs = list(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> ItemSpec:
        return self.specs[i]


def _collate_one(batch: list[ItemSpec]) -> ItemSpec:
    return batch[0]


@dataclass
class _Plan:
    """What one run does: its id, all items, and which (indices into ``specs``) it processes / skips."""

    run_id: str
    specs: list[ItemSpec]
    pending: list[int]
    skipped: list[int]

    def save(self, output_dir: Path) -> None:
        atomic_write(output_dir / STATE_DIR / "plan.json", json.dumps(
            {"run_id": self.run_id, "pending": self.pending, "skipped": self.skipped}))

    @classmethod
    def load(cls, output_dir: Path, specs: list[ItemSpec]) -> _Plan:
        d = json.loads((output_dir / STATE_DIR / "plan.json").read_text(encoding="utf-8"))
        return cls(d["run_id"], specs, d["pending"], d["skipped"])


class BatchDataModule(pl.LightningDataModule):
    """Lists the items once (global rank 0: done items skipped, stale temp files removed), broadcasts the
    plan, and serves each rank its shard of the pending items, one :class:`ItemSpec` per batch."""

    def __init__(self, specs: Sequence[ItemSpec], overwrite: bool = False, retry_failed: bool = True):
        super().__init__()
        self.specs = list(specs)
        self.overwrite = overwrite
        self.retry_failed = retry_failed
        self.plan: _Plan | None = None
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def _make_plan(self) -> _Plan:
        out = Path(self.specs[0].output_dir) if self.specs else Path(".")
        removed = _clean_tmp(out)
        if removed:
            log.info("batch: removed %d stale temp file(s) of an interrupted run in %s", removed, out)
        pending, skipped = [], []
        for i, s in enumerate(self.specs):
            if not self.overwrite and is_done(s):
                skipped.append(i)
            elif (not self.overwrite and not self.retry_failed
                  and (read_record(s.output_dir, s.name) or {}).get("status") == "failed"):
                skipped.append(i)
            else:
                pending.append(i)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        plan = _Plan(f"{stamp}-{uuid.uuid4().hex[:6]}", self.specs, pending, skipped)
        plan.save(out)
        return plan

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        plan = self._make_plan() if trainer.is_global_zero else None
        self.plan = trainer.strategy.broadcast(plan, src=0)
        if trainer.is_global_zero:
            p = self.plan
            log.info("batch: %d input(s): %d to process on %d process(es), %d already done", len(p.specs),
                     len(p.pending), trainer.world_size, len(p.skipped))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # an ItemSpec: process_item moves its own tensors to spec.device

    def predict_dataloader(self) -> DataLoader:
        assert self.plan is not None, "BatchDataModule.setup() was not called"
        trainer = self.trainer
        ds = _SpecDataset([self.plan.specs[i] for i in self.plan.pending])
        sampler = ShardSampler(len(ds), trainer.global_rank, trainer.world_size)
        return DataLoader(ds, batch_size=1, sampler=sampler, num_workers=0, collate_fn=_collate_one)


@dataclass
class _Outcome:
    spec: ItemSpec
    output: ItemOutput | None
    error: str | None
    traceback: str | None
    seconds: float


class BatchModule(pl.LightningModule):
    """Runs ``process_item`` on one :class:`ItemSpec` per ``predict_step`` and catches its errors.

    ``process_item`` may be an import path string (resolved in :meth:`setup` on every process, so it
    works under DDP, ``ddp_spawn`` and from a YAML config) or a callable (must be picklable for spawn).
    """

    def __init__(self, process_item: str | ProcessItem, process_kwargs: Mapping[str, Any] | None = None,
                 num_threads: int | None = None):
        super().__init__()
        self.target = process_item
        self.process_kwargs = dict(process_kwargs or {})
        self.num_threads = num_threads
        self._fn: ProcessItem | None = None

    def setup(self, stage: str) -> None:
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        if self._fn is None:
            self._fn = load_process_item(self.target, self.process_kwargs)

    def predict_step(self, spec: ItemSpec, batch_idx: int = 0) -> _Outcome:
        if self._fn is None:
            self.setup("predict")
        scratch = Path(spec.output_dir) / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{spec.name}.d"
        scratch.mkdir(parents=True)
        spec = dataclasses.replace(spec, rank=self.global_rank, world_size=self.trainer.world_size,
                                   device=str(self.device), scratch_dir=str(scratch))
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        random.seed(spec.seed)
        t0 = time.perf_counter()
        try:
            out = self._fn(spec)
            if not isinstance(out, ItemOutput):
                raise TypeError(f"process_item returned {type(out).__name__}, "
                                "expected sciprior.batch.ItemOutput")
        except Exception as e:  # one bad input must not stop the others
            log.warning("batch: item %s (%s) failed: %s: %s", spec.name, spec.path, type(e).__name__, e)
            return _Outcome(spec, None, f"{type(e).__name__}: {e}", traceback.format_exc(),
                            time.perf_counter() - t0)
        return _Outcome(spec, out, None, None, time.perf_counter() - t0)


class BatchWriter(BasePredictionWriter):
    """Writes each item's outputs atomically as soon as it is done, then its record (the commit)."""

    def __init__(self, names: Sequence[str] = ()):
        super().__init__(write_interval="batch")
        self.names = set(names)
        self.host = socket.gethostname()

    def _check_output_name(self, spec: ItemSpec, suffix: str, fname: str) -> None:
        if not isinstance(suffix, str) or any(c in suffix for c in "/\\\0"):
            raise ValueError(f"output suffix {suffix!r} of item {spec.name} must be a string without "
                             "path separators")
        for k in range(len(spec.name) + 1, len(fname) + 1):
            if fname[:k] in self.names:
                raise ValueError(f"output {fname} of item {spec.name} could be mistaken for an output of "
                                 f"item {fname[:k]}; rename the items (CSV manifest `name` column) or the "
                                 "suffix")

    def _write_outputs(self, spec: ItemSpec, out: ItemOutput, written: list[str]) -> None:
        jobs: list[tuple[str, FileContent]] = []
        for suffix, arr in out.arrays.items():
            jobs.append((f"{spec.name}{suffix}.npy", _npy_bytes(arr, suffix)))
        for suffix, content in out.files.items():
            jobs.append((f"{spec.name}{suffix}", content))
        seen = set()
        for fname, _ in jobs:
            self._check_output_name(spec, fname[len(spec.name):], fname)
            if fname in seen:
                raise ValueError(f"item {spec.name} returned two outputs named {fname}")
            seen.add(fname)
        for fname, content in jobs:
            atomic_write(Path(spec.output_dir) / fname, content)
            written.append(fname)
        if spec.scratch_dir and any(Path(spec.scratch_dir).iterdir()):
            _commit_dir(Path(spec.scratch_dir), Path(spec.output_dir) / spec.name)
            written.append(spec.name)

    def write_on_batch_end(self, trainer, pl_module, prediction: _Outcome, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        o = prediction
        spec = o.spec
        t0 = time.perf_counter()
        written: list[str] = []
        status, error, tb, metrics = "ok", o.error, o.traceback, {}
        if error is not None:
            status = "failed"
        else:
            try:
                metrics = {str(k): _scalar(v, str(k)) for k, v in o.output.metrics.items()}
                self._write_outputs(spec, o.output, written)
            except Exception as e:
                status, error = "failed", f"writing outputs failed: {type(e).__name__}: {e}"
                tb = traceback.format_exc()
                log.warning("batch: item %s: %s", spec.name, error)
                for fname in written:  # do not leave a half set of outputs behind
                    _remove(Path(spec.output_dir) / fname)
                written = []
        if spec.scratch_dir:
            _remove(Path(spec.scratch_dir))
        record = {
            "index": spec.index, "name": spec.name, "input": spec.path, "status": status, "error": error,
            "traceback": tb, "wall_time_s": round(o.seconds + time.perf_counter() - t0, 6),
            "rank": spec.rank, "host": self.host, "seed": spec.seed, "outputs": written, "metrics": metrics,
            "run_id": trainer.datamodule.plan.run_id,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(_record_path(spec.output_dir, spec.name), json.dumps(record, indent=1, default=str))


# ---------------------------------------------------------------------------------------------------
# summary


@dataclass
class BatchSummary:
    """Outcome of a run: one row per input (``summary.json`` content), and the summary's paths."""

    rows: list[dict[str, Any]]
    csv_path: Path
    json_path: Path

    def names(self, status: str) -> list[str]:
        return [r["name"] for r in self.rows if r["status"] == status]

    @property
    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.rows:
            c[r["status"]] = c.get(r["status"], 0) + 1
        return c

    def __str__(self) -> str:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        return f"{len(self.rows)} input(s): {parts or 'none'}; summary {self.csv_path}"


def _summary_rows(plan: _Plan) -> list[dict[str, Any]]:
    rows = []
    pending = set(plan.pending)
    for i, spec in enumerate(plan.specs):
        rec = read_record(spec.output_dir, spec.name)
        if i in pending:
            if rec is None or rec.get("run_id") != plan.run_id:
                rec = {"status": "missing", "error": "no record from this run (a process stopped early?)"}
        else:
            rec = dict(rec or {})
            if rec.get("status") == "ok":
                rec["status"] = "skipped"
        row = {"index": spec.index, "name": spec.name, "input": spec.path, "seed": spec.seed}
        for k in ("status", "error", "wall_time_s", "rank", "host", "outputs", "run_id", "finished_at",
                  "traceback"):
            row.setdefault(k, rec.get(k))
        row["metrics"] = rec.get("metrics") or {}
        rows.append(row)
    return rows


def write_summary(rows: list[dict[str, Any]], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``summary.csv`` (one row per item, metric columns after the fixed ones) and ``summary.json``."""
    out = Path(output_dir)
    metric_keys = sorted({k for r in rows for k in r["metrics"]})
    cols = list(_SUMMARY_COLUMNS) + [k if k not in _SUMMARY_COLUMNS else f"metric_{k}" for k in metric_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        fixed = []
        for c in _SUMMARY_COLUMNS:
            v = r.get(c)
            if c == "outputs":
                v = ";".join(v or [])
            elif c == "error" and v:
                v = " ".join(str(v).split())[:500]
            fixed.append("" if v is None else v)
        w.writerow(fixed + ["" if r["metrics"].get(k) is None else r["metrics"][k] for k in metric_keys])
    csv_path = atomic_write(out / SUMMARY_CSV, buf.getvalue())
    json_path = atomic_write(out / SUMMARY_JSON, json.dumps(rows, indent=1, default=str))
    return csv_path, json_path


def _read_summary(output_dir: Path) -> BatchSummary:
    rows = json.loads((output_dir / SUMMARY_JSON).read_text(encoding="utf-8"))
    return BatchSummary(rows, output_dir / SUMMARY_CSV, output_dir / SUMMARY_JSON)


def summarize(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
              base_seed: int = 0) -> list[dict[str, Any]]:
    """Progress of a (possibly running or killed) batch from the item records, without running anything:
    one row per input with status ``ok`` (done), ``failed``, or ``pending`` (no record yet)."""
    rows = []
    for spec in resolve_inputs(inputs, output_dir, base_seed):
        rec = read_record(spec.output_dir, spec.name) or {}
        status = "ok" if is_done(spec) else ("failed" if rec.get("status") == "failed" else "pending")
        rows.append({"index": spec.index, "name": spec.name, "input": spec.path, "status": status,
                     "error": rec.get("error"), "metrics": rec.get("metrics") or {}})
    return rows


# ---------------------------------------------------------------------------------------------------
# entry points


def run_batch(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
              process_item: str | ProcessItem, *, process_kwargs: Mapping[str, Any] | None = None,
              devices: int | str | list[int] = 1, num_nodes: int = 1, accelerator: str = "cpu",
              strategy: str | Any = "auto", base_seed: int = 0, overwrite: bool = False,
              retry_failed: bool = True, progress: bool = True, num_threads: int | None = None,
              barrier_timeout_h: float = 72.0,
              trainer_kwargs: Mapping[str, Any] | None = None) -> BatchSummary:
    """Reconstruct every input with ``process_item`` under ``Trainer.predict``; see the module docstring.

    Args:
        inputs: glob, manifest (.csv/.tsv/.txt/.lst) or list of paths (:func:`resolve_inputs`).
        output_dir: created if missing; holds outputs, ``summary.csv/json`` and ``.sciprior_batch/``.
        process_item: ``f(ItemSpec) -> ItemOutput``, a class building one, or its import path
            ``"package.module:attr"`` (:func:`load_process_item`; prefer a path for DDP/configs).
        process_kwargs: constructor / keyword arguments of ``process_item``.
        devices, num_nodes, accelerator, strategy: as in ``lightning.pytorch.Trainer``; several devices
            or nodes run DDP (the script is relaunched once per extra local device, or started by srun).
        base_seed: item seeds are ``item_seed(name, base_seed)``.
        overwrite: process every input again (a requeued job then also starts over).
        retry_failed: process inputs that failed in an earlier run again (default) or keep them failed.
        progress: Lightning's progress bar (rank 0 shows its own shard).
        num_threads: torch intra-op threads per process (default: Lightning's choice, which on CPU DDP
            is cores / processes unless OMP_NUM_THREADS is set). CPU results are bitwise identical
            across device counts only at a fixed thread count (BLAS reductions split by thread).
        barrier_timeout_h: process-group timeout: how long finished ranks wait for the slowest one.
        trainer_kwargs: extra ``Trainer`` arguments (e.g. ``precision``, ``plugins``).

    Returns:
        the :class:`BatchSummary` (every process returns it).
    """
    specs = resolve_inputs(inputs, output_dir, base_seed)
    if isinstance(process_item, str):
        _import_target(process_item)  # fail before starting processes (instantiated later, once per rank)
    out = Path(specs[0].output_dir)
    state = out / STATE_DIR
    _items_dir(out).mkdir(parents=True, exist_ok=True)

    module = BatchModule(process_item, process_kwargs, num_threads)
    data = BatchDataModule(specs, overwrite=overwrite, retry_failed=retry_failed)
    writer = BatchWriter([s.name for s in specs])
    kwargs: dict[str, Any] = dict(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        inference_mode=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
        use_distributed_sampler=False, enable_progress_bar=progress, default_root_dir=str(state),
    )
    kwargs.update(trainer_kwargs or {})
    kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), writer]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        trainer = pl.Trainer(**kwargs)
        if hasattr(trainer.strategy, "_timeout"):  # DDP: ranks that finish early wait at the final barrier
            trainer.strategy._timeout = timedelta(hours=barrier_timeout_h)
        trainer.predict(module, datamodule=data, return_predictions=False)

    # every rank has written its records: rank 0 merges them (ddp_spawn: the main process does)
    trainer.strategy.barrier("sciprior-batch-summary")
    if trainer.is_global_zero:
        # ddp_spawn: the plan lived in the (finished) workers; the main process reads it from disk
        plan = data.plan if data.plan is not None else _Plan.load(out, specs)
        write_summary(_summary_rows(plan), out)
        for ckpt in state.glob("hpc_ckpt_*.ckpt"):  # SLURM requeue checkpoints: not needed once done
            ckpt.unlink(missing_ok=True)
    trainer.strategy.barrier("sciprior-batch-summary-written")
    summary = _read_summary(out)
    if trainer.is_global_zero:
        log.info("batch: %s", summary)
    return summary


# ---------------------------------------------------------------------------------------------------
# config / CLI


@dataclass
class BatchConfig:
    """Schema of ``sciprior batch CONFIG.yaml`` (see the module docstring for an example).

    Attributes:
        inputs: glob, manifest path (.csv/.tsv/.txt/.lst) or list of paths.
        output_dir: where outputs, summary.csv and the engine state (.sciprior_batch/) go.
        process_item: ``reconstruct`` (the default: :class:`sciprior.batch_reconstruct.ReconstructItem`,
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
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="sciprior batch", description="Reconstruct many inputs (sciprior.batch).",
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
    from sciprior.batch_reconstruct import PROCESS_ITEMS

    kw = dataclasses.asdict(cfg)
    target = kw.pop("process_item")
    if target in PROCESS_ITEMS:
        if target == "reconstruct":
            if "config" not in kw["process_kwargs"]:
                raise ValueError("process_kwargs.config: `process_item: reconstruct` needs the path of a "
                                 "reconstruction config (e.g. configs/ct/sparse_view.yaml)")
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


__all__ = [
    "BatchConfig", "BatchDataModule", "BatchModule", "BatchSummary", "BatchWriter", "ItemOutput", "ItemSpec",
    "ShardSampler", "atomic_write", "is_done", "item_seed", "load_process_item", "main", "parse_config",
    "read_record", "resolve_inputs", "run_batch", "run_batch_config", "summarize", "write_summary",
]

if __name__ == "__main__":  # pragma: no cover
    # `python -m sciprior.batch`: run the imported module's main, so that `sciprior.batch.ItemOutput`
    # (used by process_item implementations) is the class the engine checks against
    from sciprior.batch import main as _main

    sys.exit(_main())
