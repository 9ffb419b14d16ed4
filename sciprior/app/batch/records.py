"""The batch engine's records: one JSON file per item under ``.sciprior_batch/items/`` (written last: the commit)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciprior.app.batch.spec import ItemSpec, Scalar
from sciprior.io.atomic import remove_stale

STATE_DIR = ".sciprior_batch"  #: engine state inside the output directory (records, Lightning files)


def npy_bytes(value: Any, key: str) -> bytes:
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


def scalar(v: Any, key: str) -> Scalar:
    if isinstance(v, (torch.Tensor, np.ndarray)):
        if (v.numel() if isinstance(v, torch.Tensor) else v.size) != 1:
            raise TypeError(f"metric {key!r} is an array of shape {tuple(v.shape)}; metrics must be scalars")
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"metric {key!r} has type {type(v).__name__}; metrics must be scalars")


def items_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / STATE_DIR / "items"


def record_path(output_dir: str | os.PathLike, name: str) -> Path:
    return items_dir(output_dir) / f"{name}.json"


def read_record(output_dir: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The stored record of item ``name`` (or None if absent or unreadable)."""
    try:
        return json.loads(record_path(output_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(spec: ItemSpec) -> bool:
    """True when the item's record says ``ok`` and all its outputs exist."""
    rec = read_record(spec.output_dir, spec.name)
    return (rec is not None and rec.get("status") == "ok" and rec.get("input") == spec.path
            and all((Path(spec.output_dir) / o).exists() for o in rec.get("outputs", [])))


def clean_stale(output_dir: Path) -> int:
    """Delete the in-flight files and scratch directories an interrupted run left behind."""
    return remove_stale(output_dir) + remove_stale(Path(output_dir) / STATE_DIR) + remove_stale(items_dir(output_dir))


__all__ = ["STATE_DIR", "clean_stale", "is_done", "items_dir", "npy_bytes", "read_record", "record_path", "scalar"]
