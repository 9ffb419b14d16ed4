"""Checkpoints of :class:`EDMDenoiser`: safetensors weights plus the resolved config, no pickled code.

A checkpoint is a directory::

    CKPT/
      model.safetensors   the network's state dict (safetensors; the config is also embedded in its
                          metadata under "sciprior", so the file alone is enough to rebuild)
      config.yaml         the resolved config: format, denoiser settings, network builder kwargs, and
                          ``weights_sha256``, the SHA-256 of model.safetensors recorded at export

``dtype`` in the config is the dtype the network runs in; ``storage_dtype`` (when present) the
floating dtype its tensors are stored in. Storing a float32 network as float16 halves the file
(the shipped demo priors) and loading casts it back to ``dtype``.

Loading rebuilds the network with :func:`~sciprior.priors.networks.build_unet` from the config
(validated: unknown keys are rejected with their name) and loads the tensors with
``safetensors.torch``; nothing is unpickled and no code named in the file is run. Files are
written atomically (temp file, then rename).

Loading checks, each failing with a :class:`CheckpointError` that names the file: the config is plain YAML
(:func:`sciprior.io.yamlfiles.load_yaml`: no tags, no duplicate keys); the weights file is a complete safetensors
file (a pickle, a Lightning ``.ckpt`` or a truncated file is refused, never unpickled); its SHA-256 matches the
``weights_sha256`` recorded at export (bytes changed after export); every tensor matches the network the config
builds (names, shapes, stored dtype); and every weight is finite.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from sciprior.io import atomic_write
from sciprior.io.yamlfiles import YAMLFileError, load_yaml
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet, unet_config

FORMAT = "sciprior.edm/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
_DENOISER_KEYS = ("sigma_data", "sigma_min", "sigma_max", "image_shape", "P_mean", "P_std")
STORAGE_DTYPES = ("float32", "float16", "bfloat16", "float64")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and what is wrong with it."""


