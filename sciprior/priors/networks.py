"""Denoiser backbones: a typed builder around MONAI's ``DiffusionModelUNet`` (2D or 3D).

The signature of :func:`build_unet` is the config schema of a network (jsonargparse reads it for
``sciprior train``; checkpoints store its resolved keyword arguments). The builder validates the
arguments up front and names the offending key, instead of failing deep inside MONAI.

Notes on MONAI 1.6's ``DiffusionModelUNet`` (checked against its source):
- ``forward(x, timesteps)``: ``timesteps`` is a 1-D tensor of N values fed to a sinusoidal
  embedding (``get_timestep_embedding``, max period 10000) after ``.float()``: non-integer and
  negative values are fine, so EDM's ``c_noise = ln(sigma) / 4`` can be passed directly. The
  embedding is computed in float32 and cast to the input's dtype.
- The output convolution and the second convolution of every residual block are zero-initialised,
  so a fresh network outputs exactly 0.
- The middle block (after the last level) always has self-attention, whatever
  ``attention_levels`` says: ``channels[-1]`` must be a multiple of ``num_head_channels[-1]``.
- Every level but the last halves the resolution: spatial sizes must be divisible by
  ``2 ** (len(channels) - 1)`` (see :func:`unet_size_multiple`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from monai.networks.nets import DiffusionModelUNet
from torch import nn

#: attribute under which :func:`build_unet` records its resolved keyword arguments on the network
CONFIG_ATTR = "sciprior_config"


def _tuple(value: int | bool | Sequence[Any], n: int, key: str) -> tuple:
    if isinstance(value, (int, bool)):
        return (value,) * n
    out = tuple(value)
    if len(out) != n:
        raise ValueError(f"build_unet: {key} has {len(out)} entries but channels has {n} levels")
    return out


def build_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int | None = None,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, False, True),
    num_res_blocks: int | Sequence[int] = 1,
    num_head_channels: int | Sequence[int] = 32,
    norm_num_groups: int = 16,
    norm_eps: float = 1e-6,
    resblock_updown: bool = False,
    transformer_num_layers: int = 1,
    include_fc: bool = True,
    use_combined_linear: bool = False,
    use_flash_attention: bool = False,
) -> DiffusionModelUNet:
    """A MONAI ``DiffusionModelUNet`` for a denoiser ``F(x, c_noise)`` (unconditional).

    Args:
        spatial_dims: 2 for (B, C, H, W) images, 3 for (B, C, D, H, W) volumes.
        in_channels: image channels C.
        out_channels: output channels (default: ``in_channels``, as a denoiser needs).
        channels: feature channels per resolution level; each a multiple of ``norm_num_groups``.
        attention_levels: self-attention at each level (needs ``einops``).
        num_res_blocks: residual blocks per level (one int for all levels, or one per level).
        num_head_channels: channels per attention head (one int or one per level); at levels with
            attention, ``channels[i]`` must be a multiple of it.
        norm_num_groups, norm_eps: GroupNorm settings.
        resblock_updown: residual blocks for up/down sampling instead of conv/pool.
        transformer_num_layers, include_fc, use_combined_linear, use_flash_attention: passed to MONAI.

    Returns:
        The network, with the resolved arguments (plain Python values) recorded in its
        ``sciprior_config`` attribute so that checkpoints can rebuild it.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"build_unet: spatial_dims must be 2 or 3, got {spatial_dims}")
    if in_channels < 1:
        raise ValueError(f"build_unet: in_channels must be >= 1, got {in_channels}")
    out_channels = in_channels if out_channels is None else int(out_channels)
    if out_channels < 1:
        raise ValueError(f"build_unet: out_channels must be >= 1, got {out_channels}")
    channels = tuple(int(c) for c in channels)
    n = len(channels)
    if n == 0 or min(channels) < 1:
        raise ValueError(f"build_unet: channels must be a non-empty list of positive ints, got {channels}")
    if norm_num_groups < 1:
        raise ValueError(f"build_unet: norm_num_groups must be >= 1, got {norm_num_groups}")
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"build_unet: channels {channels} must all be multiples of norm_num_groups="
                         f"{norm_num_groups} (not: {bad})")
    attention_levels = tuple(bool(a) for a in _tuple(attention_levels, n, "attention_levels"))
    num_res_blocks = tuple(int(r) for r in _tuple(num_res_blocks, n, "num_res_blocks"))
    if min(num_res_blocks) < 1:
        raise ValueError(f"build_unet: num_res_blocks must be >= 1, got {num_res_blocks}")
    heads = tuple(int(h) for h in _tuple(num_head_channels, n, "num_head_channels"))
    for i, (c, att, h) in enumerate(zip(channels, attention_levels, heads)):
        if (att or i == n - 1) and (h < 1 or c % h):
            where = "has attention" if att else "feeds the middle block, which always has attention,"
            raise ValueError(f"build_unet: level {i} {where} so channels[{i}]={c} must be a positive "
                             f"multiple of num_head_channels[{i}]={h}")
    config: dict[str, Any] = {
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": out_channels,
        "channels": list(channels),
        "attention_levels": list(attention_levels),
        "num_res_blocks": list(num_res_blocks),
        "num_head_channels": list(heads),
        "norm_num_groups": int(norm_num_groups),
        "norm_eps": float(norm_eps),
        "resblock_updown": bool(resblock_updown),
        "transformer_num_layers": int(transformer_num_layers),
        "include_fc": bool(include_fc),
        "use_combined_linear": bool(use_combined_linear),
        "use_flash_attention": bool(use_flash_attention),
    }
    net = DiffusionModelUNet(**{**config, "channels": channels, "attention_levels": attention_levels,
                                "num_res_blocks": num_res_blocks, "num_head_channels": heads})
    setattr(net, CONFIG_ATTR, config)
    return net


def unet_config(net: nn.Module) -> dict[str, Any] | None:
    """The :func:`build_unet` keyword arguments a network was built with, or None if unknown."""
    cfg = getattr(net, CONFIG_ATTR, None)
    return dict(cfg) if cfg is not None else None


def unet_size_multiple(net: nn.Module | Mapping[str, Any]) -> int:
    """Spatial sizes a ``DiffusionModelUNet`` accepts are multiples of this (1 for other networks); ``net`` may
    also be the :func:`build_unet` keyword arguments of a checkpoint's config."""
    if isinstance(net, Mapping):
        channels = net.get("channels", inspect.signature(build_unet).parameters["channels"].default)
        return 2 ** (len(channels) - 1)
    if isinstance(net, DiffusionModelUNet):
        return 2 ** (len(net.block_out_channels) - 1)
    return 1


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
