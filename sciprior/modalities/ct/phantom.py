"""Ellipse phantoms with closed-form line integrals (the analytic Radon transform).

An ellipse with centre ``(x0, y0)``, semi-axes ``a`` (along its own x axis) and ``b``, rotated by
``phi`` (counter-clockwise) and of density ``rho`` has, on the line ``x cos t + y sin t = s``,

    p(t, s) = 2 rho a b sqrt(q - d^2) / q   if d^2 <= q, else 0,
    q = a^2 cos^2(t - phi) + b^2 sin^2(t - phi),  d = s - x0 cos t - y0 sin t

(Kak & Slaney, *Principles of Computerized Tomographic Imaging*, 1988, sec. 3.1). Phantoms are sums
of ellipses; coordinates in mm (x right, y up, as in :mod:`sciprior.modalities.ct.geometry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sciprior.modalities.ct.geometry import ray_to_parallel


@dataclass(frozen=True)
class Ellipse:
    """One ellipse: density ``rho`` (image units), centre ``(x0, y0)`` and semi-axes ``a, b`` in mm,
    rotation ``phi`` in radians (counter-clockwise from the x axis)."""

    rho: float
    a: float
    b: float
    x0: float = 0.0
    y0: float = 0.0
    phi: float = 0.0


def shepp_logan(radius: float = 1.0, scale: float = 1.0) -> list[Ellipse]:
    """The modified Shepp-Logan head phantom (Toft 1996 contrasts), scaled to an outer ``radius`` (mm).

    Densities are the additive contrasts times ``scale`` (skull 1.0, brain 0.2 for ``scale=1``).
    """
    table = [  # rho, a, b, x0, y0, phi (deg)
        (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
        (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
        (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
        (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
        (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
        (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
        (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
        (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
        (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
        (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
    ]
    return [Ellipse(rho * scale, a * radius, b * radius, x0 * radius, y0 * radius, np.deg2rad(p))
            for rho, a, b, x0, y0, p in table]


def ellipse_line_integrals(ellipses: Sequence[Ellipse], theta, s):
    """Exact line integrals ``sum_e p_e(theta, s)`` (density x mm) for lines in parallel coordinates.

    ``theta`` (radians) and ``s`` (mm) broadcast together; numpy arrays or torch tensors (float64
    recommended).
    """
    lib = torch if isinstance(theta, Tensor) else np
    total = 0.0 * (theta + s)
    for e in ellipses:
        q = (e.a * lib.cos(theta - e.phi)) ** 2 + (e.b * lib.sin(theta - e.phi)) ** 2
        d = s - e.x0 * lib.cos(theta) - e.y0 * lib.sin(theta)
        inside = q - d * d
        chord = lib.sqrt(lib.clip(inside, 0.0, None)) if lib is np else torch.sqrt(inside.clamp_min(0.0))
        total = total + 2.0 * e.rho * e.a * e.b * chord / q
    return total


def ellipse_ray_integrals(ellipses: Sequence[Ellipse], origin, direction):
    """Exact line integrals along rays given by a point and a direction, ``(..., 2)`` each (mm)."""
    theta, s = ray_to_parallel(origin, direction)
    return ellipse_line_integrals(ellipses, theta, s)


def rasterize(ellipses: Sequence[Ellipse], shape: Sequence[int], pixel_size: float,
              supersample: int = 8, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel-averaged image ``(1, 1, H, W)`` of the phantom (``supersample^2`` points per pixel)."""
    h, w = (int(v) for v in shape)
    k = int(supersample)
    off = (np.arange(k) + 0.5) / k - 0.5
    ys = ((h - 1) / 2 - (np.arange(h)[:, None] + off[None, :]).reshape(-1)) * pixel_size
    xs = ((np.arange(w)[:, None] + off[None, :]).reshape(-1) - (w - 1) / 2) * pixel_size
    x, y = np.meshgrid(xs, ys, indexing="xy")
    img = np.zeros_like(x)
    for e in ellipses:
        c, s = np.cos(e.phi), np.sin(e.phi)
        u = (x - e.x0) * c + (y - e.y0) * s
        v = -(x - e.x0) * s + (y - e.y0) * c
        img += e.rho * ((u / e.a) ** 2 + (v / e.b) ** 2 <= 1.0)
    img = img.reshape(h, k, w, k).mean(axis=(1, 3))
    return torch.as_tensor(img, dtype=dtype)[None, None]
