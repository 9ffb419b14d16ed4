"""Plain data for JSON / YAML (reports, checkpoint configs, summaries): the one converter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


def finite_float(v: float | Tensor) -> float | None:
    """``float(v)`` for JSON: NaN -> None, +-inf -> +-1e300."""
    f = float(v)
    return None if math.isnan(f) else (f if math.isfinite(f) else (1e300 if f > 0 else -1e300))


def plain(v: Any) -> Any:
    """Plain JSON/YAML values: tuples -> lists, numpy scalars -> Python, tensors/arrays -> lists (small) or a
    shape note, paths -> strings, non-finite floats -> None / +-1e300."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bool):  # before int (bool is an int); subclasses (range-typed values) become the builtin
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return finite_float(float(v))
    if isinstance(v, Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"array{v.shape}"
    return None if v is None else str(v)  # str subclasses become str


__all__ = ["finite_float", "plain"]
