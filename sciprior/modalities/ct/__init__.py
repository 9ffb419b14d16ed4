"""CT modality: 2D parallel/fan-beam projectors (Joseph, matched adjoint), FBP, physics, phantoms.

- :mod:`~sciprior.modalities.ct.geometry`: conventions, angle sets (full, sparse-view, limited-angle).
- :mod:`~sciprior.modalities.ct.projector`: :class:`ParallelBeamProjector`, :class:`FanBeamProjector`
  (image ``(B, 1, H, W)`` in any units on ``pixel_size`` mm pixels -> line integrals in units x mm).
- :mod:`~sciprior.modalities.ct.fbp`: filtered back-projection (ram-lak, shepp-logan, cosine, hamming,
  hann), parallel and weighted fan-beam FBP.
- :mod:`~sciprior.modalities.ct.physics`: HU <-> mu (mu_water 0.0192 /mm), the prior's HU window
  normalisation, low-dose counts and post-log.
- :mod:`~sciprior.modalities.ct.phantom`: ellipse phantoms and their exact line integrals.
"""

from __future__ import annotations

import math

from sciprior.modalities.base import register_operator
from sciprior.modalities.ct.fbp import FILTERS, fbp
from sciprior.modalities.ct.geometry import limited_angles, sparse_view_angles, uniform_angles
from sciprior.modalities.ct.phantom import (
    Ellipse,
    ellipse_line_integrals,
    ellipse_ray_integrals,
    rasterize,
    shepp_logan,
)
from sciprior.modalities.ct.physics import (
    MU_WATER,
    CTNormalization,
    hu_to_mu,
    low_dose_sinogram,
    mu_to_hu,
    post_log,
    simulate_counts,
)
from sciprior.modalities.ct.projector import CTProjector, FanBeamProjector, ParallelBeamProjector

__all__ = [
    "FILTERS", "MU_WATER", "CTNormalization", "CTProjector", "Ellipse", "FanBeamProjector",
    "ParallelBeamProjector", "ellipse_line_integrals", "ellipse_ray_integrals", "fbp", "hu_to_mu",
    "limited_angles", "low_dose_sinogram", "mu_to_hu", "post_log", "rasterize", "shepp_logan",
    "simulate_counts", "sparse_view_angles", "uniform_angles",
]

# Small examples for the shared adjointness test (tests/modalities/test_adjoint.py).
register_operator("ct_parallel")(lambda: ParallelBeamProjector((16, 16), 0.5, uniform_angles(16)))
register_operator("ct_parallel_rect_offset")(
    lambda: ParallelBeamProjector((12, 18), 1.0, uniform_angles(10), det_offset=0.25))
register_operator("ct_parallel_limited_angle")(
    lambda: ParallelBeamProjector((15, 15), 1.0, limited_angles(7, 2 * math.pi / 3), det_spacing=1.3))
register_operator("ct_fan_equiangular")(
    lambda: FanBeamProjector((16, 16), 0.8, uniform_angles(24, 2 * math.pi)))
register_operator("ct_fan_flat")(
    lambda: FanBeamProjector((14, 14), 1.0, uniform_angles(16, 2 * math.pi), detector="flat",
                             source_to_center=40.0, source_to_detector=70.0))
register_operator("ct_fan_offset_sparse")(
    lambda: FanBeamProjector((13, 16), 1.0, sparse_view_angles(5, 2 * math.pi), det_offset=0.25))
