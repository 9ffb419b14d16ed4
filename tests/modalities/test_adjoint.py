"""The ONE adjointness test: every registered linear operator, float32, relative error < 1e-5."""

import pytest

import sciprior.modalities  # noqa: F401  (imports every modality, which registers its operators)
from sciprior.modalities.base import OPERATOR_REGISTRY, check_adjoint


@pytest.mark.parametrize("name", sorted(OPERATOR_REGISTRY))
def test_registered_operator_is_adjoint(name):
    op = OPERATOR_REGISTRY[name]()
    err = check_adjoint(op)
    assert err < 1e-5, f"{name}: <Ax, y> != <x, A^H y> (relative error {err:.2e})"


def test_check_adjoint_catches_a_wrong_adjoint():
    from sciprior.modalities.base import BlockMean

    class WrongAdjoint(BlockMean):
        def adjoint(self, y):  # missing the 1/block factor
            return super().adjoint(y) * self.block

    assert check_adjoint(WrongAdjoint(2, (1, 8, 8))) > 0.1


def test_registry_is_populated():
    assert {"identity", "mask", "block_mean_2d", "convolution_2d", "stacked"} <= set(OPERATOR_REGISTRY)