def weights_sha256(file: str | os.PathLike) -> str:
    """Hex SHA-256 of a weights file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PICKLE_OR_ZIP = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _open_weights(file: Path):
    """``safe_open`` of a safetensors file, with errors that name it (a pickle or a torch zip is recognised)."""
    if not file.is_file():
        raise CheckpointError(f"load_checkpoint: {file} does not exist or is not a regular file")
    with open(file, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_OR_ZIP):
        raise CheckpointError(f"load_checkpoint: {file} is a pickle / torch.save (or Lightning .ckpt) file, not "
                              "safetensors; sciprior never unpickles a checkpoint (export priors with "
                              "`sciprior train` or save_checkpoint)")
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises SafetensorError (not a subclass of a standard error)
        raise CheckpointError(f"load_checkpoint: {file} is not a valid safetensors file (truncated or corrupt): "
                              f"{e}") from None


def _float_dtype(name: str | torch.dtype, what: str) -> torch.dtype:
    key = str(name).removeprefix("torch.")
    if key not in STORAGE_DTYPES:
        raise ValueError(f"{what} must be one of {list(STORAGE_DTYPES)}, got {name!r}")
    return getattr(torch, key)


def checkpoint_config(denoiser: EDMDenoiser, net_config: Mapping[str, Any] | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      storage_dtype: str | torch.dtype | None = None) -> dict[str, Any]:
    """The resolved config of an EDM denoiser (plain YAML/JSON-able values)."""
    if not isinstance(denoiser, EDMDenoiser):
        raise TypeError(f"checkpoint: expected an EDMDenoiser, got {type(denoiser).__name__}")
    net_cfg = dict(net_config) if net_config is not None else unet_config(denoiser.net)
    if net_cfg is None:
        raise ValueError("checkpoint: the denoiser's network was not made by build_unet; pass net_config= "
                         "(the build_unet keyword arguments that rebuild it)")
    unknown = sorted(set(net_cfg) - set(inspect.signature(build_unet).parameters))
    if unknown:
        raise ValueError(f"checkpoint: net_config has keys build_unet does not accept: {unknown}")
    dtype = next((p.dtype for p in denoiser.net.parameters()), torch.float32)
    den = {k: getattr(denoiser, k) for k in _DENOISER_KEYS}
    den["image_shape"] = list(den["image_shape"]) if den["image_shape"] is not None else None
    cfg: dict[str, Any] = {
        "format": FORMAT,
        "denoiser": den,
        "network": {"builder": "build_unet", "kwargs": net_cfg},
        "dtype": str(dtype).removeprefix("torch."),
    }
    if storage_dtype is not None:
        cfg["storage_dtype"] = str(_float_dtype(storage_dtype, "checkpoint: storage_dtype")).removeprefix("torch.")
    cfg["sigma_units"] = "image units of the prior's (normalised) domain"
    cfg["metadata"] = dict(metadata or {})
    return cfg


def _builtin(v: Any) -> Any:
    """Builtin types for YAML/JSON: subclasses of bool/int/float/str (the range-typed values a parsed config holds)
    become the builtin, tuples become lists; anything else is left for the dumper to refuse."""
    if isinstance(v, Mapping):
        return {k: _builtin(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_builtin(x) for x in v]
    for t in (bool, int, float, str):
        if isinstance(v, t):
            return t(v)
    return v


def save_checkpoint(denoiser: EDMDenoiser, path: str | os.PathLike, *,
                    net_config: Mapping[str, Any] | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    storage_dtype: str | torch.dtype | None = None) -> Path:
    """Write ``denoiser`` to the checkpoint directory ``path`` (created if needed); returns it.

    ``metadata``: extra plain values kept in the config (e.g. the data normalisation, training steps).
    ``storage_dtype``: store the floating tensors in this dtype (e.g. ``"float16"``: half the file; the
    network still loads in its own dtype). Default: as they are.
    """
    path = Path(path)
    cfg = _builtin(checkpoint_config(denoiser, net_config, metadata, storage_dtype))
    net = denoiser.net
    if storage_dtype is not None:
        target = _float_dtype(storage_dtype, "checkpoint: storage_dtype")
        net = copy.deepcopy(net).to(dtype=target)  # .to(dtype) casts floating tensors only
    try:
        text = yaml.safe_dump(cfg, sort_keys=False)
        meta_json = json.dumps(cfg)
    except (yaml.YAMLError, TypeError, ValueError) as e:
        raise ValueError(f"save_checkpoint: config is not plain data (check metadata): {e}") from e
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS, lambda tmp: save_model(net, tmp, metadata={"sciprior": meta_json}))
    text += yaml.safe_dump({"weights_sha256": weights_sha256(path / WEIGHTS)})
    atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config of a checkpoint directory (``config.yaml``) or of a bare ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir():
        f = path / CONFIG
        if f.exists():
            try:
                cfg = load_yaml(f, "")
            except YAMLFileError as e:
                raise CheckpointError(f"load_checkpoint: {e}") from None
        else:
            cfg = _embedded_config(path / WEIGHTS)
    elif path.suffix == ".safetensors":
        cfg = _embedded_config(path)
    else:
        raise FileNotFoundError(f"load_checkpoint: {path} is neither a checkpoint directory "
                                "nor a .safetensors file")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"load_checkpoint: {path}: unsupported checkpoint format {got!r} "
                              f"(expected {FORMAT!r})")
    for key in ("denoiser", "network"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"load_checkpoint: {path}: config key {key!r} is missing or not a mapping")
    return cfg


def _embedded_config(file: Path) -> dict[str, Any]:
    if not file.exists():
        raise FileNotFoundError(f"load_checkpoint: {file} does not exist")
    with _open_weights(file) as f:
        meta = f.metadata() or {}
    if "sciprior" not in meta:
        raise CheckpointError(f"load_checkpoint: {file} has no embedded sciprior config and no {CONFIG} beside it")
    try:
        return json.loads(meta["sciprior"])
    except ValueError as e:
        raise CheckpointError(f"load_checkpoint: {file}: its embedded sciprior config is not JSON: {e}") from None


def _check_stored_dtype(weights: Path, stored: torch.dtype) -> None:
    """The floating tensors of ``weights`` must be in the dtype the config says they are stored in."""
    with _open_weights(weights) as f:
        for key in f.keys():
            got = f.get_slice(key).get_dtype()
            if got in ("F16", "BF16", "F32", "F64") and got != _SAFETENSORS_NAMES[stored]:
                raise CheckpointError(f"load_checkpoint: {weights}: tensor {key!r} is stored as {got}, the config "
                                      f"says {str(stored).removeprefix('torch.')}")


def _network_kwargs(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The network's build arguments from a checkpoint config: a known builder, known keys (denoiser too)."""
    net_section = cfg["network"]
    if net_section.get("builder") != "build_unet":
        raise CheckpointError(f"load_checkpoint: {path}: unknown network builder {net_section.get('builder')!r}")
    kwargs = net_section.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"load_checkpoint: {path}: network.kwargs is not a mapping")
    allowed = set(inspect.signature(build_unet).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise CheckpointError(f"load_checkpoint: {path}: unknown network config keys {unknown} "
                              f"(build_unet accepts {sorted(allowed)})")
    unknown = sorted(set(cfg["denoiser"]) - set(_DENOISER_KEYS))
    if unknown:
        raise CheckpointError(f"load_checkpoint: {path}: unknown denoiser config keys {unknown}")
    return kwargs


def _build_network(path: Path, kwargs: dict[str, Any], device: str | torch.device | None = None) -> torch.nn.Module:
    try:
        if device is None:
            return build_unet(**kwargs)
        with torch.device(device):
            return build_unet(**kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # MONAI checks with asserts and ValueErrors
        raise CheckpointError(f"load_checkpoint: {path}: its network config does not build a network: {e}") from None


def _check_tensor_shapes(path: Path, weights: Path, kwargs: dict[str, Any]) -> None:
    """The stored tensors must be exactly the network's (names and shapes), compared on the meta device (no memory,
    no weights read)."""
    expected = {k: tuple(v.shape) for k, v in _build_network(path, kwargs, "meta").state_dict().items()}
    with _open_weights(weights) as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    shaped = [k for k in sorted(set(expected) & set(stored)) if expected[k] != stored[k]]
    if missing or unexpected or shaped:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []) + \
                ([f"{len(shaped)} of another shape (e.g. {shaped[0]}: stored {stored[shaped[0]]}, the network has "
                  f"{expected[shaped[0]]})"] if shaped else [])
        raise CheckpointError(f"load_checkpoint: {weights} does not hold the weights of the network its config "
                              f"describes: tensors {'; '.join(parts)}")


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The config of the checkpoint ``path`` after every check that loads no weights: the config is valid and
    names a known network, the weights file is safetensors (not a pickle, not truncated), matches the SHA-256
    recorded at export, and holds exactly the tensors (names, shapes, dtype) of that network."""
    path = Path(path)
    cfg = read_config(path)
    weights = path / WEIGHTS if path.is_dir() else path
    kwargs = _network_kwargs(path, cfg)
    with _open_weights(weights):
        pass
    if path.is_dir():
        _check_checksum(weights, cfg, path)
    _check_tensor_shapes(path, weights, kwargs)
    stored = _float_dtype(cfg.get("storage_dtype", cfg.get("dtype", "float32")), f"load_checkpoint: {path}: dtype")
    _check_stored_dtype(weights, stored)
    return cfg


def _check_checksum(weights: Path, cfg: dict[str, Any], where: Path) -> None:
    want = cfg.get("weights_sha256")
    if want is None:
        return
    got = weights_sha256(weights)
    if got != want:
        raise CheckpointError(f"load_checkpoint: {weights}: the weights do not match the SHA-256 recorded at export "
                              f"in {where / CONFIG} ({got[:16]}... != {str(want)[:16]}...): the file was changed or "
                              "corrupted after export")


_SAFETENSORS_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> EDMDenoiser:
    """Rebuild an :class:`EDMDenoiser` from a checkpoint directory or ``.safetensors`` file.

    Args:
        map_location: device the weights are loaded to.
        dtype: cast the network to this dtype after loading (default: as saved).
    """
    path = Path(path)
    cfg = read_config(path)
    weights = path / WEIGHTS if path.is_dir() else path
    kwargs = _network_kwargs(path, cfg)
    den = cfg["denoiser"]
    if path.is_dir():
        _check_checksum(weights, cfg, path)
    net = _build_network(path, kwargs)
    saved = cfg.get("dtype", "float32")
    net = net.to(dtype=_float_dtype(saved, f"load_checkpoint: {path}: dtype"))
    stored = _float_dtype(cfg.get("storage_dtype", saved), f"load_checkpoint: {path}: storage_dtype")
    _check_stored_dtype(weights, stored)
    # load_state_dict copies each stored tensor into the network's parameter: float16 -> float32 here
    try:
        load_model(net, str(weights), strict=True, device=str(map_location))
    except Exception as e:  # missing / unexpected / mis-shaped tensors (RuntimeError), safetensors errors
        raise CheckpointError(f"load_checkpoint: {weights} does not hold the weights of the network its config "
                              f"describes: {str(e).strip()[:500]}") from None
    bad = [name for name, t in net.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"load_checkpoint: {weights}: {len(bad)} tensor(s) hold NaN/Inf values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    net = net.to(device=map_location)
    if dtype is not None:
        net = net.to(dtype=dtype)
    return EDMDenoiser(net, **den)
