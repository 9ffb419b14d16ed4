"""fastMRI's evaluation of magnitude volumes: NMSE, PSNR and SSIM as the fastMRI challenge computes them.

As in fastMRI's ``evaluate.py`` (Zbontar et al. 2018, arXiv:1811.08839): the ground truth and the reconstruction
are magnitude volumes ``(slices, H, W)`` centre-cropped to the header's reconSpace size; the data range is the
maximum of the ground-truth *volume*; PSNR and NMSE are over the whole volume; SSIM is scikit-image's
``structural_similarity`` (7 x 7 uniform window, K1 0.01, K2 0.03) per slice, averaged over the slices.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor


def _volume(x: Tensor | np.ndarray, who: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"fastmri_metrics: {who} must be a magnitude volume (slices, H, W), got shape {a.shape}")
    return a


def fastmri_metrics(target: Tensor | np.ndarray, prediction: Tensor | np.ndarray) -> dict[str, float]:
    """``{"nmse", "psnr", "ssim"}`` of ``prediction`` against ``target``, both ``(slices, H, W)`` (or ``(H, W)``)."""
    gt, pred = _volume(target, "the target"), _volume(prediction, "the prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"fastmri_metrics: target {gt.shape} and prediction {pred.shape} differ in shape")
    maxval = float(gt.max())
    if not maxval > 0:
        raise ValueError("fastmri_metrics: the target is zero everywhere")
    nmse = float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)
    psnr = float(peak_signal_noise_ratio(gt, pred, data_range=maxval))
    ssim = float(np.mean([structural_similarity(g, p, data_range=maxval) for g, p in zip(gt, pred)]))
    return {"nmse": nmse, "psnr": psnr, "ssim": ssim}


__all__ = ["fastmri_metrics"]
