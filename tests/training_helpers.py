"""Synthetic files and a tiny training config for the training tests (nothing is downloaded).

A uniquely named module (not ``conftest``): test modules import it by name from any directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

#: a UNet small enough that a training step on 4 x 1 x 16 x 16 takes milliseconds
TINY_NET = {
    "channels": [8, 8],
    "attention_levels": [False, False],
    "norm_num_groups": 8,
    "num_head_channels": 8,
}


def write_volumes(
    folder: Path, n: int, shape: tuple[int, int, int] = (16, 16, 4), seed: int = 0
) -> list[Path]:
    """``n`` smooth random NIfTI volumes; every slice differs from every other."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        vol = rng.normal(size=shape).astype(np.float32)
        vol = vol + np.roll(vol, 1, 0) + np.roll(vol, 1, 1)
        p = folder / f"vol{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
        paths.append(p)
    return paths


def tiny_config(tmp: Path, files: list[Path], **overrides) -> dict:
    """A complete ``sciprior train`` config on ``files`` (2 training + 1 validation volume of 4 slices:
    2 batches of 4 per epoch)."""
    cfg = {
        "seed_everything": 0,
        "model": {"network": dict(TINY_NET), "warmup_steps": 2, "lr": 1e-3, "sample_every_n_epochs": 0},
        "data": {
            "modality": "mri",
            "reader": {"name": "slices", "percentiles": [0.0, 100.0]},  # min -> -1, max -> 1
            "paths": [str(f) for f in files[:-1]],
            "val_paths": [str(files[-1])],
            "batch_size": 4,
            "flips": True,
            "rot90": True,
        },
        "trainer": {
            "max_steps": 4,
            "accelerator": "cpu",
            "devices": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "default_root_dir": str(tmp / "run"),
        },
        "checkpoint": {"dirpath": str(tmp / "ckpt")},
        "export": {"dirpath": str(tmp / "prior")},
        "ema": {"decay": 0.5},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
