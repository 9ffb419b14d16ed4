"""Greyscale images from PNG / JPEG / TIFF (Pillow) or 2D NumPy arrays, as floats in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_grey(path: str | Path) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: 8/16-bit images by their bit depth, arrays by their own range."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = np.load(path, allow_pickle=False).astype(np.float32)
        if a.ndim != 2:
            raise ValueError(f"{path}: expected a 2D array, got shape {a.shape}")
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo if hi > lo else 1.0)
    with Image.open(path) as im:
        a = np.asarray(im.convert("I;16") if im.mode.startswith("I;16") else im.convert("L"), dtype=np.float32)
    return a / (65535.0 if a.max() > 255 else 255.0)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` from the file's header (images) or array header (NPY)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return tuple(np.load(path, mmap_mode="r").shape[:2])
    with Image.open(path) as im:
        return im.size[1], im.size[0]
