"""Image-quality metrics per batch item: PSNR, SSIM, NMSE.

All take ``x`` (reconstruction) and ``ref`` (ground truth) of the same shape ``(B, ...)`` and return a
(B,) float64 tensor on the inputs' device: one value per item, never averaged over the batch.

- :func:`psnr` and :func:`nmse` are computed in torch (complex inputs allowed: errors are ``|x - ref|^2``).
- :func:`ssim` calls scikit-image's ``structural_similarity`` (Wang et al. 2004) on every 2D slice (the
  last two axes) of each item on the CPU in float64, and averages the slices; volumes are thus scored
  slice by slice, channels separately. Real inputs only.

Default ``data_range``: the per-item range of the reference, ``ref.max() - ref.min()`` over the whole
item (all channels and slices). This differs from scikit-image, which derives it from the dtype
(1 or 2 for floats); scientific images rarely live in [0, 1], so pass ``data_range`` explicitly when
comparing with numbers computed elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["nmse", "psnr", "ssim"]


def _pair(x: Tensor, ref: Tensor, who: str) -> tuple[Tensor, Tensor]:
    x, ref = torch.as_tensor(x), torch.as_tensor(ref)
    if x.shape != ref.shape:
        raise ValueError(f"{who}: x has shape {tuple(x.shape)} but ref has shape {tuple(ref.shape)}")
    if x.dim() < 2:
        raise ValueError(f"{who}: expected (B, ...) tensors with at least one axis after the batch, "
                         f"got shape {tuple(x.shape)}")
    return x, ref


def _flat_abs2(t: Tensor) -> Tensor:
    t = t.to(torch.complex128) if t.is_complex() else t.to(torch.float64)
    a = t.abs() if t.is_complex() else t
    return (a * a).reshape(t.shape[0], -1)


def _data_range(ref: Tensor, data_range: float | Tensor | None, who: str) -> Tensor:
    b = ref.shape[0]
    if data_range is None:
        r = (ref.abs() if ref.is_complex() else ref).to(torch.float64).reshape(b, -1)
        rng = r.max(dim=1).values - r.min(dim=1).values
        bad = (rng <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{who}: ref item(s) {bad} are constant, so the default data_range "
                             f"(ref.max() - ref.min()) is 0; pass data_range")
        return rng
    rng = torch.as_tensor(data_range, dtype=torch.float64, device=ref.device).reshape(-1)
    if rng.numel() == 1:
        rng = rng.expand(b)
    if rng.numel() != b:
        raise ValueError(f"{who}: data_range must be a scalar or have one entry per item ({b}), "
                         f"got {rng.numel()} entries")
    if not bool((rng > 0).all()):
        raise ValueError(f"{who}: data_range must be > 0, got {rng.tolist()}")
    return rng


def psnr(x: Tensor, ref: Tensor, data_range: float | Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB per item: ``10 log10(data_range^2 / mean |x - ref|^2)``.

    ``data_range``: scalar or (B,) tensor in the image's units; default the per-item range of ``ref``
    (of ``|ref|`` when complex). A perfect reconstruction gives ``inf``.
    """
    x, ref = _pair(x, ref, "psnr")
    rng = _data_range(ref, data_range, "psnr")
    mse = _flat_abs2(x - ref).mean(dim=1)
    return 10.0 * torch.log10(rng.to(mse.device) ** 2 / mse)


def nmse(x: Tensor, ref: Tensor) -> Tensor:
    """Normalised mean squared error per item, ``||x - ref||^2 / ||ref||^2`` (dimensionless)."""
    x, ref = _pair(x, ref, "nmse")
    den = _flat_abs2(ref).sum(dim=1)
    bad = (den == 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"nmse: ref item(s) {bad} are all zero; the normalised error is undefined")
    return _flat_abs2(x - ref).sum(dim=1) / den


def ssim(x: Tensor, ref: Tensor, data_range: float | Tensor | None = None, *, win_size: int | None = None,
         gaussian_weights: bool = False) -> Tensor:
    """Structural similarity per item, the mean of 2D SSIMs over all slices of the last two axes.

    Uses ``skimage.metrics.structural_similarity`` with its defaults (7x7 uniform window, K1 = 0.01,
    K2 = 0.03, sample covariance) unless ``win_size`` / ``gaussian_weights`` (Wang et al. 2004's 11x11
    Gaussian, sigma 1.5) are given. ``x`` and ``ref`` are (B, ..., H, W), real, with H and W at least the
    window size. ``data_range``: as in :func:`psnr` (one range per item, shared by its slices).
    """
    from skimage.metrics import structural_similarity

    x, ref = _pair(x, ref, "ssim")
    if x.is_complex() or ref.is_complex():
        raise TypeError("ssim: inputs must be real; pass magnitudes (x.abs(), ref.abs()) for complex images")
    if x.dim() < 3:
        raise ValueError(f"ssim: expected (B, ..., H, W) with two image axes, got shape {tuple(x.shape)}")
    rng = _data_range(ref, data_range, "ssim").cpu().numpy()
    win = win_size if win_size is not None else (11 if gaussian_weights else 7)
    h, w = x.shape[-2:]
    if min(h, w) < win:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {win}x{win} window; pass a smaller "
                         f"odd win_size")
    xs = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1, h, w).numpy()
    rs = ref.detach().to("cpu", torch.float64).reshape(x.shape[0], -1, h, w).numpy()
    kwargs = {"win_size": win_size, "gaussian_weights": gaussian_weights}
    if gaussian_weights:
        kwargs.update(sigma=1.5, use_sample_covariance=False)
    out = np.empty(x.shape[0])
    for b in range(x.shape[0]):
        vals = [structural_similarity(rs[b, k], xs[b, k], data_range=float(rng[b]), **kwargs)
                for k in range(xs.shape[1])]
        out[b] = math.fsum(vals) / len(vals)
    return torch.as_tensor(out, dtype=torch.float64, device=x.device)
