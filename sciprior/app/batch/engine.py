"""Batch engine: process many inputs with Lightning's predict loop, spread over devices and nodes.

``run_batch(inputs, output_dir, process_item, ...)`` knows nothing about modalities. It hands each
input to ``process_item(spec: ItemSpec) -> ItemOutput``, which reconstructs ONE input and returns the
arrays / files to write and a metrics dict. ``process_item`` is the name of a registered processor
(``reconstruct``, or one an installed package declares in the entry-point group ``sciprior.processors``:
:mod:`~sciprior.app.batch.registry`; a config never names code by import path), or, from Python, the
function or class itself (a class is instantiated once per process). The engine guarantees:

- **Nothing runs before everything is checked.** The inputs (glob, manifest, names), the output directory
  (creatable, not a file, not holding the inputs), the run settings (devices, num_nodes, num_threads ...),
  the processor's name and ``process_kwargs`` (against its signature; ``reconstruct`` also validates its
  reconstruction config against the inputs in order until one validates) and the Lightning trainer are
  checked by :func:`prepare_batch` before anything is written: a bad setting raises ``BatchConfigError``
  naming the key, and the output directory is not even created.

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
  item ``failed`` with the error message; the other items go on. An input that is not a regular file or
  directory (a FIFO, a device) is recorded failed without being opened (reading it could block forever).
- **A summary of every item** (``summary.csv`` and ``summary.json`` in the output directory, one row
  per input: status ok / failed / skipped, error, wall time, rank, host, seed, outputs, metrics) is
  merged by global rank 0 from the per-item records once every rank has finished, so it is complete
  after any sequence of kills and restarts.

Gradients: the predict loop runs with ``inference_mode=False`` (under ``torch.no_grad``), so a solver
that needs gradients (DPS, PiGDM) enables them locally with ``torch.enable_grad()``.

Multi-node: ``output_dir`` must be on a file system that every node sees. Do not run two batch jobs on
the same ``output_dir`` at the same time. See ``scripts/slurm_batch.sh`` (SLURM, auto-requeue) and
``scripts/batch_example.py``.
The config of ``sciprior batch`` is :class:`sciprior.app.batch.cli.BatchConfig`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import socket
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from sciprior.app.batch import registry
from sciprior.app.batch.inputs import resolve_inputs
from sciprior.app.batch.records import (
    STATE_DIR,
    clean_stale,
    is_done,
    items_dir,
    npy_bytes,
    read_record,
    record_path,
    scalar,
)
from sciprior.app.batch.spec import BatchConfigError, FileContent, ItemOutput, ItemSpec, ProcessItem, input_problem
from sciprior.io.atomic import atomic_write, commit_dir, remove, temp_name
from sciprior.io.paths import InputError

log = logging.getLogger("sciprior.batch")

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
_SUMMARY_COLUMNS = ("index", "name", "input", "status", "error", "wall_time_s", "rank", "host", "seed",
                    "outputs", "run_id", "finished_at")


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
            {"run_id": self.run_id, "pending": self.pending, "skipped": self.skipped}), fsync=True)

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
        removed = clean_stale(out)
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

    ``process_item`` may be a registered name (:mod:`~sciprior.app.batch.registry`, resolved in :meth:`setup`
    on every process, so it works under DDP, ``ddp_spawn`` and from a YAML config) or a callable (must be
    picklable for spawn).
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
            self._fn = registry.load_process_item(self.target, self.process_kwargs)

    def predict_step(self, spec: ItemSpec, batch_idx: int = 0) -> _Outcome:
        if self._fn is None:
            self.setup("predict")
        scratch = temp_name(Path(spec.output_dir) / spec.name, ".d")
        scratch.mkdir(parents=True)
        spec = dataclasses.replace(spec, rank=self.global_rank, world_size=self.trainer.world_size,
                                   device=str(self.device), scratch_dir=str(scratch))
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        random.seed(spec.seed)
        t0 = time.perf_counter()
        try:
            problem = input_problem(spec.path)  # a FIFO or device would block the processor forever
            if problem is not None:
                raise InputError(problem)
            out = self._fn(spec)
            if not isinstance(out, ItemOutput):
                raise TypeError(f"process_item returned {type(out).__name__}, "
                                "expected sciprior.app.batch.ItemOutput")
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
        if fname in (SUMMARY_CSV, SUMMARY_JSON):
            raise ValueError(f"output {fname} of item {spec.name} would replace the batch's own {fname}; rename the "
                             "item (CSV manifest `name` column) or the suffix")
        for k in range(len(spec.name) + 1, len(fname) + 1):
            if fname[:k] in self.names:
                raise ValueError(f"output {fname} of item {spec.name} could be mistaken for an output of "
                                 f"item {fname[:k]}; rename the items (CSV manifest `name` column) or the "
                                 "suffix")

    def _write_outputs(self, spec: ItemSpec, out: ItemOutput, written: list[str]) -> None:
        jobs: list[tuple[str, FileContent]] = []
        for suffix, arr in out.arrays.items():
            jobs.append((f"{spec.name}{suffix}.npy", npy_bytes(arr, suffix)))
        for suffix, content in out.files.items():
            jobs.append((f"{spec.name}{suffix}", content))
        seen = set()
        for fname, _ in jobs:
            self._check_output_name(spec, fname[len(spec.name):], fname)
            if fname in seen:
                raise ValueError(f"item {spec.name} returned two outputs named {fname}")
            seen.add(fname)
        for fname, content in jobs:
            atomic_write(Path(spec.output_dir) / fname, content, fsync=True)
            written.append(fname)
        if spec.scratch_dir and any(Path(spec.scratch_dir).iterdir()):
            commit_dir(Path(spec.scratch_dir), Path(spec.output_dir) / spec.name)
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
                metrics = {str(k): scalar(v, str(k)) for k, v in o.output.metrics.items()}
                self._write_outputs(spec, o.output, written)
            except Exception as e:
                status, error = "failed", f"writing outputs failed: {type(e).__name__}: {e}"
                tb = traceback.format_exc()
                log.warning("batch: item %s: %s", spec.name, error)
                for fname in written:  # do not leave a half set of outputs behind
                    remove(Path(spec.output_dir) / fname)
                written = []
        if spec.scratch_dir:
            remove(Path(spec.scratch_dir))
        record = {
            "index": spec.index, "name": spec.name, "input": spec.path, "status": status, "error": error,
            "traceback": tb, "wall_time_s": round(o.seconds + time.perf_counter() - t0, 6),
            "rank": spec.rank, "host": self.host, "seed": spec.seed, "outputs": written, "metrics": metrics,
            "run_id": trainer.datamodule.plan.run_id,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(record_path(spec.output_dir, spec.name), json.dumps(record, indent=1, default=str), fsync=True)


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
    csv_path = atomic_write(out / SUMMARY_CSV, buf.getvalue(), fsync=True)
    json_path = atomic_write(out / SUMMARY_JSON, json.dumps(rows, indent=1, default=str), fsync=True)
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


def _positive_int(value: Any, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchConfigError(f"{key}: expected an integer >= 1{' or null' if allow_none else ''}, got {value!r}",
                               key=key)


def _check_devices(devices: Any) -> None:
    msg = (f"devices: expected a number of devices >= 1, 'auto', or a non-empty list of device indices, got "
           f"{devices!r}")
    if isinstance(devices, str):
        s = devices.strip()
        if s == "auto" or (s.isdigit() and int(s) >= 1):
            return
        parts = [p.strip() for p in s.split(",") if p.strip()]
        if "," in s and parts and all(p.isdigit() for p in parts) and len(set(parts)) == len(parts):
            return
        raise BatchConfigError(msg, key="devices")
    if isinstance(devices, (list, tuple)):
        if devices and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices) \
                and len(set(devices)) == len(devices):
            return
        raise BatchConfigError(msg, key="devices")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise BatchConfigError(msg + " (all devices: 'auto')", key="devices")


def check_output_dir(output_dir: Any) -> Path:
    """The absolute output directory, checked before anything is created: not empty, a directory if it exists,
    else creatable (its first existing ancestor is a writable directory). Raises :class:`BatchConfigError`
    naming ``output_dir``."""
    s = "" if output_dir is None else os.fspath(output_dir)
    if not str(s).strip():
        raise BatchConfigError("output_dir: empty; give the directory the outputs, summary.csv and the batch's "
                               "records go to", key="output_dir")
    out = Path(os.path.abspath(os.path.expanduser(s)))
    if out.exists():
        if not out.is_dir():
            raise BatchConfigError(f"output_dir: {str(out)!r} exists and is not a directory", key="output_dir")
        if not os.access(out, os.W_OK | os.X_OK):
            raise BatchConfigError(f"output_dir: {str(out)!r} is not writable", key="output_dir")
        return out
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BatchConfigError(f"output_dir: {str(out)!r} cannot be created: {str(parent)!r} is not a directory",
                               key="output_dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BatchConfigError(f"output_dir: {str(out)!r} cannot be created: {str(parent)!r} is not writable",
                               key="output_dir")
    return out


def _check_inputs_outside_outputs(specs: Sequence[ItemSpec], out: Path) -> None:
    """No input may sit where the batch writes (``<output_dir>/<name>*``, the summary, the state directory)."""
    names = {s.name for s in specs}
    reserved = {SUMMARY_CSV, SUMMARY_JSON, STATE_DIR}
    for s in specs:
        try:
            rel = Path(s.path).relative_to(out)
        except ValueError:
            continue
        first = rel.parts[0] if rel.parts else ""
        owner = next((first[:k] for k in range(1, len(first) + 1) if first[:k] in names), None)
        if first in reserved or owner is not None or not rel.parts:
            what = f"the outputs of item {owner!r} ({out / owner}*)" if owner else "the batch's own files"
            raise BatchConfigError(f"inputs: {s.path} lies in output_dir {str(out)!r} where {what} are written; "
                                   "move the inputs or choose another output_dir", key="output_dir")


@dataclass
class PreparedBatch:
    """A batch whose every setting is checked and nothing is written yet; :meth:`run` runs it."""

    specs: list[ItemSpec]
    output_dir: Path
    trainer: pl.Trainer
    module: BatchModule
    data: BatchDataModule
    writer: BatchWriter

    def run(self) -> BatchSummary:
        """Process the pending items (see the module docstring); returns the summary on every process."""
        out, specs, trainer, data = self.output_dir, self.specs, self.trainer, self.data
        state = out / STATE_DIR
        items_dir(out).mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
            trainer.predict(self.module, datamodule=data, return_predictions=False)

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


def prepare_batch(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                  process_item: str | ProcessItem = "reconstruct", *,
                  process_kwargs: Mapping[str, Any] | None = None, devices: int | str | list[int] = 1,
                  num_nodes: int = 1, accelerator: str = "cpu", strategy: str | Any = "auto", base_seed: int = 0,
                  overwrite: bool = False, retry_failed: bool = True, progress: bool = True,
                  num_threads: int | None = None, barrier_timeout_h: float = 72.0,
                  trainer_kwargs: Mapping[str, Any] | None = None) -> PreparedBatch:
    """Every check of :func:`run_batch` that needs no compute, in this order: the inputs, the output directory,
    the run settings, the processor (a registered name or a callable, its ``process_kwargs``, and its own
    ``check_config``), the Lightning trainer. Nothing is written; raises ``BatchConfigError`` (a ValueError naming
    the key), or ``FileNotFoundError`` / ``ValueError`` naming the input, manifest or glob."""
    out = check_output_dir(output_dir)
    specs = resolve_inputs(inputs, out, base_seed)
    _check_inputs_outside_outputs(specs, out)
    _check_devices(devices)
    _positive_int(num_nodes, "num_nodes")
    _positive_int(num_threads, "num_threads", allow_none=True)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int):
        raise BatchConfigError(f"base_seed: expected an integer, got {base_seed!r}", key="base_seed")
    if isinstance(barrier_timeout_h, bool) or not isinstance(barrier_timeout_h, (int, float)) \
            or not math.isfinite(barrier_timeout_h) or barrier_timeout_h <= 0:
        raise BatchConfigError(f"barrier_timeout_h: expected a positive number of hours, got {barrier_timeout_h!r}",
                               key="barrier_timeout_h")
    for key, value in (("overwrite", overwrite), ("retry_failed", retry_failed), ("progress", progress)):
        if not isinstance(value, bool):
            raise BatchConfigError(f"{key}: expected true or false, got {value!r}", key=key)
    if isinstance(process_item, str):
        registry.get(process_item)  # an unregistered name fails here, before the trainer (nothing imported)

    state = out / STATE_DIR
    kwargs: dict[str, Any] = dict(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        inference_mode=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
        use_distributed_sampler=False, enable_progress_bar=progress, default_root_dir=str(state),
    )
    kwargs.update(trainer_kwargs or {})
    writer = BatchWriter([s.name for s in specs])
    kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), writer]
    try:
        trainer = pl.Trainer(**kwargs)
    except Exception as e:  # MisconfigurationException, ValueError, ...: Lightning names the argument
        raise BatchConfigError(f"accelerator / devices / num_nodes / strategy: the Lightning Trainer refuses "
                               f"accelerator={accelerator!r}, devices={devices!r}, num_nodes={num_nodes!r}, "
                               f"strategy={strategy!r}: {e}", key="accelerator") from e
    # the processor's settings, checked against its signature and (its check_config) against the inputs
    target, kw = registry.prepare(process_item, process_kwargs, [s.path for s in specs])
    if hasattr(trainer.strategy, "_timeout"):  # DDP: ranks that finish early wait at the final barrier
        trainer.strategy._timeout = timedelta(hours=barrier_timeout_h)
    module = BatchModule(process_item if isinstance(process_item, str) else target, kw, num_threads)
    data = BatchDataModule(specs, overwrite=overwrite, retry_failed=retry_failed)
    return PreparedBatch(specs, out, trainer, module, data, writer)


def run_batch(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
              process_item: str | ProcessItem = "reconstruct", *, process_kwargs: Mapping[str, Any] | None = None,
              devices: int | str | list[int] = 1, num_nodes: int = 1, accelerator: str = "cpu",
              strategy: str | Any = "auto", base_seed: int = 0, overwrite: bool = False,
              retry_failed: bool = True, progress: bool = True, num_threads: int | None = None,
              barrier_timeout_h: float = 72.0,
              trainer_kwargs: Mapping[str, Any] | None = None) -> BatchSummary:
    """Reconstruct every input with ``process_item`` under ``Trainer.predict``; see the module docstring.

    Args:
        inputs: glob, manifest (.csv/.tsv/.txt/.lst) or list of paths (:func:`resolve_inputs`).
        output_dir: created if missing; holds outputs, ``summary.csv/json`` and ``.sciprior_batch/``.
        process_item: the name of a registered processor (``"reconstruct"``, or an entry point of the group
            ``sciprior.processors``: :mod:`sciprior.app.batch.registry`; never an import path), or the
            processor itself: ``f(ItemSpec, **process_kwargs) -> ItemOutput`` or a class building one.
        process_kwargs: constructor / keyword arguments of ``process_item`` (checked against its signature).
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

    Raises:
        BatchConfigError, FileNotFoundError, ValueError: before anything is written or computed
            (:func:`prepare_batch`).
    """
    return prepare_batch(inputs, output_dir, process_item, process_kwargs=process_kwargs, devices=devices,
                         num_nodes=num_nodes, accelerator=accelerator, strategy=strategy, base_seed=base_seed,
                         overwrite=overwrite, retry_failed=retry_failed, progress=progress, num_threads=num_threads,
                         barrier_timeout_h=barrier_timeout_h, trainer_kwargs=trainer_kwargs).run()


__all__ = ["BatchDataModule", "BatchModule", "BatchSummary", "BatchWriter", "PreparedBatch", "ShardSampler",
           "check_output_dir", "prepare_batch", "run_batch", "summarize", "write_summary"]
