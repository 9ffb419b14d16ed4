"""Small examples of the generic operators for the shared adjointness test (imported by the tests only)."""

from __future__ import annotations

import torch

from sciprior.physics.generic import (
    BlockMean,
    Convolution,
    Gradient,
    Identity,
    Mask,
    MatrixOperator,
    RealToComplex,
    SliceDifference,
    Weighted,
    gaussian_kernel,
)
from sciprior.physics.operator import StackedOperator
from sciprior.physics.stack import PerSliceOperator, SliceStackOperator
from sciprior.physics.testing import register_example


def _mask() -> Mask:
    g = torch.Generator().manual_seed(1)
    return Mask((torch.rand((1, 12, 10), generator=g) > 0.4).float(), (1, 12, 10))


def _mask_stack() -> SliceStackOperator:
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand((1, 6, 5), generator=g) > 0.5).float()
    return SliceStackOperator(Mask(mask, (1, 6, 5)), depth=3, chunk_size=2)


def _weighted() -> Weighted:
    g = torch.Generator().manual_seed(3)
    op = BlockMean(2, (1, 8, 6))
    return Weighted(op, torch.rand((1, 1, 4, 3), generator=g) + 0.1, (1, 8, 6))


register_example("identity")(lambda: Identity((2, 6, 5)))
register_example("mask")(_mask)
register_example("block_mean_2d")(lambda: BlockMean(2, (2, 8, 6)))
register_example("block_mean_3d")(lambda: BlockMean((1, 2, 3), (1, 4, 6, 9)))
register_example("convolution_2d")(lambda: Convolution(gaussian_kernel(5, 1.2), (1, 16, 12)))
register_example("convolution_3d")(lambda: Convolution(gaussian_kernel(3, 0.8, ndim=3), (1, 6, 8, 7)))
register_example("matrix")(lambda: MatrixOperator(torch.randn(7, 12, generator=torch.Generator().manual_seed(2)),
                                                  (3, 4)))
register_example("composed_scaled_sum")(
    lambda: 0.5 * (BlockMean(2, (1, 8, 8)) @ Convolution(gaussian_kernel(3, 1.0), (1, 8, 8)))
    + BlockMean(2, (1, 8, 8))
)
register_example("stacked")(lambda: StackedOperator([_mask(), BlockMean(2, (1, 12, 10)), Identity((1, 12, 10)).H]))
register_example("weighted")(_weighted)
register_example("real_to_complex")(lambda: RealToComplex((5, 4)))
register_example("gradient_2d")(lambda: Gradient((2, 7, 6)))
register_example("gradient_3d")(lambda: Gradient((1, 4, 5, 6)))
register_example("slice_difference")(lambda: SliceDifference((1, 6, 5, 4)))
register_example("slice_stack_mask")(_mask_stack)
register_example("slice_stack_tuple")(
    lambda: SliceStackOperator(StackedOperator([Identity((2, 4, 3)), 0.5 * Identity((2, 4, 3))]), depth=3,
                               chunk_size=4))
register_example("per_slice_operator")(
    lambda: PerSliceOperator([BlockMean(2, (1, 8, 6)), 0.5 * BlockMean(2, (1, 8, 6)),
                              BlockMean(2, (1, 8, 6)) @ Convolution(gaussian_kernel(3, 1.0), (1, 8, 6))]))
