"""Generic operators: real -> complex embedding, per-slice operators."""


import pytest
import torch

from sciprior.physics.generic import BlockMean, RealToComplex
from sciprior.physics.stack import PerSliceOperator


def test_real_to_complex_embeds_with_zero_imaginary_part():
    op = RealToComplex((3, 4))
    x = torch.randn(2, 1, 3, 4)
    y = op(x)
    assert y.shape == (2, 2, 3, 4) and torch.equal(y[:, 0], x[:, 0]) and torch.all(y[:, 1] == 0)
    v = torch.randn(2, 2, 3, 4)
    assert torch.equal(op.adjoint(v), v[:, :1])


def test_per_slice_operator_applies_each_slice_operator():
    ops = [BlockMean(2, (1, 4, 4)), 3.0 * BlockMean(2, (1, 4, 4))]
    op = PerSliceOperator(ops)
    x = torch.randn(2, 1, 2, 4, 4)
    y = op(x)
    assert y.shape == (2, 2, 1, 2, 2)
    assert torch.allclose(y[:, 1], ops[1](x[:, :, 1]))
    with pytest.raises(ValueError, match="disagree"):
        PerSliceOperator([BlockMean(2, (1, 4, 4)), BlockMean(2, (1, 8, 4))])
