"""CT: 2D parallel/fan-beam projectors (Joseph, matched adjoint), FBP, HU units, DICOM in HU, the adapter.

- :mod:`~sciprior.modalities.ct.geometry`: conventions, angle sets (full, sparse-view, limited-angle).
- :mod:`~sciprior.modalities.ct.projector`: :class:`ParallelBeamProjector`, :class:`FanBeamProjector`
  (image ``(B, 1, H, W)`` in any units on ``pixel_size`` mm pixels -> line integrals in units x mm).
- :mod:`~sciprior.modalities.ct.fbp`: filtered back-projection (ram-lak, shepp-logan, cosine, hamming,
  hann), parallel and weighted fan-beam FBP.
- :mod:`~sciprior.modalities.ct.units`: HU <-> mu (mu_water 0.0192 /mm), the prior's HU window
  (:class:`CTNormalization`); :mod:`~sciprior.modalities.ct.simulate`: counts, post-log, noisy scans.
- :mod:`~sciprior.modalities.ct.io`: CT DICOM in HU; :mod:`~sciprior.modalities.ct.samples`: ``sample:head_ct``.
- :mod:`~sciprior.modalities.ct.adapter`: :class:`CTAdapter` (``modality: {name: ct}``);
  :mod:`~sciprior.modalities.ct.data`: the training reader :class:`CTSlices` (``data: {modality: ct}``).
- :mod:`~sciprior.modalities.ct.phantom`: ellipse phantoms and their exact line integrals.
- ``prior/``: the shipped prior (``builtin:ct``), trained by ``sciprior train configs/ct/train.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from sciprior.modalities import Modality
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.modalities.ct.data import CTSlices
from sciprior.modalities.ct.fbp import FILTERS, fbp
from sciprior.modalities.ct.geometry import limited_angles, sparse_view_angles, uniform_angles
from sciprior.modalities.ct.phantom import (
    Ellipse,
    ellipse_line_integrals,
    ellipse_ray_integrals,
    rasterize,
    shepp_logan,
)
from sciprior.modalities.ct.projector import CTProjector, FanBeamProjector, ParallelBeamProjector
from sciprior.modalities.ct.samples import SAMPLES, load_sample_ct
from sciprior.modalities.ct.simulate import low_dose_sinogram, post_log, simulate_counts, simulate_scan
from sciprior.modalities.ct.units import MU_WATER, CTNormalization, hu_to_mu, mu_to_hu

MODALITY = Modality(
    name="ct",
    adapter=CTAdapter,
    readers={"slices": CTSlices},
    samples=SAMPLES,
    prior=Path(__file__).parent / "prior",
    examples="sciprior.modalities.ct.examples",
    description="2D parallel/fan-beam CT (sparse-view, limited-angle, low-dose) of HU images",
    legacy_class_paths=("CTAdapter", "sciprior.modalities.ct_adapter.CTAdapter"),
)

__all__ = [
    "FILTERS", "MODALITY", "MU_WATER", "CTAdapter", "CTNormalization", "CTProjector", "CTSlices", "Ellipse",
    "FanBeamProjector", "ParallelBeamProjector", "ellipse_line_integrals", "ellipse_ray_integrals", "fbp", "hu_to_mu",
    "limited_angles", "load_sample_ct", "low_dose_sinogram", "mu_to_hu", "post_log", "rasterize", "shepp_logan",
    "simulate_counts", "simulate_scan", "sparse_view_angles", "uniform_angles",
]
