"""EDMDenoiser checkpoints: safetensors weights + resolved YAML config, no pickled code."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
import yaml
from torch import nn

from sciprior.priors.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_checkpoint, read_config, save_checkpoint
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet

KW = dict(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def make(dtype=torch.float32, spatial_dims=2) -> EDMDenoiser:
    net = randomized(build_unet(spatial_dims=spatial_dims, in_channels=2, **KW)).to(dtype)
    shape = (2, 8, 8) if spatial_dims == 2 else (2, 4, 8, 8)
    return EDMDenoiser(net, sigma_data=0.3, sigma_min=0.01, sigma_max=20.0, image_shape=shape)


@pytest.mark.parametrize("dtype, spatial_dims", [(torch.float32, 2), (torch.float64, 3)])
def test_round_trip(tmp_path, dtype, spatial_dims):
    den = make(dtype, spatial_dims)
    path = save_checkpoint(den, tmp_path / "ckpt", metadata={"normalisation": {"scale": 2.5}, "steps": 10})
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, CONFIG])  # no temp files left
    loaded = load_checkpoint(path)
    assert isinstance(loaded, EDMDenoiser)
    for key in ("sigma_data", "sigma_min", "sigma_max", "image_shape", "P_mean", "P_std"):
        assert getattr(loaded, key) == getattr(den, key), key
    sd0, sd1 = den.net.state_dict(), loaded.net.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)  # copies of the weights
    x = torch.randn(2, *den.image_shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    sigma = torch.tensor([0.05, 4.0], dtype=dtype)
    with torch.no_grad():  # bitwise: the same weights on the same input, same process and thread count
        assert torch.equal(loaded(x, sigma), den(x, sigma))
    cfg = yaml.safe_load((path / CONFIG).read_text())
    assert cfg["network"]["kwargs"]["channels"] == [8, 16] and cfg["network"]["kwargs"]["in_channels"] == 2
    assert cfg["network"]["kwargs"]["spatial_dims"] == spatial_dims
    assert cfg["metadata"] == {"normalisation": {"scale": 2.5}, "steps": 10}
    assert cfg["dtype"] == str(dtype).removeprefix("torch.")
    # config.yaml records the weights' SHA-256; the bare weights file carries the rest and is enough on its own
    assert cfg.pop("weights_sha256") == hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    assert read_config(path / WEIGHTS) == cfg
    alone = load_checkpoint(path / WEIGHTS, dtype=torch.float64)
    assert next(alone.net.parameters()).dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(alone(x.double(), sigma.double()), den(x, sigma).double(),
                                   rtol=1e-5, atol=1e-6)


def test_range_typed_metadata_is_written_as_plain_yaml(tmp_path):
    """A parsed config holds range-typed values (PositiveInt is an int subclass): exported as builtins."""
    from sciprior.ranges import PositiveFloat, PositiveInt
    meta = {"batch_size": PositiveInt(16), "lr": PositiveFloat(2e-4), "sizes": (PositiveInt(64), 64)}
    path = save_checkpoint(make(), tmp_path / "c", metadata=meta)
    cfg = yaml.safe_load((path / CONFIG).read_text())
    assert cfg["metadata"] == {"batch_size": 16, "lr": 2e-4, "sizes": [64, 64]}
    assert type(cfg["metadata"]["batch_size"]) is int and type(read_config(path / WEIGHTS)["metadata"]["lr"]) is float


def test_weights_file_is_plain_safetensors(tmp_path):
    path = save_checkpoint(make(), tmp_path / "c")
    raw = (path / WEIGHTS).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])  # a JSON header followed by raw tensor bytes: nothing to unpickle
    assert "__metadata__" in header and "sciprior" in header["__metadata__"]
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    assert b"\x80\x04" not in raw[:8 + n]  # no pickle protocol marker in the header


def test_save_needs_a_known_network(tmp_path):
    den = EDMDenoiser(nn.Conv2d(1, 1, 3, padding=1))
    with pytest.raises(ValueError, match="net_config"):
        save_checkpoint(den, tmp_path / "c")
    with pytest.raises(ValueError, match="kernel"):
        save_checkpoint(den, tmp_path / "c", net_config={"channels": [8], "kernel": 3})
    with pytest.raises(TypeError, match="EDMDenoiser"):
        save_checkpoint(nn.Identity(), tmp_path / "c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain data"):
        save_checkpoint(make(), tmp_path / "d", metadata={"bad": object()})


def test_load_rejects_bad_configs(tmp_path):
    path = save_checkpoint(make(), tmp_path / "c")
    cfg = yaml.safe_load((path / CONFIG).read_text())

    def write(c):
        (path / CONFIG).write_text(yaml.safe_dump(c))

    write({**cfg, "network": {**cfg["network"], "kwargs": {**cfg["network"]["kwargs"], "evil": 1}}})
    with pytest.raises(ValueError, match="evil"):
        load_checkpoint(path)
    write({**cfg, "dtype": "int8"})
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_checkpoint(path)
    write({**cfg, "format": "other/9"})
    with pytest.raises(ValueError, match="other/9"):
        load_checkpoint(path)
    write({**cfg, "denoiser": {**cfg["denoiser"], "extra_key": 3}})
    with pytest.raises(ValueError, match="extra_key"):
        load_checkpoint(path)
    # weights that do not fit the configured network are refused (strict loading)
    write({**cfg, "network": {**cfg["network"], "kwargs": {**cfg["network"]["kwargs"], "channels": [8, 24]}}})
    with pytest.raises(CheckpointError, match=r"(?s)model.safetensors does not hold the weights .*size mismatch"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.bin")


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    den = make()
    full = save_checkpoint(den, tmp_path / "f32")
    half = save_checkpoint(den, tmp_path / "f16", storage_dtype="float16")
    raw = (half / WEIGHTS).read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    n_params = sum(p.numel() for p in den.net.parameters())
    size32, size16 = (full / WEIGHTS).stat().st_size, (half / WEIGHTS).stat().st_size
    assert size32 - size16 >= 2 * n_params - 4096  # two bytes saved per parameter (headers differ a little)
    cfg = read_config(half)
    assert cfg["dtype"] == "float32" and cfg["storage_dtype"] == "float16"
    assert next(den.net.parameters()).dtype == torch.float32  # saving did not cast the caller's network
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.net.parameters())
    for (k, p), q in zip(den.net.state_dict().items(), loaded.net.state_dict().values()):
        assert torch.equal(q, p.half().float()), k  # exactly the float16 rounding of each weight
    x = torch.randn(2, *den.image_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.5), den(x, 0.5), rtol=0, atol=1e-2)


def test_storage_dtype_is_checked(tmp_path):
    with pytest.raises(ValueError, match="storage_dtype must be one of"):
        save_checkpoint(make(), tmp_path / "c", storage_dtype="int8")
    path = save_checkpoint(make(), tmp_path / "c", storage_dtype="float16")
    cfg = yaml.safe_load((path / CONFIG).read_text())
    (path / CONFIG).write_text(yaml.safe_dump({**cfg, "storage_dtype": "bfloat16"}))
    with pytest.raises(ValueError, match="stored as F16, the config says bfloat16"):
        load_checkpoint(path)
