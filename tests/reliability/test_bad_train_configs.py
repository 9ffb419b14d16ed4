"""Bad training configs and checkpoints: ``sciprior train`` refuses each one in one line naming the key or file
(exit status 2), before any training step, without importing or unpickling anything a file names, and leaves
nothing behind (the four checks of tests/reliability/reliability_helpers.py).

The base config is a real, tiny run (a 2-level U-Net on 16 x 16 patches of pydicom's CT_small.dcm, one step) that
trains when nothing is changed (checked first); every case changes one thing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from pydicom.data import get_testdata_file
from reliability_helpers import ZEN, refused, run_main, run_subprocess, tree, with_

from sciprior.training import module as training_module
from sciprior.training.cli import main_train

CT_SLICE = get_testdata_file("CT_small.dcm", download=False)


def base(tmp: Path) -> dict:
    return {
        "seed_everything": 0,
        "model": {"network": {"spatial_dims": 2, "in_channels": 1, "channels": [8, 8],
                              "attention_levels": [False, False], "num_res_blocks": 1, "num_head_channels": 8,
                              "norm_num_groups": 8}, "sample_every_n_epochs": 0},
        "data": {"modality": "ct", "reader": {"name": "slices"}, "paths": [CT_SLICE], "patch_size": [16, 16],
                 "repeats": 4, "batch_size": 2, "val_fraction": 0.0},
        "trainer": {"max_steps": 1, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "default_root_dir": str(tmp / "run")},
        "checkpoint": {"dirpath": str(tmp / "ckpt")},
        "export": {"dirpath": str(tmp / "prior")},
    }



class TrainSpy:
    """Records the training steps that ran."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        step = training_module.EDMPriorModule.training_step

        def spy_step(module, *a, **k):
            self.calls.append("training_step")
            return step(module, *a, **k)

        monkeypatch.setattr(training_module.EDMPriorModule, "training_step", spy_step)


def _old_pickle_ckpt(tmp: Path) -> Path:
    p = tmp / "old.ckpt"
    torch.save({"state_dict": {}}, p, _use_new_zipfile_serialization=False)
    return p


