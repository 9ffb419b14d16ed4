"""End-to-end ``sciprior train`` on tiny synthetic volumes: export round trip, EMA export, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config, write_config

from sciprior.priors.checkpoint import load_checkpoint, read_config
from sciprior.training.cli import cpu_has_native_bf16, default_precision, main_train
from sciprior.training.module import EDMPriorModule


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _run(tmp: Path, files: list[Path], *extra: str, **overrides) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp / "train.yaml", tiny_config(tmp, files, **overrides))
    assert main_train([str(cfg), *extra]) == 0
    return tmp


def test_train_exports_a_loadable_prior(tmp_path: Path, volumes: list[Path]):
    run = _run(
        tmp_path / "a",
        volumes,
        **{
            "trainer.max_steps": 3,
            "model.sample_every_n_epochs": 1,
            "model.num_samples": 4,
            "model.sample_steps": 2,
        },
    )
    from PIL import Image

    grids = sorted((run / "run" / "samples").glob("epoch*.png"))
    # 3 steps: epoch 0 (2 steps) ends with validation and a grid; epoch 1 stops after one step
    assert [g.name for g in grids] == ["epoch0000.png"]
    assert Image.open(grids[-1]).size == (2 * 18 + 2, 2 * 18 + 2)  # 2 x 2 samples of 16 x 16, 2 px gaps
    prior = load_checkpoint(run / "prior")
    cfg = read_config(run / "prior")
    assert cfg["metadata"]["training"]["global_step"] == 3
    assert cfg["metadata"]["training"]["ema"] is True
    assert cfg["metadata"]["training"]["train_seconds"] > 0
    assert cfg["metadata"]["training"]["devices"] == 1
    assert cfg["metadata"]["data"]["val_files"] == [str(volumes[-1])]
    assert cfg["metadata"]["train_config"]["model"]["network"]["channels"] == [8, 8]
    assert prior.image_shape == (1, 16, 16)

    # the exported weights are the EMA weights of the last Lightning checkpoint (EMA callback puts the
    # average in "state_dict" and the raw weights in "current_model_state")
    ck = _ckpt(run / "ckpt" / "last.ckpt")
    ema = {k.removeprefix("denoiser.net."): v for k, v in ck["state_dict"].items()}
    raw = {k.removeprefix("denoiser.net."): v for k, v in ck["current_model_state"].items()}
    exported = prior.net.state_dict()
    assert exported.keys() == ema.keys()
    for k in exported:  # bitwise: the export is a copy of the checkpoint's tensors
        torch.testing.assert_close(exported[k], ema[k], rtol=0, atol=0)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "EMA weights should differ from the raw ones"

    # identical outputs from the module rebuilt from the Lightning checkpoint and from the export
    module = EDMPriorModule(network=ck["hyper_parameters"]["network"])
    module.load_state_dict(ck["state_dict"])
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # bitwise: the same weights on the same input, same process and thread count
        torch.testing.assert_close(prior(x, 0.3), module.denoiser.eval()(x, 0.3), rtol=0, atol=0)
        assert not torch.equal(
            prior(x, 0.3), EDMPriorModule(network=ck["hyper_parameters"]["network"]).denoiser(x, 0.3)
        )


def test_export_storage_dtype_float16(tmp_path: Path, volumes: list[Path], capsys):
    run = _run(tmp_path / "h", volumes, **{"trainer.max_steps": 2, "export.storage_dtype": "float16"})
    cfg = read_config(run / "prior")
    assert cfg["dtype"] == "float32" and cfg["storage_dtype"] == "float16"
    prior = load_checkpoint(run / "prior")
    ema = {k.removeprefix("denoiser.net."): v for k, v in _ckpt(run / "ckpt" / "last.ckpt")["state_dict"].items()}
    for k, v in prior.net.state_dict().items():
        assert v.dtype == ema[k].dtype == torch.float32
        assert torch.equal(v, ema[k].half().float()), k  # the float16 rounding of the trained weights
    # a storage dtype the exporter does not offer fails in the config check (exit status 2, the key named)
    assert main_train([str(run / "train.yaml"), "--export.storage_dtype", "int8"]) == 2
    assert "export.storage_dtype" in capsys.readouterr().err


def _same_weights(a: dict, b: dict) -> None:
    """Bitwise: a resumed run repeats the same batches with the same shapes on the same machine and thread
    count, so every floating-point operation is repeated exactly."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}/{k}")
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=0, atol=0)


