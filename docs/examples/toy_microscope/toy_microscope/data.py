"""The toy microscope's training reader: each file is one example, intensities [0, 1] -> [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toy_microscope.images import read_grey


@dataclass
class ToyImages:
    """One ``(1, 1, H, W)`` example per image file (PNG, JPEG, TIFF, NPY), in the adapter's domain.

    Args:
        size: centre square crop of this side (None: the whole image); training patches come from the data
            module's ``patch_size``.
    """

    size: int | None = None

    def __call__(self, path: str) -> np.ndarray:
        img = read_grey(path)
        if self.size is not None:
            top, left = (img.shape[0] - self.size) // 2, (img.shape[1] - self.size) // 2
            img = img[top:top + self.size, left:left + self.size]
        return np.ascontiguousarray((2.0 * img - 1.0)[None, None], dtype=np.float32)
