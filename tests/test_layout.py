"""The package layout: the shared layers name no modality, and the import layers hold (import-linter)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sciprior import modalities

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sciprior"
#: what is not a modality: the shared layers and the commands
SHARED = ["app", "datasets", "io", "physics", "priors", "solvers", "training", "linalg.py", "metrics.py", "cli.py",
          "modalities/__init__.py", "modalities/adapter.py", "modalities/slices.py"]


def _files(entries: list[str]) -> list[Path]:
    out: list[Path] = []
    for e in entries:
        p = PKG / e
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def test_shared_layers_name_no_modality():
    words = set(modalities.names())
    for name in modalities.names():
        m = modalities.get(name)
        words |= set(m.samples) | {c.__name__ for c in m.readers.values()}
        if m.adapter is not None:
            words.add(m.adapter.__name__)
    words |= {"fastmri", "FastMRI"}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words))) + r")\b")
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in _files(SHARED)
            for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "shared layers name a modality:\n" + "\n".join(hits)


def test_every_folder_under_modalities_is_a_registered_modality():
    folders = sorted(p.name for p in (PKG / "modalities").iterdir()
                     if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_"))
    assert set(folders) <= set(modalities.names())
    for name in folders:
        assert modalities.get(name).name == name


def test_import_layers_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
