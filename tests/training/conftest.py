"""Fixtures of the training tests (the helpers live in ``training_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import write_volumes


@pytest.fixture
def volumes(tmp_path: Path) -> list[Path]:
    return write_volumes(tmp_path / "data", 3)
