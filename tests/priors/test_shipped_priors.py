"""The shipped demo priors (``sciprior/modalities/{ct,mri}/prior``): they rebuild from safetensors + YAML with no
pickled code, their training configs still describe how they were trained, and they denoise real held-out images
better than the identity.

The held-out set is the training run's validation split, rebuilt by ``benchmarks/prior_quality.py`` from the
training config stored in the checkpoint (CT: 693_UNCR.dcm, the head slice of the CT demos; MRI: MNI152
axial slices 74..90). Property checked, as in the table of docs/priors.md: at each sigma of
:data:`TEST_SIGMAS` (prior units), the mean over a few held-out examples of the MSE of
``D(x + sigma n, sigma)`` is below that of the noisy input ``x + sigma n`` (same seeded noise as the doc).
The CT patch prior is also checked on the whole held-out slice through ``PatchPrior``. Each test skips, with
the reason, when a prior has not been trained and exported yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import prior_quality as pq  # noqa: E402
from sciprior import modalities  # noqa: E402
from sciprior.priors.checkpoint import CONFIG, FORMAT, WEIGHTS, load_checkpoint, read_config  # noqa: E402
from sciprior.priors.edm import EDMDenoiser  # noqa: E402

#: noise levels checked (prior units, the [-1, 1] image domain): the doc's whole fixed list
TEST_SIGMAS = pq.SIGMAS
#: held-out examples checked per prior (evenly spread over the validation set)
NUM_EXAMPLES = 6


def shipped(name: str) -> Path:
    path = pq.shipped_prior_dir(name)
    if not (path / WEIGHTS).is_file():
        pytest.skip(f"the {name} prior is not shipped yet: no {path / WEIGHTS} "
                    f"(train and export it with `sciprior train configs/{name}/train.yaml`)")
    return path


@pytest.mark.parametrize("name", pq.PRIOR_NAMES)
def test_shipped_prior_rebuilds_without_pickled_code(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shipped(name)
    files = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    assert files == sorted([CONFIG, WEIGHTS]), f"{path} should hold only {CONFIG} and {WEIGHTS}, has {files}"
    cfg = yaml.safe_load((path / CONFIG).read_text())
    assert cfg["format"] == FORMAT
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        embedded = json.loads((f.metadata() or {})["sciprior"])
    # config.yaml records the SHA-256 of the weights it was exported with; the rest is embedded in the weights
    assert cfg.pop("weights_sha256") == hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    assert embedded == cfg, "the config embedded in model.safetensors differs from config.yaml"

    def refuse(*args, **kwargs):
        raise AssertionError("load_checkpoint tried to unpickle something")

    for mod, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, attr, refuse)
    den = load_checkpoint(path)
    monkeypatch.undo()

    assert isinstance(den, EDMDenoiser)
    assert den.image_shape == tuple(cfg["denoiser"]["image_shape"])
    assert den.sigma_data == cfg["denoiser"]["sigma_data"]
    weights, state = load_file(str(path / WEIGHTS)), den.net.state_dict()
    assert set(weights) == set(state)
    # stored weights (float16 for MRI) load exactly into the float32 network
    assert all(torch.equal(state[k], weights[k].to(state[k].dtype)) for k in state)
    assert all(v.dtype == getattr(torch, cfg.get("storage_dtype", cfg["dtype"])) for v in weights.values()
               if v.is_floating_point())
    assert (path / WEIGHTS).stat().st_size <= 10_000_000, "a shipped prior should stay within a few MB"
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def _assert_better(errs: list[pq.Errors], what: str) -> None:
    for e in errs:
        ident, prior = float(e.identity.mean()), float(e.prior.mean())
        assert prior < ident, (f"{what}: at sigma = {e.sigma} the prior's mean MSE {prior:.3g} is not below the "
                               f"identity's {ident:.3g} (n = {e.identity.numel()})")


@pytest.mark.parametrize("name", pq.PRIOR_NAMES)
def test_shipped_prior_denoises_heldout_better_than_identity(name: str) -> None:
    path = shipped(name)
    den = load_checkpoint(path).eval()
    held = pq.heldout_set(path, name)
    assert held.examples.shape[1:] == den.image_shape
    n = len(held.examples)
    idx = sorted({round(k * (n - 1) / max(NUM_EXAMPLES - 1, 1)) for k in range(min(NUM_EXAMPLES, n))})
    errs, _ = pq.denoising_errors(den, held.examples[idx], TEST_SIGMAS, [pq.NOISE_SEED + i for i in idx])
    _assert_better(errs, f"{name} prior on held-out examples {[held.labels[i] for i in idx]}")
    if held.patch_size is not None:
        assert held.full, "a patch prior's held-out set should include the whole held-out images"
        img = held.full[0]
        assert img.shape[-1] > held.patch_size[-1] and img.shape[-2] > held.patch_size[-2]
        errs, _ = pq.denoising_errors(pq.patch_prior(den, held.patch_size), img, TEST_SIGMAS,
                                      [pq.NOISE_SEED + pq.FULL_SEED_OFFSET])
        _assert_better(errs, f"{name} prior through PatchPrior on the whole held-out {held.full_labels[0]}")


def test_nearest_training_example_finds_exact_copies_and_reports_rms() -> None:
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(50, 1, 8, 8, generator=g)
    queries = torch.stack([pool[7], pool[31] + 0.5])
    idx, rms = pq.nearest(queries, pool)
    assert idx.tolist() == [7, 31]
    assert rms[0].item() == pytest.approx(0.0, abs=1e-6)
    assert rms[1].item() == pytest.approx(0.5, rel=1e-5)  # a constant offset of 0.5 on every pixel
    # leave-one-out within the pool: never the item itself; a planted near-duplicate is found both ways
    pool[12] = pool[3] + 0.01
    idx, rms = pq.nearest(pool, pool, exclude_self=True)
    assert (idx != torch.arange(len(pool))).all()
    assert idx[3].item() == 12 and idx[12].item() == 3
    assert rms[3].item() == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("name", ["ct", "mri"])  # the two priors stored in the earlier spelling
def test_the_training_config_still_builds_the_data_the_shipped_prior_was_trained_on(name: str) -> None:
    """The shipped checkpoints record their training config in the earlier spelling (``data: {class_path,
    init_args}``, reader class + arguments). Translated, it builds the same data module as today's
    ``configs/<name>/train.yaml``: same modality, reader and settings, sizes, training and validation files."""
    cfg = read_config(shipped(name))
    stored = cfg["metadata"]["train_config"]["data"]
    assert "class_path" in stored  # the earlier spelling, kept unchanged in the shipped file
    current = yaml.safe_load((Path(pq.ROOT) / "configs" / name / "train.yaml").read_text())["data"]
    assert modalities.from_legacy_data_section(stored)["modality"] == current["modality"] == name
    old, new = pq.build_data_module(stored).domain(), pq.build_data_module(current).domain()
    assert old == new
    trained = modalities.trained_reader(cfg["metadata"]["data"])  # the checkpoint's record of its reader
    assert (trained.modality, trained.reader) == (name, new["reader"]["name"])
    now = {k: v for k, v in new["reader"].items() if k != "name"}
    assert trained.args == {k: v for k, v in now.items() if k in trained.args}
    # settings the reader gained since (e.g. MRSlices' per-slice scale) are at their defaults, the earlier behaviour
    defaults = {f.name: f.default for f in dataclasses.fields(modalities.get(name).reader(new["reader"]["name"]))}
    assert {k: v for k, v in now.items() if k not in trained.args} == {
        k: defaults[k] for k in now if k not in trained.args}