class _Opens:
    """Unpickling this opens (creates) the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_zip_ckpt(tmp: Path) -> Path:
    p = tmp / "hostile.ckpt"
    torch.save({"state_dict": {}, "extra": _Opens(str(tmp / "MARKER"))}, p)
    return p


def _foreign_class_ckpt(tmp: Path) -> Path:
    p = tmp / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "evil.Thing"}}, p)
    return p


def _no_state_ckpt(tmp: Path) -> Path:
    p = tmp / "nostate.ckpt"
    torch.save({"epoch": 3}, p)
    return p


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe.dcm")
    return str(tmp / "pipe.dcm")


def _text(tmp: Path) -> str:
    (tmp / "notes.dcm").write_text("not a scan\n" * 20)
    return str(tmp / "notes.dcm")


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("a regular file")
    return tmp / "afile"


# id: (config: dict, YAML text, or (dict, extra args); may be a function of tmp; rc; message pattern)
def cases(tmp: Path) -> dict:
    b = base(tmp)
    return {
        # the file
        "empty-file": ("", r"--config '.*t\.yaml' is empty; expected a YAML mapping"),
        "yaml-list": ("- model: {}\n- data: {}\n", r"holds a YAML list at the top level"),
        "duplicate-key": ("trainer: {max_steps: 1}\ntrainer: {max_steps: 9}\n",
                          r"duplicate key 'trainer' \(first at line 1.*line 2"),
        "python-tag": (f"trainer: !!python/object/apply:builtins.open ['{tmp / 'MARKER'}', 'w']\n",
                       r"uses the YAML tag .*python/object/apply:builtins\.open.*plain data only"),
        "old-data-spelling": (with_(b, "data", {"class_path": "sciprior.datasets.training_sets.SliceDataModule",
                                                "init_args": {"paths": [CT_SLICE]}}),
                              r"data\.class_path/init_args is the old spelling .*write:\ndata:\n  modality: mri\n"),
        # keys and names
        "unknown-model-key": (with_(b, "model.lrr", 1e-3), r"model\.lrr: not a setting of a training config"),
        "unknown-network-key": (with_(b, "model.network.chanels", [8, 8]),
                                r"model\.network\.chanels: not a setting of model\.network"),
        "unknown-modality": (with_(b, "data.modality", "pet"),
                             r"data\.modality: unknown modality 'pet'; choose from .*ct"),
        "unknown-reader": (with_(b, "data.reader", {"name": "cubes"}),
                           r"data\.reader\.name: modality 'ct' has no reader 'cubes'; choose from slices"),
        "unknown-reader-setting": (with_(b, "data.reader", {"name": "slices", "windoww": [0, 1]}),
                                   r"data\.reader \(ct reader 'slices', CTSlices\): .*'windoww'"),
        "network-does-not-build": (with_(b, "model.network.attention_levels", [False]),
                                   r"model\.network: build_unet: attention_levels has 1 entries but channels has 2"),
        # ranges
        "max-steps-unbounded": (with_(b, "trainer.max_steps", -1),
                                r"trainer\.max_steps=-1 with trainer\.max_epochs=None trains without bound"),
        "max-steps-zero": (with_(b, "trainer.max_steps", 0), r"trainer\.max_steps must be >= 1"),
        "max-epochs-zero": (with_(with_(b, "trainer.max_steps", -1), "trainer.max_epochs", 0),
                            r"trainer\.max_epochs must be >= 1, got 0"),
        "batch-size-zero": (with_(b, "data.batch_size", 0), r"data\.batch_size: 0 .*expected an int >= 1"),
        "lr-negative": (with_(b, "model.lr", -1.0), r"model\.lr: -1\.0 .*expected a finite number > 0"),
        "sigma-data-infinite": (with_(b, "model.sigma_data", float("inf")),
                                r"model\.sigma_data: (inf|Infinity) .*expected a finite number > 0"),
        "patch-size-zero": (with_(b, "data.patch_size", [0, 16]), r"data\.patch_size: 0 .*expected an int >= 1"),
        "ema-decay-above-one": (with_(b, "ema.decay", 1.5), r"ema\.decay must be in \[0, 1\), got 1\.5"),
        "devices-zero": (with_(b, "trainer.devices", 0), r"trainer\.devices: .*devices=0"),
        # the training files
        "path-missing": (with_(b, "data.paths", [str(tmp / "nowhere.dcm")]),
                         r"data\.paths: no such file or directory: '.*nowhere\.dcm'"),
        "path-is-a-fifo": (lambda t: with_(b, "data.paths", [_fifo(t)]),
                           r"data\.paths: '.*pipe\.dcm' is not a regular file or directory \(a FIFO"),
        "path-is-text": (lambda t: with_(b, "data.paths", [_text(t)]), r"notes\.dcm is not a readable DICOM file"),
        # where the results go
        "export-under-a-file": (lambda t: with_(b, "export.dirpath", str(_file(t) / "prior")),
                                r"export\.dirpath: '.*afile/prior' cannot be created: .*afile' is a file"),
        "root-under-a-file": (lambda t: with_(b, "trainer.default_root_dir", str(_file(t) / "run")),
                              r"trainer\.default_root_dir: '.*afile/run' cannot be created"),
        "checkpoints-under-a-file": (lambda t: with_(b, "checkpoint.dirpath", str(_file(t) / "ck")),
                                     r"checkpoint\.dirpath: '.*afile/ck' cannot be created"),
        # resuming
        "ckpt-missing": (lambda t: (b, ["--ckpt_path", str(t / "none.ckpt")]),
                         r"ckpt_path: no such checkpoint '.*none\.ckpt'"),
        "ckpt-old-pickle": (lambda t: (b, ["--ckpt_path", str(_old_pickle_ckpt(t))]),
                            r"ckpt_path: '.*old\.ckpt' is not a Lightning checkpoint \(a torch\.save zip archive\); "
                            r"an old-style pickle is never loaded"),
        "ckpt-unpickles-code": (lambda t: (b, ["--ckpt_path", str(_hostile_zip_ckpt(t))]),
                                r"ckpt_path: '.*hostile\.ckpt' does not load as tensors and plain data only"),
        "ckpt-of-another-class": (lambda t: (b, ["--ckpt_path", str(_foreign_class_ckpt(t))]),
                                  r"ckpt_path: '.*foreign\.ckpt' was saved by 'evil\.Thing', not "
                                  r"sciprior\.training\.module\.EDMPriorModule; its hyperparameters are not read"),
        "ckpt-without-state": (lambda t: (b, ["--ckpt_path", str(_no_state_ckpt(t))]),
                               r"ckpt_path: '.*nostate\.ckpt' is not a Lightning checkpoint \(no 'state_dict'\)"),
    }


CASE_IDS = list(cases(Path("/t")))


def test_the_base_config_trains(tmp_path, monkeypatch):
    """The cases below fail because of what they change: unchanged, the base config trains and exports."""
    (tmp_path / "t.yaml").write_text(json.dumps(base(tmp_path)))
    spy = TrainSpy(monkeypatch)
    outcome = run_main(main_train, [str(tmp_path / "t.yaml")])
    assert outcome.rc == 0, outcome.err[-2000:]
    assert spy.calls == ["training_step"] and (tmp_path / "prior" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_training_config_is_refused_before_training(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, pattern = cases(tmp_path)[case]
    if callable(spec):
        spec = spec(tmp_path)
    extra: list[str] = []
    if isinstance(spec, tuple):
        spec, extra = spec
    cfg = tmp_path / "t.yaml"
    cfg.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    before = tree(tmp_path)
    spy = TrainSpy(monkeypatch)
    outcome = run_main(main_train, [str(cfg), *extra])
    refused(outcome, 2, r"sciprior train: error: .*?" + pattern, watched=tmp_path, before=before)
    assert spy.calls == [], "a training step ran"
    assert not (tmp_path / "MARKER").exists(), "something the config or checkpoint names was executed"


def test_a_training_config_never_imports_what_it_names(tmp_path):
    """A class_path naming a module in the working directory (on sys.path for ``python -m``) or the standard
    library, in the file, on the command line or in a checkpoint's hyperparameters: refused, nothing imported."""
    (tmp_path / "evil.py").write_text("open('MARKER', 'w').write('imported')\nclass Thing: pass\n")
    b = base(tmp_path)
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "evil.Thing"}}, ckpt)
    for name, cfg, extra, pattern in [
        ("callback", with_(b, "trainer.callbacks", [{"class_path": "evil.Thing"}]), [],
         r"trainer\.callbacks\[0\]\.class_path: 'evil\.Thing' is not read"),
        ("zen", with_(b, "trainer.logger", {"class_path": "this.Zen"}), [], r"'this\.Zen' is not read"),
        ("model", with_(b, "model", {"class_path": "evil.Thing", "init_args": {}}), [],
         r"model\.class_path: 'evil\.Thing' is not read"),
        ("command-line", b, ["--trainer.callbacks+=evil.Thing"], r"--trainer\.callbacks: 'evil\.Thing' is not read"),
        ("checkpoint", b, ["--ckpt_path", str(ckpt)], r"was saved by 'evil\.Thing'"),
    ]:
        (tmp_path / "t.yaml").write_text(json.dumps(cfg))
        before = tree(tmp_path)
        res = run_subprocess(["train", "t.yaml", *extra], cwd=tmp_path)
        refused(res, 2, pattern, watched=tmp_path, before=before)
        assert not (tmp_path / "MARKER").exists(), name
        assert ZEN not in res.out + res.err, name
