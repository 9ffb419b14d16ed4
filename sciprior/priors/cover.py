"""How a checkpoint covers an image: whole, in patches, slice by slice (decided from headers, before compute).

:func:`plan_cover` reads a checkpoint's config (the prior's image shape, channels, UNet depth) and the image the
problem will have, with the names of its axes (``channel`` first; ``slice`` axes are covered slice by slice by a
2D prior; all other axes are spatial), and returns a :class:`CoverPlan`: ``full`` (the prior sees the whole
image: sizes must match and be multiples of the UNet's), ``patch`` (sliding windows of ``roi``), ``slice`` /
``slice+patch`` (a 2D prior on every slice of a stack, whole or in windows) or ``volume`` (a 3D prior on a 3D
image). :func:`wrap_prior` builds that cover around the loaded denoiser. Problems raise :class:`CoverError`
naming the keys to change (the caller says which config keys those are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sciprior.priors.base import Denoiser
from sciprior.priors.networks import unet_size_multiple
from sciprior.priors.wrappers import PatchPrior, SliceWisePrior
from sciprior.ranges import NonNegativeFloat, PositiveInt

Wrap = Literal["auto", "full", "patch", "slice"]


class CoverError(ValueError):
    """A prior that cannot cover the image; the message names the config keys to change."""


@dataclass
class CoverSpec:
    """How the prior should cover the image (the ``prior`` section's settings besides the checkpoint)."""

    wrap: Wrap = "auto"
    roi: tuple[PositiveInt, ...] | None = None
    overlap: NonNegativeFloat = 0.25  # < 1 (checked by PriorSpec)
    sw_batch_size: PositiveInt = 8
    blend: Literal["gaussian", "constant"] = "gaussian"
    slice_chunk: PositiveInt = 16


@dataclass
class CoverKeys:
    """The config keys :func:`plan_cover` names in its messages."""

    checkpoint: str = "prior.checkpoint"
    wrap: str = "prior.wrap"
    roi: str = "prior.roi"
    channels: str = "the modality"
    image_size: str = "the image size"
    slices: str = "the slice selection"


@dataclass
class CoverPlan:
    """How a checkpoint will be used for a given image shape."""

    path: Path | None
    config: dict[str, Any] | None
    wrap: str  # "none" | "full" | "patch" | "slice" | "slice+patch"
    roi: tuple[int, ...] | None
    image_shape: tuple[int, ...]
    prior_shape: tuple[int, ...] | None
    slice_axis: int | None = None  # dimension of (B, *image_shape) sliced for slice-wise covers
    axes: tuple[str, ...] = field(default_factory=tuple)


def plan_cover(spec: CoverSpec, path: Path | None, cfg: Mapping[str, Any] | None, image_shape: Sequence[int],
               axes: Sequence[str], keys: CoverKeys | None = None) -> CoverPlan:
    """Decide how the prior of checkpoint ``path`` (config ``cfg``) covers images of ``image_shape`` whose axes are
    named ``axes``; :class:`CoverError` naming the keys if it cannot."""
    keys = keys or CoverKeys()
    image_shape, axes = tuple(int(s) for s in image_shape), tuple(axes)
    if len(axes) != len(image_shape) or axes[0] != "channel":
        raise CoverError(f"the modality names the axes {axes} of images of shape {image_shape}; it must name each "
                         "axis, channel first")
    if path is None or cfg is None:
        return CoverPlan(None, None, "none", None, image_shape, None, axes=axes)
    kw = cfg["network"].get("kwargs", {})
    den = cfg["denoiser"]
    prior_shape = tuple(den["image_shape"]) if den.get("image_shape") else None
    in_ch = int(kw.get("in_channels", prior_shape[0] if prior_shape else 1))
    spatial = int(kw.get("spatial_dims", 2))
    where = f"{keys.checkpoint} ({path})"
    if in_ch != image_shape[0]:
        raise CoverError(f"{where}: the prior has {in_ch} channel(s) but the modality produces "
                         f"{image_shape[0]}-channel images (set by {keys.channels}); use a prior trained for "
                         f"this image model")
    mult = unet_size_multiple(kw)
    slice_dims = [i for i, a in enumerate(axes) if a == "slice"]
    if len(slice_dims) > 1:
        raise CoverError(f"images with several slice axes {axes} are not supported")
    wrap = spec.wrap
    if spatial == 3:
        if wrap == "slice":
            raise CoverError(f"{keys.wrap}: 'slice' needs a 2D prior; {where} is 3D")
        if len(image_shape) != 4:
            raise CoverError(f"{where}: a 3D prior cannot reconstruct one 2D slice; set {keys.slices} to a range "
                             "or 'all'")
        plane, slice_dim = image_shape[1:], None
    else:
        slice_dim = slice_dims[0] if slice_dims else None
        plane = tuple(s for i, s in enumerate(image_shape) if i > 0 and i != slice_dim)
        if len(plane) != 2:
            raise CoverError(f"{where}: a 2D prior cannot cover images with axes {axes} (shape {image_shape})")
        if slice_dim is not None and wrap in ("full", "patch"):
            raise CoverError(f"{keys.wrap}: {wrap!r} with a 2D prior cannot cover a stack {image_shape[1:]}; use "
                             "wrap: slice or auto")
    psp = tuple(prior_shape[1:]) if prior_shape else None
    inner, roi = "full", None
    if wrap == "full" or (wrap in ("auto", "slice") and (psp is None or psp == plane)):
        if psp is not None and psp != plane:
            raise CoverError(f"{keys.wrap}: 'full' needs images of the prior's size {psp}, but the modality gives "
                             f"{plane} ({keys.image_size}); use wrap: patch or set {keys.image_size}")
        if any(s % mult for s in plane):
            raise CoverError(f"{keys.image_size}: the image size {plane} must be a multiple of {mult} for the UNet "
                             f"of {where}; change {keys.image_size} or use wrap: patch")
    else:
        inner = "patch"
        roi = tuple(spec.roi) if spec.roi is not None else psp
        if roi is None:
            raise CoverError(f"{keys.roi}: required for wrap=patch when {where} has no recorded image size")
        if len(roi) != len(plane):
            raise CoverError(f"{keys.roi}: {roi} has {len(roi)} dims but the prior works on {len(plane)}D images")
        if any(r % mult for r in roi):
            raise CoverError(f"{keys.roi}: {roi} must be a multiple of {mult} for the UNet of {where}")
    kind = ("slice" if inner == "full" else "slice+patch") if slice_dim is not None else inner
    return CoverPlan(path, dict(cfg), kind, roi, image_shape, prior_shape,
                     slice_axis=None if slice_dim is None else slice_dim + 1, axes=axes)


def wrap_prior(denoiser: Denoiser, plan: CoverPlan, spec: CoverSpec) -> Denoiser:
    """``denoiser`` wrapped as ``plan`` says (:class:`PatchPrior` windows, :class:`SliceWisePrior` slices)."""
    shape = plan.image_shape
    if plan.wrap in ("patch", "slice+patch"):
        inner_shape = shape
        if plan.wrap == "slice+patch":
            inner_shape = tuple(s for i, s in enumerate(shape) if i + 1 != plan.slice_axis)
        denoiser = PatchPrior(denoiser, plan.roi, overlap=spec.overlap, sw_batch_size=spec.sw_batch_size,
                              mode=spec.blend, image_shape=inner_shape)
    if plan.wrap in ("slice", "slice+patch"):
        denoiser = SliceWisePrior(denoiser, axis=plan.slice_axis, chunk_size=spec.slice_chunk, image_shape=shape)
    return denoiser


__all__ = ["CoverError", "CoverKeys", "CoverPlan", "CoverSpec", "plan_cover", "wrap_prior"]
