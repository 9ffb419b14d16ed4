"""Small examples of the MRI operators for the shared adjointness test (imported by the tests only)."""

from __future__ import annotations

import torch

from sciprior.modalities.mri.coils import birdcage_maps
from sciprior.modalities.mri.masks import column_mask, equispaced_mask, poisson_disc_mask, random_mask
from sciprior.modalities.mri.operator import MultiCoilMRI, SingleCoilMRI
from sciprior.physics.generic import RealToComplex
from sciprior.physics.stack import SliceStackOperator
from sciprior.physics.testing import register_example


def _random_maps(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn((c, h, w), generator=g), torch.randn((c, h, w), generator=g))


register_example("mri_multicoil_column_mask")(
    lambda: MultiCoilMRI(_random_maps(4, 12, 10, 11), random_mask(10, 4, 0.2, seed=3)))
register_example("mri_multicoil_poisson_odd")(
    lambda: MultiCoilMRI(birdcage_maps(3, (11, 9)), poisson_disc_mask((11, 9), 2.0, calib=4, seed=1, tol=0.3)))
register_example("mri_singlecoil_equispaced")(
    lambda: SingleCoilMRI(equispaced_mask(10, 4, 0.2, seed=0), (8, 10)))
register_example("sense_of_real_image")(
    lambda: 0.5 * (MultiCoilMRI(birdcage_maps(3, (8, 6)), column_mask("random", 6, 2, 0.34, seed=1)[0])
                   @ RealToComplex((8, 6))))
register_example("slice_stack_mri")(
    lambda: SliceStackOperator(MultiCoilMRI(birdcage_maps(3, (8, 6)), random_mask(6, 2, 0.34, seed=2)), depth=4))
