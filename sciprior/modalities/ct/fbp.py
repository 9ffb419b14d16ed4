"""Filtered back-projection (FBP) for parallel beam and for fan beam (equiangular or flat detector).

Parallel beam: ``f(x, y) = sum_v w_v q_v(x cos theta_v + y sin theta_v)``, ``q_v = p_v * h`` with the
band-limited discrete ramp ``h`` of Kak & Slaney (1988, eq. 3.61: ``h(0) = 1/(4 tau^2)``,
``h(n tau) = -1/(n pi tau)^2`` for odd ``n``, 0 for even ``n``), apodised in frequency by the chosen
window, and ``w_v`` the angular width of view ``v`` (``pi / V`` for a uniform half scan).

Fan beam: weighted FBP without rebinning (Kak & Slaney sec. 3.4), for a full ``2 pi`` scan:

- equiangular: ``Q_b = (R_b(gamma) D cos gamma) * g``, ``g(gamma) = 1/2 (gamma / sin gamma)^2 h(gamma)``,
  ``f = sum_b w_b Q_b(gamma') / L^2`` (``L``: source-to-pixel distance, ``D``: source to centre);
- flat: detector rescaled to the rotation axis (``a = u R / D_sd``),
  ``Q_b = (R_b(a) R / sqrt(R^2 + a^2)) * h / 2``, ``f = sum_b w_b Q_b(a') / U^2`` with
  ``U = (source-to-pixel distance along the central ray) / R``.

The factor 1/2 accounts for every line being measured twice in a 2 pi scan. Short scans
(pi + fan angle) would need Parker weights: not implemented; limited-angle and sparse-view sets
simply use their angular weights (their artefacts are the point of those geometries).

Back-projection is pixel-driven with linear interpolation on the detector (the usual FBP choice;
the matched adjoint of the projector is ``op.adjoint``). Output is in the image units of the
operator (the sinogram divided by mm), differentiable, batched, on the sinogram's device.

Filters (``filter=``), with ``f`` in cycles per detector sample (``|f| <= 1/2``) and ``cutoff`` in
(0, 1] scaling the band (response zero above ``cutoff / 2``):
``ram-lak`` 1; ``shepp-logan`` ``sinc(f / cutoff)``; ``cosine`` ``cos(pi f / cutoff)``;
``hamming`` ``0.54 + 0.46 cos(2 pi f / cutoff)``; ``hann`` ``0.5 + 0.5 cos(2 pi f / cutoff)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def filter_window(name: str, f: np.ndarray, cutoff: float = 1.0) -> np.ndarray:
    """Apodisation window at frequencies ``f`` (cycles/sample), see the module docstring."""
    if not 0 < cutoff <= 1:
        raise ValueError(f"FBP: cutoff must be in (0, 1], got {cutoff}")
    g = np.asarray(f, dtype=np.float64) / cutoff
    if name == "ram-lak":
        win = np.ones_like(g)
    elif name == "shepp-logan":
        win = np.sinc(g)
    elif name == "cosine":
        win = np.cos(np.pi * g)
    elif name == "hamming":
        win = 0.54 + 0.46 * np.cos(2 * np.pi * g)
    elif name == "hann":
        win = 0.5 + 0.5 * np.cos(2 * np.pi * g)
    else:
        raise ValueError(f"FBP: unknown filter {name!r}; choose one of {', '.join(FILTERS)}")
    return np.where(np.abs(g) <= 0.5, win, 0.0)


def ramp_kernel(n_pad: int, tau: float, name: str = "ram-lak", cutoff: float = 1.0) -> np.ndarray:
    """Apodised discrete ramp kernel on ``n_pad`` circular samples (index ``n`` and ``n - n_pad``),
    units 1/tau^2. ``tau`` is the sample spacing."""
    n = np.fft.fftfreq(n_pad, d=1.0 / n_pad)            # 0, 1, ..., -1 (integer offsets)
    h = np.zeros(n_pad)
    h[0] = 1.0 / (4 * tau**2)
    odd = (np.abs(n) % 2) == 1
    h[odd] = -1.0 / (np.pi * n[odd] * tau) ** 2
    spec = np.fft.fft(h).real * filter_window(name, np.fft.fftfreq(n_pad), cutoff)
    return np.fft.ifft(spec).real


def _filter_rows(p: Tensor, kernel: np.ndarray, tau: float) -> Tensor:
    """Linear convolution along the last axis: ``tau * sum_k p[k] kernel[n - k]`` (kernel circular,
    ``len(kernel) >= 2 * p.shape[-1]``)."""
    n_pad = kernel.size
    k = p.shape[-1]
    spec = torch.fft.rfft(torch.as_tensor(kernel, dtype=p.dtype, device=p.device))
    out = torch.fft.irfft(torch.fft.rfft(p, n=n_pad, dim=-1) * spec, n=n_pad, dim=-1)
    return tau * out[..., :k]


def angular_weights(angles: np.ndarray, period: float) -> np.ndarray:
    """Width of each view: half the gap to its neighbours, cyclic over ``period`` (sums to ``period``
    for angles that go all the way round; repeated angles share their width)."""
    a = np.mod(angles, period)
    order = np.argsort(a, kind="stable")
    s = a[order]
    nxt = np.roll(s, -1)
    nxt[-1] += period
    prv = np.roll(s, 1)
    prv[0] -= period
    if s.size == 1:
        return np.array([period])
    w = np.empty_like(s)
    w[order] = 0.5 * (nxt - prv)
    return w


def _pixel_coords(op, dtype, device) -> tuple[Tensor, Tensor]:
    h, w = op.image_shape
    y = ((h - 1) / 2 - torch.arange(h, dtype=dtype, device=device)) * op.pixel_size
    x = (torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2) * op.pixel_size
    return x, y


def _interp_views(q: Tensor, u: Tensor) -> Tensor:
    """Linear interpolation of ``q`` (B, c, K) at continuous detector indices ``u`` (c, P), one row of
    ``u`` per view; returns (B, c, P). Zero beyond the detector (linear fall-off over half a bin)."""
    b, c, k = q.shape
    gx = u * (2.0 / max(k - 1, 1)) - 1.0
    gy = (torch.arange(c, dtype=u.dtype, device=u.device) * (2.0 / max(c - 1, 1)) - 1.0)[:, None]
    grid = torch.stack([gx, gy.expand_as(gx)], dim=-1)[None]                  # (1, c, P, 2)
    out = torch.nn.functional.grid_sample(q[None], grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=True)                   # (1, B, c, P)
    return out[0]


def fbp(op, y: Tensor, filter: str = "ram-lak", cutoff: float = 1.0, view_chunk: int = 32) -> Tensor:
    """Filtered back-projection of sinograms ``y`` ``(B, 1, V, K)`` measured with projector ``op``.

    Returns ``(B, 1, H, W)`` images in the projector's image units (see the module docstring for the
    formulas, filters and the fan-beam full-scan assumption).
    """
    kind = getattr(op, "kind", "")
    if kind not in ("parallel", "fan"):
        raise TypeError(f"FBP: unsupported projector {type(op).__name__} (needs a parallel- or fan-beam projector)")
    if not isinstance(y, Tensor):
        raise TypeError(f"FBP: expected a torch.Tensor sinogram, got {type(y).__name__}")
    op.check_measurement(y)
    if not torch.isfinite(y).all():
        n_bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"FBP({op.name}): the sinogram contains {n_bad} NaN/Inf values")
    if filter not in FILTERS:
        raise ValueError(f"FBP: unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    dtype = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
    p = y[:, 0].to(dtype)                                       # (B, V, K)
    b, v, k = p.shape
    n_pad = 1 << int(math.ceil(math.log2(max(2 * k, 64))))
    angles = op.angles.cpu().numpy()
    x, yy = _pixel_coords(op, dtype, p.device)
    h_img, w_img = op.image_shape
    img = p.new_zeros(b, h_img * w_img)

    if kind == "parallel":
        tau = op.det_spacing
        q = _filter_rows(p, ramp_kernel(n_pad, tau, filter, cutoff), tau)
        wts = angular_weights(angles, math.pi)
        s0 = float(op.det_positions[0])
        for a in range(0, v, view_chunk):
            th = torch.as_tensor(angles[a:a + view_chunk], dtype=dtype, device=p.device)
            t = (x[None, None, :] * torch.cos(th)[:, None, None]
                 + yy[None, :, None] * torch.sin(th)[:, None, None])          # (c, H, W) mm
            u = ((t - s0) / tau).reshape(th.numel(), -1)
            wv = torch.as_tensor(wts[a:a + view_chunk], dtype=dtype, device=p.device)
            img = img + (_interp_views(q[:, a:a + view_chunk], u) * wv[None, :, None]).sum(1)
        return img.reshape(b, 1, h_img, w_img)

    r = op.source_to_center
    wts = angular_weights(angles, 2 * math.pi)
    if op.detector == "equiangular":
        alpha = op.det_spacing / op.source_to_detector              # angular pitch, rad
        gam = torch.as_tensor(op.gammas, dtype=dtype, device=p.device)
        kern = ramp_kernel(n_pad, alpha, filter, cutoff)
        nn_ = np.fft.fftfreq(n_pad, d=1.0 / n_pad) * alpha
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(nn_ == 0, 1.0, nn_ / np.sin(nn_))
        kern = 0.5 * ratio**2 * kern
        q = _filter_rows(p * (r * torch.cos(gam)), kern, alpha)
        coord0, pitch = float(op.gammas[0]), alpha
    else:
        scale = r / op.source_to_detector
        tau = op.det_spacing * scale                                 # pitch at the rotation axis
        a_k = torch.as_tensor(op.det_positions * scale, dtype=dtype, device=p.device)
        kern = 0.5 * ramp_kernel(n_pad, tau, filter, cutoff)
        q = _filter_rows(p * (r / torch.sqrt(r**2 + a_k**2)), kern, tau)
        coord0, pitch = float(op.det_positions[0] * scale), tau
    for a in range(0, v, view_chunk):
        beta = torch.as_tensor(angles[a:a + view_chunk], dtype=dtype, device=p.device)
        sb, cb = torch.sin(beta)[:, None, None], torch.cos(beta)[:, None, None]
        vx = x[None, None, :] - r * sb                               # pixel minus source
        vy = yy[None, :, None] + r * cb
        along = -vx * sb + vy * cb                                   # along the central ray
        perp = vx * cb + vy * sb                                     # along the detector axis
        if op.detector == "equiangular":
            coord = torch.atan2(perp, along)
            weight = 1.0 / (along**2 + perp**2)
        else:
            coord = r * perp / along
            weight = (r / along) ** 2
        u = ((coord - coord0) / pitch).reshape(beta.numel(), -1)
        wv = torch.as_tensor(wts[a:a + view_chunk], dtype=dtype, device=p.device)
        vals = _interp_views(q[:, a:a + view_chunk], u) * weight.reshape(1, beta.numel(), -1)
        img = img + (vals * wv[None, :, None]).sum(1)
    return img.reshape(b, 1, h_img, w_img)
