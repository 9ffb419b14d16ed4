"""Atmospheric fields (in progress): so far the training reader of gridded fields (``data: {modality:
atmospheric}``); operators, ensembles, the reconstruction adapter and samples come with it."""

from __future__ import annotations

from sciprior.modalities import Modality
from sciprior.modalities.atmospheric.data import FieldReader

MODALITY = Modality(
    name="atmospheric",
    readers={"fields": FieldReader},
    description="gridded atmospheric fields (training reader only so far)",
)

__all__ = ["MODALITY", "FieldReader"]
