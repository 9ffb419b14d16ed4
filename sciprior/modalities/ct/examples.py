"""Small examples of the CT operators for the shared adjointness test (imported by the tests only)."""

from __future__ import annotations

import math

import torch

from sciprior.modalities.ct.geometry import limited_angles, sparse_view_angles, uniform_angles
from sciprior.modalities.ct.projector import FanBeamProjector, ParallelBeamProjector
from sciprior.physics.stack import SliceStackOperator
from sciprior.physics.testing import register_example

register_example("ct_parallel")(lambda: ParallelBeamProjector((16, 16), 0.5, uniform_angles(16)))
register_example("ct_parallel_rect_offset")(
    lambda: ParallelBeamProjector((12, 18), 1.0, uniform_angles(10), det_offset=0.25))
register_example("ct_parallel_limited_angle")(
    lambda: ParallelBeamProjector((15, 15), 1.0, limited_angles(7, 2 * math.pi / 3), det_spacing=1.3))
register_example("ct_fan_equiangular")(
    lambda: FanBeamProjector((16, 16), 0.8, uniform_angles(24, 2 * math.pi)))
register_example("ct_fan_flat")(
    lambda: FanBeamProjector((14, 14), 1.0, uniform_angles(16, 2 * math.pi), detector="flat",
                             source_to_center=40.0, source_to_detector=70.0))
register_example("ct_fan_offset_sparse")(
    lambda: FanBeamProjector((13, 16), 1.0, sparse_view_angles(5, 2 * math.pi), det_offset=0.25))
register_example("slice_stack_ct")(
    lambda: SliceStackOperator(ParallelBeamProjector((8, 8), angles=torch.linspace(0, 3.0, 7)), depth=3,
                               chunk_size=2))
register_example("ct_sparse_view_scaled")(lambda: 0.5 * ParallelBeamProjector((10, 10), 1.0, uniform_angles(6)))
