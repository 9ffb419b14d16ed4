"""Wrappers that build a prior for one geometry out of priors for another.

- :class:`SliceWisePrior`: a 2D prior applied slice by slice to 3D volumes (as in e.g. Chung et al.
  2023, "Solving 3D inverse problems using pre-trained 2D diffusion models", without their
  cross-slice regulariser, which belongs in a solver).
- :class:`PatchPrior`: a prior on patches applied to large inputs with MONAI's
  ``sliding_window_inference`` (differentiable, so gradient-based solvers such as DPS work).
- :class:`ProductPrior`: independent sources stacked along channels, ``p(x) = prod_k p_k(x_k)``.
  With i.i.d. Gaussian noise on every channel the posterior factorises, so the exact ``D`` is each
  source's ``D`` on its own channel block. Ultrasound dehazing ``y = tissue + haze`` then becomes a
  linear operator (sum of the blocks) over the stacked image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from sciprior.priors.base import Denoiser, sigma_batch


class SliceWisePrior(Denoiser):
    """Apply a 2D denoiser to every slice of (B, C, D, H, W) volumes.

    Args:
        denoiser2d: a denoiser on (N, C, h, w) images.
        axis: the dimension of the 5-D input that is sliced: 2 (D), 3 (H) or 4 (W); -3..-1 also work.
        chunk_size: number of 2D slices passed to ``denoiser2d`` per call (over the whole batch):
            peak memory of the inner network is that of one ``chunk_size`` batch. (Under autograd
            every chunk's graph is kept until backward.)

    Every slice of item ``b`` is denoised at item ``b``'s noise level.
    """

    def __init__(self, denoiser2d: Denoiser, axis: int = 2, chunk_size: int = 16,
                 image_shape: Sequence[int] | None = None):
        super().__init__()
        if axis not in (2, 3, 4, -3, -2, -1):
            raise ValueError(f"SliceWisePrior: axis must be a spatial dim of (B, C, D, H, W): 2, 3 or 4; "
                             f"got {axis}")
        if chunk_size < 1:
            raise ValueError(f"SliceWisePrior: chunk_size must be >= 1, got {chunk_size}")
        self.inner = denoiser2d
        self.axis = axis % 5
        self.chunk_size = int(chunk_size)
        self.set_range(denoiser2d.sigma_data, denoiser2d.sigma_min, denoiser2d.sigma_max, image_shape)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SliceWisePrior: x must be (B, C, D, H, W), got shape {tuple(x.shape)}")
        b, c = x.shape[:2]
        s = sigma_batch(sigma, x)
        n = x.shape[self.axis]
        # (B, C, D, H, W) -> (B, n, C, a, b) -> (B * n, C, a, b), item-major
        others = [d for d in (2, 3, 4) if d != self.axis]
        xs = x.permute(0, self.axis, 1, *others)
        plane = xs.shape[3:]
        xs = xs.reshape(b * n, c, *plane)
        ss = s.repeat_interleave(n)
        outs = [self.inner(xs[i:i + self.chunk_size], ss[i:i + self.chunk_size])
                for i in range(0, b * n, self.chunk_size)]
        out = torch.cat(outs, 0).reshape(b, n, c, *plane)
        # inverse permutation back to (B, C, D, H, W)
        perm = [0, self.axis, 1, *others]
        inv = [perm.index(i) for i in range(5)]
        return out.permute(*inv).contiguous()


class PatchPrior(Denoiser):
    """Apply a denoiser on overlapping patches of size ``roi_size`` and blend the estimates.

    Wraps ``monai.inferers.sliding_window_inference`` (which forwards keyword arguments to the
    predictor and has no ``no_grad``, so ``D`` stays differentiable in ``x``). Each window is
    denoised at the noise level of the batch item it was cut from. Inputs smaller than the window
    are padded with ``padding_mode`` and cropped back.

    Args:
        denoiser: a denoiser on (N, C, *roi_size) patches.
        roi_size: spatial window size (one int per spatial dim of the input).
        overlap: fraction of overlap between neighbouring windows, in [0, 1).
        sw_batch_size: windows per call of ``denoiser``.
        mode: ``"gaussian"`` (windows weighted by a Gaussian, fewer seams) or ``"constant"``.
        sigma_scale: width of the Gaussian weight as a fraction of the window size.
        padding_mode: padding of inputs smaller than the window (``"constant"``, ``"reflect"``,
            ``"replicate"``, ``"circular"``); ``"reflect"`` (default) falls back to ``"replicate"``
            when a side is too short to reflect.
    """

    def __init__(self, denoiser: Denoiser, roi_size: Sequence[int], overlap: float = 0.25,
                 sw_batch_size: int = 8, mode: Literal["gaussian", "constant"] = "gaussian",
                 sigma_scale: float = 0.125, padding_mode: str = "reflect",
                 image_shape: Sequence[int] | None = None):
        super().__init__()
        roi = tuple(int(r) for r in roi_size)
        if len(roi) not in (2, 3) or min(roi) < 1:
            raise ValueError(f"PatchPrior: roi_size must be 2 or 3 positive ints, got {roi_size}")
        if not 0 <= overlap < 1:
            raise ValueError(f"PatchPrior: overlap must be in [0, 1), got {overlap}")
        if sw_batch_size < 1:
            raise ValueError(f"PatchPrior: sw_batch_size must be >= 1, got {sw_batch_size}")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"PatchPrior: mode must be 'gaussian' or 'constant', got {mode!r}")
        self.inner = denoiser
        self.roi_size = roi
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.mode = mode
        self.sigma_scale = float(sigma_scale)
        self.padding_mode = padding_mode
        self.set_range(denoiser.sigma_data, denoiser.sigma_min, denoiser.sigma_max, image_shape)

    def _predict(self, window: Tensor, coords: list, sigma: Tensor) -> Tensor:
        # coords[i][0] = slice(b, b + 1): the batch item window i was cut from
        items = [c[0].start for c in coords]
        s = sigma[torch.as_tensor(items, device=sigma.device)]
        # clone: MONAI scales the prediction in place, which would break autograd for ops that
        # save their output (tanh, exp, ...)
        return self.inner(window, s).clone()

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        if x.dim() != len(self.roi_size) + 2:
            raise ValueError(f"PatchPrior: x of shape {tuple(x.shape)} does not match roi_size "
                             f"{self.roi_size} (expected {len(self.roi_size) + 2} dims)")
        s = sigma_batch(sigma, x)
        padding = self.padding_mode
        pads = [max(r - n, 0) for r, n in zip(self.roi_size, x.shape[2:])]
        if padding == "reflect" and any(p - p // 2 >= n for p, n in zip(pads, x.shape[2:])):
            padding = "replicate"  # reflection needs a pad smaller than the side
        return sliding_window_inference(
            x, self.roi_size, self.sw_batch_size, self._predict, overlap=self.overlap, mode=self.mode,
            sigma_scale=self.sigma_scale, padding_mode=padding, with_coord=True, sigma=s)


class ProductPrior(Denoiser):
    """Independent sources stacked along channels: ``D(x) = cat_k D_k(x[block k])``.

    Args:
        denoisers: one denoiser per source.
        channels: channel count of each source's block, in order (they must sum to C).

    ``sigma_data`` is the channel-weighted root mean square of the sources', ``sigma_min`` the
    smallest and ``sigma_max`` the largest of theirs.
    """

    def __init__(self, denoisers: Sequence[Denoiser], channels: Sequence[int],
                 image_shape: Sequence[int] | None = None):
        super().__init__()
        if len(denoisers) == 0 or len(denoisers) != len(channels):
            raise ValueError(f"ProductPrior: need one channel count per denoiser, got {len(denoisers)} "
                             f"denoisers and channels={list(channels)}")
        if min(channels) < 1:
            raise ValueError(f"ProductPrior: channel counts must be >= 1, got {list(channels)}")
        self.parts = nn.ModuleList(denoisers)
        self.channels = tuple(int(c) for c in channels)
        total = sum(self.channels)
        self.sigma_data = math.sqrt(sum(c * d.sigma_data**2 for c, d in zip(self.channels, denoisers))
                                    / total)
        self.sigma_min = min(d.sigma_min for d in denoisers)
        self.sigma_max = max(d.sigma_max for d in denoisers)
        if image_shape is None:
            shapes = [d.image_shape for d in denoisers]
            if all(sh is not None for sh in shapes) and len({tuple(sh[1:]) for sh in shapes}) == 1:
                image_shape = (total, *shapes[0][1:])
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != sum(self.channels):
            raise ValueError(f"ProductPrior: x of shape {tuple(x.shape)} needs {sum(self.channels)} channels "
                             f"(blocks {self.channels})")
        s = sigma_batch(sigma, x)
        blocks = torch.split(x, self.channels, dim=1)
        return torch.cat([d(xb, s) for d, xb in zip(self.parts, blocks)], 1)
