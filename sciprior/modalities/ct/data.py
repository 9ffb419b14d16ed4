"""CT training data: 2D slices in HU (NIfTI, DICOM files or series) mapped by the HU window onto [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sciprior.io.grid import VolumeGrid
from sciprior.modalities.ct.io import read_ct_grid
from sciprior.modalities.ct.units import CTNormalization
from sciprior.modalities.slices import SliceReader


@dataclass
class CTSlices(SliceReader):
    """Axial (``slice_axis``) CT slices in the prior's domain: ``window = (low, high)`` HU onto [-1, 1] by
    :class:`~sciprior.modalities.ct.units.CTNormalization` (the map of the CT adapter), clipped to [-1, 1] when
    ``clip``. DICOM is read in HU with padding and values below -1024 set to air
    (:func:`~sciprior.modalities.ct.io.read_ct_dicom`). Keep the window wide (the default [-1024, 3071] is the
    shipped prior's) so that the domain stays linear in attenuation.

    Args:
        window: (low, high) HU mapped to [-1, 1].
        clip: clip the normalised values to [-1, 1].
        slice_axis, pixel_spacing: see :class:`~sciprior.modalities.slices.SliceReader`.
    """

    window: tuple[float, float] = (-1024.0, 3071.0)
    clip: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = tuple(float(v) for v in self.window)
        if len(self.window) != 2 or not self.window[1] > self.window[0]:
            raise ValueError(f"window must be (low, high) HU with high > low, got {list(self.window)}")

    def grid(self, path: str) -> VolumeGrid:
        return self.nifti_or_dicom(path, read_ct_grid)

    def normalise(self, data: np.ndarray) -> np.ndarray:
        x = CTNormalization(*self.window).hu_to_prior(data)
        return np.clip(x, -1.0, 1.0) if self.clip else x

    @classmethod
    def from_legacy(cls, reader: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of an earlier version's ``SliceReader(intensity="hu_window", ...)`` (checkpoint metadata)."""
        if reader != "SliceReader" or args.get("intensity") != "hu_window" or args.get("axcodes", "LPS") != "LPS":
            return None
        return {"window": list(args.get("window", (-1000.0, 1000.0))), "clip": bool(args.get("clip", False)),
                "slice_axis": int(args.get("slice_axis", 2)), "pixel_spacing": args.get("pixel_spacing")}


__all__ = ["CTSlices"]
