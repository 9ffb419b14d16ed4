"""The shipped demo training configs parse, build, and keep their evaluation data out of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sciprior.modalities.ct.samples import sample_ct_path
from sciprior.priors.networks import count_parameters
from sciprior.training.cli import make_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _build(name: str):
    cli = make_cli(["--config", str(CONFIGS / name / "train.yaml")], run=False)
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


def test_ct_demo_config_holds_out_the_head_slice():
    model, dm = _build("ct")
    head = sample_ct_path("head")
    assert [Path(f) for f in dm.val_files] == [head]
    assert str(head) not in {it["path"] for it in dm.train_items}
    assert dm.example_shape == (1, 64, 64)
    assert 1_000_000 <= count_parameters(model.denoiser.net) <= 2_500_000


def test_mri_demo_config_holds_out_a_slab():
    pytest.importorskip("nilearn")
    model, dm = _build("mri")
    train = {it["index"] for it in dm.train_items}
    val = {it["index"] for it in dm.val_items}
    assert val == set(range(74, 91)) and not train & set(range(70, 95))
    assert 82 in val  # z = 10 mm, the sample_mri default evaluation slice
    assert dm.example_shape == (1, 64, 64)
    # shipped in the repository: at most ~10 MB, stored as float16 (2 bytes per parameter)
    assert 1_000_000 <= count_parameters(model.denoiser.net) <= 5_000_000
    assert yaml.safe_load((CONFIGS / "mri" / "train.yaml").read_text())["export"]["storage_dtype"] == "float16"
