"""MatrixOperator's cached thin-SVD closed forms against dense linear-algebra solves."""

import pytest
import torch

from sciprior.physics.generic import MatrixOperator


def _dense_prox(a: torch.Tensor, z: torch.Tensor, y: torch.Tensor, g: float) -> torch.Tensor:
    d = a.shape[1]
    lhs = a.T @ a + torch.eye(d, dtype=a.dtype) / g
    return torch.linalg.solve(lhs, (y @ a + z.reshape(z.shape[0], -1) / g).T).T.reshape(z.shape)


@pytest.mark.parametrize("shape", [(3, 80), (80, 12), (5, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prox_pinv_svd_match_dense_solves(shape, dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    op = MatrixOperator(a.to(dtype), (1, shape[1]))
    z = torch.randn(4, 1, shape[1], generator=g, dtype=torch.float64)
    y = torch.randn(4, shape[0], generator=g, dtype=torch.float64)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for gamma in (1e-3, 0.7, 50.0):
        want = _dense_prox(a, z, y, gamma)
        got = op.prox_l2(z.to(dtype), y.to(dtype), gamma).double()
        assert (got - want).abs().max() / want.abs().max() < tol
    # per-row gamma
    gam = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=dtype)
    got = op.prox_l2(z.to(dtype), y.to(dtype), gam).double()
    for i in range(4):
        want = _dense_prox(a, z[i:i + 1], y[i:i + 1], float(gam[i]))
        assert (got[i:i + 1] - want).abs().max() / want.abs().max() < tol
    want = (y @ torch.linalg.pinv(a).T).reshape(4, 1, shape[1])
    assert (op.pinv(y.to(dtype)).double() - want).abs().max() / want.abs().max() < tol
    u, s, vh = op.svd()
    assert torch.allclose(((u * s) @ vh).double(), a, atol=tol * 10)


def test_rank_deficient_matrix_matches_pinv_and_prox():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 10, generator=g, dtype=torch.float64)
    op = MatrixOperator(a)
    assert op.svd()[1].numel() == 2  # zero singular values dropped
    y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    z = torch.randn(3, 10, generator=g, dtype=torch.float64)
    assert torch.allclose(op.pinv(y), y @ torch.linalg.pinv(a).T, atol=1e-10)
    assert torch.allclose(op.prox_l2(z, y, 3.0), _dense_prox(a, z, y, 3.0), atol=1e-10)


def test_svd_cache_follows_the_matrix():
    a = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    op = MatrixOperator(a.clone())
    y = torch.ones(1, 3, dtype=torch.float64)
    assert torch.allclose(op.pinv(y), torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64))
    op.matrix.mul_(2.0)  # in-place edit invalidates the cached factors
    assert torch.allclose(op.pinv(y), torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64))
    op32 = op.to(torch.float32)
    assert op32.pinv(y.float()).dtype == torch.float32
