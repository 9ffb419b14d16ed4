"""The intensity scale of one MR magnitude image, the same for training slices and for measured k-space.

A scan's k-space has an arbitrary scale (receiver gain, FFT convention, vendor export), and a slice has no
volume around it, so the prior's domain is fixed per image: ``x = 2 |m| / s - 1`` with ``s`` a robust
percentile of the image's *foreground* (pixels above ``floor`` times the image's ``percentile`` percentile).
Taking the percentile over the foreground, not over all pixels, keeps ``s`` the same whether the field of
view is tight (a training slice cut to the head) or has wide empty margins (a 320 x 320 acquisition of the
same head): the share of background does not move it. ``s`` scales with the image, so the map is exactly
invariant to the file's scale factor.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

#: percentile of the foreground magnitude mapped to 1 (then to +1 in the prior's domain)
SCALE_PERCENTILE = 99.0
#: foreground: pixels above this fraction of the whole image's percentile
FOREGROUND_FLOOR = 0.1


def foreground_scale(magnitude: Tensor | np.ndarray, percentile: float = SCALE_PERCENTILE,
                     floor: float = FOREGROUND_FLOOR) -> float:
    """``s``: the ``percentile`` percentile of the pixels of ``magnitude`` (any shape, >= 0) above ``floor`` times
    the ``percentile`` percentile of all pixels; 0 for an all-zero image."""
    if isinstance(magnitude, Tensor):
        magnitude = magnitude.detach().cpu().double().numpy()
    m = np.asarray(magnitude, dtype=np.float64).ravel()
    if m.size == 0:
        raise ValueError("foreground_scale: empty image")
    whole = float(np.percentile(m, percentile))
    if whole <= 0:
        whole = float(m.max())
        if whole <= 0:
            return 0.0
    fg = m[m > floor * whole]
    return float(np.percentile(fg, percentile)) if fg.size else whole


__all__ = ["FOREGROUND_FLOOR", "SCALE_PERCENTILE", "foreground_scale"]
