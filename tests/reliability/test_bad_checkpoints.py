"""Bad prior checkpoints: ``sciprior reconstruct`` refuses each one naming the file, never unpickles or constructs
anything from it, never runs the solver on it, and leaves nothing behind (the four checks of
tests/reliability/reliability_helpers.py).

Each case starts from a real exported checkpoint (a directory with ``config.yaml`` and ``model.safetensors``,
written by ``save_checkpoint``) and damages it. A checkpoint whose fault shows only when its weights are loaded
(NaN weights in a bare .safetensors, which has no recorded checksum) fails after the prior is loaded and still
before any solver step; a result that is not finite is refused before anything is written.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import CT_TRAINED, Spy, refused, run_main, tiny_prior, tree
from safetensors.torch import load_file, save_file

from sciprior.app.reconstruct import main
from sciprior.priors.checkpoint import CONFIG, WEIGHTS


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return tiny_prior(tmp_path_factory.mktemp("prior") / "ct", metadata=CT_TRAINED)


def config(checkpoint: Path, out: Path) -> dict:
    return {"modality": {"name": "ct", "n_views": 30, "image_size": 64, "i0": 1e6}, "input": "sample:head_ct",
            "prior": {"checkpoint": str(checkpoint)}, "solver": {"name": "dds", "steps": 2}, "device": "cpu",
            "progress": False, "output_dir": str(out)}


def _edit_config(ckpt: Path, edit) -> Path:
    cfg = yaml.safe_load((ckpt / CONFIG).read_text())
    edit(cfg)
    (ckpt / CONFIG).write_text(yaml.safe_dump(cfg))
    return ckpt


def _raw_config(ckpt: Path, text_edit) -> Path:
    (ckpt / CONFIG).write_text(text_edit((ckpt / CONFIG).read_text()))
    return ckpt


def _truncate_weights(ckpt: Path) -> Path:
    raw = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(raw[: len(raw) * 2 // 3])
    return ckpt


def _overwrite_bytes(ckpt: Path) -> Path:
    raw = bytearray((ckpt / WEIGHTS).read_bytes())
    raw[-4096:-2048] = b"\x7f" * 2048  # weight bytes only (the header is at the start): still loads as safetensors
    (ckpt / WEIGHTS).write_bytes(bytes(raw))
    return ckpt


def _pickle_as_weights(ckpt: Path) -> Path:
    marker = ckpt.parent / "MARKER"
    # a pickle that would create the marker file if anything unpickled it
    payload = b"\x80\x04c" + b"builtins\nopen\n" + pickle.dumps((str(marker), "w"))[2:-1] + b"R."
    (ckpt / WEIGHTS).write_bytes(payload)
    return ckpt


def _torch_zip_as_weights(ckpt: Path) -> Path:
    state = {k: v.clone() for k, v in load_file(str(ckpt / WEIGHTS)).items()}  # copies: the file is mapped
    (ckpt / WEIGHTS).unlink()
    torch.save(state, str(ckpt / WEIGHTS))
    return ckpt


def _bare_file(ckpt: Path, scale: float | None = None, nan: bool = False, metadata: bool = True) -> Path:
    """The weights file alone (a bare .safetensors is a checkpoint too; its config is embedded)."""
    from safetensors import safe_open

    with safe_open(str(ckpt / WEIGHTS), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, t in tensors.items():
        if t.is_floating_point():
            if nan and k.endswith("weight"):
                t[...] = float("nan")
            if scale is not None:
                tensors[k] = t * scale
    bare = ckpt.parent / "bare.safetensors"
    save_file(tensors, str(bare), metadata=meta if metadata else None)
    shutil.rmtree(ckpt)
    return bare


# id: (how to damage a copy of the checkpoint -> the path to give, exit status, message pattern)
CASES = {
    "weights-truncated": (_truncate_weights, 2,
                          r"prior\.checkpoint: .*model\.safetensors is not a valid safetensors file \(truncated or "
                          r"corrupt\)"),
    "pickle-named-safetensors": (_pickle_as_weights, 2,
                                 r"model\.safetensors is a pickle / torch\.save \(or Lightning \.ckpt\) file, not "
                                 r"safetensors; sciprior never unpickles"),
    "torch-zip-named-safetensors": (_torch_zip_as_weights, 2, r"model\.safetensors is a pickle / torch\.save"),
    "weight-bytes-overwritten": (_overwrite_bytes, 2,
                                 r"model\.safetensors: the weights do not match the SHA-256 recorded at export in "
                                 r".*config\.yaml"),
    "python-tag-in-config": (lambda c: _raw_config(c, lambda t: t + "extra: !!python/object/apply:builtins.open "
                                                   f"['{c.parent / 'MARKER'}', 'w']\n"), 2,
                             r"config\.yaml'?: uses the YAML tag .*python/object/apply:builtins\.open"),
    "duplicate-key-in-config": (lambda c: _raw_config(c, lambda t: t + "format: other\n"), 2,
                                r"config\.yaml'?: duplicate key 'format'"),
    "empty-config": (lambda c: _raw_config(c, lambda t: ""), 2, r"config\.yaml'? is empty"),
    "config-is-a-list": (lambda c: _raw_config(c, lambda t: "- a\n- b\n"), 2,
                         r"config\.yaml'? holds a YAML list at the top level"),
    "unknown-format": (lambda c: _edit_config(c, lambda d: d.update(format="someone-else/1")), 2,
                       r"unsupported checkpoint format 'someone-else/1'"),
    "network-section-missing": (lambda c: _edit_config(c, lambda d: d.pop("network")), 2,
                                r"config key 'network' is missing or not a mapping"),
    "unknown-network-builder": (lambda c: _edit_config(c, lambda d: d["network"].update(builder="os.system")), 2,
                                r"unknown network builder 'os\.system'"),
    "network-of-another-shape": (lambda c: _edit_config(c, lambda d: d["network"]["kwargs"].update(
        channels=[16, 16])), 2, r"model\.safetensors does not hold the weights of the network its config describes"),
    "unknown-network-key": (lambda c: _edit_config(c, lambda d: d["network"]["kwargs"].update(exec="x")), 2,
                            r"unknown network config keys \['exec'\]"),
    "bare-file-without-config": (lambda c: _bare_file(c, metadata=False), 2,
                                 r"bare\.safetensors has no embedded sciprior config"),
    "empty-directory": (lambda c: (shutil.rmtree(c), c.mkdir()) and c, 2, r"prior\.checkpoint: .*ct"),
    "bare-file-with-nan-weights": (lambda c: _bare_file(c, nan=True), 2,
                                   r"bare\.safetensors: \d+ tensor\(s\) hold NaN/Inf values"),
}
LOADED_FIRST = {"bare-file-with-nan-weights"}  # no recorded checksum: seen when the weights are loaded


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_refused_naming_the_file(case, good, tmp_path, monkeypatch):
    damage, rc, pattern = CASES[case]
    ckpt = Path(shutil.copytree(good, tmp_path / "prior" / "ct"))
    given = damage(ckpt)
    (tmp_path / "c.yaml").write_text(json.dumps(config(given, tmp_path / "out")))
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    outcome = run_main(main, [str(tmp_path / "c.yaml")])
    refused(outcome, rc, pattern, watched=tmp_path, before=before, spy=spy)
    assert spy.calls == (["load_prior"] if case in LOADED_FIRST else []), spy.calls
    assert not (tmp_path / "prior" / "MARKER").exists(), "something in the checkpoint was executed"


def test_a_result_that_is_not_finite_is_refused_before_anything_is_written(good, tmp_path, monkeypatch):
    """Finite weights so large that the network overflows (every check on the file passes): the solver runs, its
    result holds NaN/Inf, and nothing at all is written (no reconstruction, no report, no staging directory)."""
    bare = _bare_file(Path(shutil.copytree(good, tmp_path / "prior" / "ct")), scale=1e12)
    out = tmp_path / "out"
    (tmp_path / "c.yaml").write_text(json.dumps(config(bare, out)))
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    outcome = run_main(main, [str(tmp_path / "c.yaml")])
    refused(outcome, 1, r"solver 'dds' returned 4096 NaN/Inf value\(s\) of 4096 in its mean; nothing was written\. "
            r"Check the prior checkpoint \(.*bare\.safetensors\)", watched=tmp_path, before=before, spy=spy,
            solver_may_run=True)
    assert spy.calls == ["load_prior", "solver"]
    assert not out.exists()
