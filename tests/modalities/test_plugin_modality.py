"""A modality from outside sciprior: the toy microscope of docs/examples/toy_microscope (a blur operator, Gaussian
noise, PNG/NPY files), installed as a distribution with a ``sciprior.modalities`` entry point, reconstructs with
``sciprior reconstruct`` and trains with ``sciprior train``; no file inside sciprior/ names it."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sciprior import modalities
from sciprior.physics.testing import check_adjoint, load_examples
from sciprior.priors.checkpoint import read_config
from sciprior.training.cli import main_train

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "toy_microscope"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example package installed the way pip leaves it: the package plus its .dist-info with entry_points.txt."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(EXAMPLE / "toy_microscope", site / "toy_microscope")
    info = site / "toy_microscope-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-microscope\nVersion: 0.1.0\n")
    declared = re.search(r'\[project\.entry-points\."sciprior\.modalities"\]\s*\n(\w+) = "([\w.:]+)"',
                         (EXAMPLE / "pyproject.toml").read_text())
    assert declared, "the example's pyproject.toml declares no sciprior.modalities entry point"
    (info / "entry_points.txt").write_text(f"[sciprior.modalities]\n{declared.group(1)} = {declared.group(2)}\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    modalities.get.cache_clear()
    yield site
    sys.path.remove(str(site))
    modalities.get.cache_clear()
    for name in [m for m in sys.modules if m.startswith("toy_microscope")]:
        del sys.modules[name]


def test_nothing_inside_sciprior_names_the_toy_modality():
    hits = [str(p) for p in (ROOT / "sciprior").rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".toml")
            and re.search(r"\btoy\b|toy_microscope", p.read_text(errors="ignore"))]
    assert not hits


def test_the_entry_point_registers_the_modality(site):
    assert "toy" in modalities.names()
    toy = modalities.get("toy")
    assert toy.adapter.__name__ == "ToyMicroscope" and set(toy.readers) == {"images"}
    assert "toy_cell" in modalities.sample_table()
    examples = load_examples([toy.examples])
    assert check_adjoint(examples["toy_psf_blur"]()) < 1e-5


def test_train_and_reconstruct_a_plugin_modality(site, tmp_path):
    train = {
        "seed_everything": 0,
        "model": {"network": {"channels": [8, 8], "attention_levels": [False, False], "norm_num_groups": 8,
                              "num_head_channels": 8}, "warmup_steps": 1, "sample_every_n_epochs": 0},
        "data": {"modality": "toy", "reader": {"name": "images"}, "paths": "sample:toy_cell", "val_fraction": 0.0,
                 "patch_size": [32, 32], "repeats": 8, "batch_size": 4},
        "trainer": {"max_steps": 3, "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "default_root_dir": str(tmp_path / "run")},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
        "export": {"dirpath": str(tmp_path / "prior")},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    main_train([str(tmp_path / "train.yaml")])
    data = read_config(tmp_path / "prior")["metadata"]["data"]
    assert data["modality"] == "toy" and data["reader"] == {"name": "images", "size": None}
    assert data["patch_size"] == [32, 32]

    cfg = {"modality": {"name": "toy", "psf_sigma": 1.5, "sigma": 0.05, "image_size": 64}, "input": "sample:toy_cell",
           "prior": {"checkpoint": str(tmp_path / "prior")}, "solver": {"name": "dds", "steps": 4},
           "device": "cpu", "progress": False, "output_dir": str(tmp_path / "out")}
    (tmp_path / "recon.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "sciprior.cli", "reconstruct", str(tmp_path / "recon.yaml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".sciprior-run.json", "reconstruction.npy", "reconstruction.png",
                                                     "report.json", "report.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["modality"]["modality"] == "toy" and report["prior"]["wrap"] == "patch"
    assert report["prior"]["trained_domain"]["modality"] == "toy"
    assert report["metrics"]["reconstruction"]["psnr"] > 10 and report["baseline"]["name"] == "measured (blurred)"
    bad = subprocess.run([sys.executable, "-m", "sciprior.cli", "reconstruct", str(tmp_path / "recon.yaml"),
                          "--modality.psf_sigmaa", "2"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "modality.psf_sigmaa: unknown setting for the toy modality" in bad.stderr
