"""Hyperspectral imaging (in progress): so far the training reader of spectral cubes (``data: {modality:
hyperspectral}``); operators, noise models, the reconstruction adapter and samples come with it."""

from __future__ import annotations

from sciprior.modalities import Modality
from sciprior.modalities.hyperspectral.data import CubeReader

MODALITY = Modality(
    name="hyperspectral",
    readers={"cubes": CubeReader},
    description="hyperspectral cubes (training reader only so far)",
)

__all__ = ["MODALITY", "CubeReader"]
