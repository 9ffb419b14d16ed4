"""The ONE adjointness test: every example operator of the package and of every registered modality, float32,
relative error < 1e-5."""

import pytest

from sciprior import modalities
from sciprior.physics.testing import check_adjoint, load_examples

MODULES = ["sciprior.physics.examples"] + [m.examples for m in map(modalities.get, modalities.names()) if m.examples]
EXAMPLES = load_examples(MODULES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_registered_operator_is_adjoint(name):
    op = EXAMPLES[name]()
    err = check_adjoint(op)
    assert err < 1e-5, f"{name}: <Ax, y> != <x, A^H y> (relative error {err:.2e})"


def test_check_adjoint_catches_a_wrong_adjoint():
    from sciprior.physics.generic import BlockMean

    class WrongAdjoint(BlockMean):
        def adjoint(self, y):  # missing the 1/block factor
            return super().adjoint(y) * self.block

    assert check_adjoint(WrongAdjoint(2, (1, 8, 8))) > 0.1


def test_every_modality_contributes_examples():
    assert {"identity", "mask", "block_mean_2d", "convolution_2d", "stacked", "gradient_2d"} <= set(EXAMPLES)
    assert any(n.startswith("ct_") for n in EXAMPLES) and any(n.startswith("mri_") for n in EXAMPLES)
    assert "sciprior.modalities.ct.examples" in MODULES and "sciprior.modalities.mri.examples" in MODULES