def test_resume_continues_exactly(tmp_path: Path, volumes: list[Path]):
    """4 steps straight == 2 steps + resume (end-of-epoch checkpoint) == 3 steps + resume (mid-epoch);
    2 batches per epoch, a checkpoint after every step."""
    every_step = {"checkpoint.every_n_train_steps": 1, "checkpoint.every_n_epochs": None}
    straight = _run(tmp_path / "straight", volumes, **{"trainer.max_steps": 4}, **every_step)
    reference = _ckpt(straight / "ckpt" / "last.ckpt")
    assert reference["global_step"] == 4
    for stop in (2, 3):
        run = _run(tmp_path / f"stop{stop}", volumes, **{"trainer.max_steps": stop}, **every_step)
        assert _ckpt(run / "ckpt" / "last.ckpt")["global_step"] == stop
        (run / "prior").rename(run / "prior_first")
        (run / "ckpt" / "last.ckpt").rename(run / "first.ckpt")
        _run(run, volumes, "--ckpt_path", str(run / "first.ckpt"), **{"trainer.max_steps": 4}, **every_step)
        _same_weights(reference, _ckpt(run / "ckpt" / "last.ckpt"))
    # the prior after 2 steps really differs from the one after 4 (the comparison can fail)
    p2, p4 = (
        load_checkpoint(tmp_path / "stop2" / "prior_first"),
        load_checkpoint(tmp_path / "stop2" / "prior"),
    )
    assert any(not torch.equal(u, v) for u, v in zip(p2.net.parameters(), p4.net.parameters()))
    # the training time of a resumed run adds to the time stored in the checkpoint it resumed from
    first = _ckpt(tmp_path / "stop2" / "first.ckpt")["callbacks"]
    (saved,) = [v["train_seconds"] for k, v in first.items() if k.startswith("ExportPrior")]
    t4 = read_config(tmp_path / "stop2" / "prior")["metadata"]["training"]["train_seconds"]
    assert 0 < saved < t4


def test_resume_with_oblique_views_continues_exactly(tmp_path: Path, volumes: list[Path]):
    """Oblique re-sliced views (tilt/spin) are drawn per (seed, epoch, index) like the others: 4 steps straight ==
    3 steps + mid-epoch resume."""
    opts = {"checkpoint.every_n_train_steps": 1, "checkpoint.every_n_epochs": None,
            "data.tilt": 10.0, "data.spin": 10.0}
    straight = _run(tmp_path / "straight", volumes, **{"trainer.max_steps": 4}, **opts)
    run = _run(tmp_path / "stop3", volumes, **{"trainer.max_steps": 3}, **opts)
    (run / "ckpt" / "last.ckpt").rename(run / "first.ckpt")
    _run(run, volumes, "--ckpt_path", str(run / "first.ckpt"), **{"trainer.max_steps": 4}, **opts)
    _same_weights(_ckpt(straight / "ckpt" / "last.ckpt"), _ckpt(run / "ckpt" / "last.ckpt"))


def test_yaml_typo_fails_naming_the_key(tmp_path: Path, volumes: list[Path], capsys):
    cfg = tiny_config(tmp_path, volumes)
    cfg["model"]["warmup_stpes"] = 3
    path = write_config(tmp_path / "typo.yaml", cfg)
    assert main_train([str(path)]) == 2
    assert "sciprior train: error: model.warmup_stpes: not a setting" in capsys.readouterr().err

    cfg = tiny_config(tmp_path, volumes)
    cfg["data"]["batch_sise"] = 3
    path = write_config(tmp_path / "typo2.yaml", cfg)
    assert main_train([str(path)]) == 2
    assert "data.batch_sise: not a setting" in capsys.readouterr().err

    ok = str(write_config(tmp_path / "ok.yaml", tiny_config(tmp_path, volumes)))
    assert main_train([ok, "--model.network.chanels", "[8, 8]"]) == 2
    assert "model.network.chanels: not a setting" in capsys.readouterr().err

    # a value outside the typed choices (true / false / horizontal / vertical)
    assert main_train([str(tmp_path / "ok.yaml"), "--data.flips", "sideways", "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "data.flips" in err and "sideways" in err


def test_bad_path_names_the_file(tmp_path: Path, volumes: list[Path], capsys):
    missing = str(tmp_path / "nowhere" / "scan.nii.gz")
    path = write_config(
        tmp_path / "bad.yaml", tiny_config(tmp_path, volumes, **{"data.paths": [missing]})
    )
    assert main_train([str(path)]) == 2
    text = capsys.readouterr().err
    assert missing in text and "data.paths: no such file or directory" in text


def test_print_config_applies_overrides(tmp_path: Path, volumes: list[Path], capsys):
    path = write_config(tmp_path / "ok.yaml", tiny_config(tmp_path, volumes))
    with pytest.raises(SystemExit) as e:
        main_train([str(path), "--model.lr", "0.123", "--data.flips", "horizontal", "--print_config"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "flips: horizontal" in out
    assert "lr: 0.123" in out and "modality: mri" in out
    assert f"precision: {default_precision()}" in out  # the machine's default


def test_default_precision_follows_native_bf16(monkeypatch):
    """bf16 autocast only where the hardware computes bfloat16 (emulated bf16 on a CPU is slower than float32)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, want in [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert cpu_has_native_bf16() is (want == "bf16-mixed")
        assert default_precision() == want
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, want in [(True, "bf16-mixed"), (False, "32-true")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda v=bf16: v)
        assert default_precision() == want


def test_mismatched_channels_fail_before_training(tmp_path: Path, volumes: list[Path]):
    path = write_config(
        tmp_path / "c.yaml", tiny_config(tmp_path, volumes, **{"model.network.in_channels": 2})
    )
    with pytest.raises(ValueError, match="model.network.in_channels=2"):
        main_train([str(path)])
