"""Classical baselines: CGLS against dense least squares, TV-PDHG against ROF optimality, finite
differences, power iteration, input validation."""

from __future__ import annotations

import math

import pytest
import torch

from sciprior.linalg import operator_norm
from sciprior.physics.generic import Gradient, Identity, MatrixOperator, divergence, gradient, total_variation
from sciprior.physics.noise import Gaussian, Poisson, StackedNoise
from sciprior.physics.operator import LinearOperator, Operator, StackedOperator
from sciprior.physics.problem import Problem
from sciprior.physics.testing import check_adjoint
from sciprior.solvers.classical import adjoint_recon, cgls, tv_pdhg

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_problem(m: int = 20, d: int = 8, batch: int = 3, noise=None, seed: int = 0):
    g = _gen(seed)
    a = torch.randn(m, d, generator=g, dtype=F64)
    x = torch.rand(batch, 1, d, generator=g, dtype=F64) + 0.5
    return a, Problem.simulate(MatrixOperator(a, (1, d)), x, noise or Gaussian(0.1), generator=g)


def _piecewise_constant(n: int = 48) -> torch.Tensor:
    img = torch.zeros(1, 1, n, n, dtype=F64)
    img[..., 6:30, 10:40] = 1.0
    img[..., 22:42, 4:22] = 0.4
    img[..., 34:44, 30:44] = 0.7
    return img


class _Fourier(LinearOperator):
    """Unitary 2D FFT of a real image: complex measurements, exact adjoint Re(ifft)."""

    def __init__(self, in_shape):
        super().__init__(in_shape, in_shape)

    def forward(self, x):
        return torch.fft.fft2(x, norm="ortho")

    def adjoint(self, y):
        return torch.fft.ifft2(y, norm="ortho").real


# ---------------------------------------------------------------------------------------------
# adjoint_recon
# ---------------------------------------------------------------------------------------------


def test_adjoint_recon_is_plain_adjoint():
    a, pb = _dense_problem()
    r = adjoint_recon(pb)
    assert r.samples.shape == (3, 1, 1, 8) and r.std is None and r.nfe == 0
    torch.testing.assert_close(r.mean.reshape(3, -1), pb.y @ a, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# CGLS
# ---------------------------------------------------------------------------------------------


def test_cgls_matches_lstsq():
    a, pb = _dense_problem()
    r = cgls(pb, iters=50, tol=1e-12)
    ls = torch.linalg.lstsq(a, pb.y.T).solution.T
    assert r.mean.dtype == F64 and r.samples.shape == (3, 1, 1, 8)
    torch.testing.assert_close(r.mean.reshape(3, -1), ls, rtol=1e-10, atol=1e-10)
    assert int(r.info["iterations"].max()) <= 12  # d = 8 unknowns: CG terminates in ~d steps
    assert float(r.info["residual"].max()) < 1e-12


def test_cgls_uses_poisson_wls_weights():
    g = _gen(3)
    a = torch.rand(30, 6, generator=g, dtype=F64)
    x = torch.rand(2, 1, 6, generator=g, dtype=F64) + 0.5
    pb = Problem.simulate(MatrixOperator(a, (1, 6)), x, Poisson(gain=20.0), generator=g)
    y_eff, w = pb.noise.wls(pb.y)
    assert not torch.allclose(w, w[:, :1].expand_as(w))  # genuinely non-uniform weights
    r = cgls(pb, iters=60, tol=1e-13)
    for b in range(2):
        sw = w[b].sqrt()
        ref = torch.linalg.lstsq(sw[:, None] * a, sw * y_eff[b]).solution
        torch.testing.assert_close(r.mean[b].reshape(-1), ref, rtol=1e-9, atol=1e-9)
    # ...and they matter: unweighted least squares is a different answer
    plain = torch.linalg.lstsq(a, pb.y[0]).solution
    assert (r.mean[0].reshape(-1) - plain).abs().max() > 1e-4


def test_cgls_damping_matches_ridge_closed_form():
    sigma, damping = 0.1, 30.0
    a, pb = _dense_problem(m=6, d=10, noise=Gaussian(sigma))  # underdetermined: damping makes it unique
    r = cgls(pb, iters=100, damping=damping, tol=1e-13)
    w = 1.0 / sigma**2
    lhs = w * a.T @ a + damping * torch.eye(10, dtype=F64)
    ridge = torch.linalg.solve(lhs, (w * pb.y @ a).T).T
    torch.testing.assert_close(r.mean.reshape(3, -1), ridge, rtol=1e-10, atol=1e-10)
    undamped = cgls(pb, iters=100, tol=1e-13).mean.reshape(3, -1)
    assert (undamped - ridge).abs().max() > 1e-3


def test_cgls_stacked_complex_and_x0():
    # two noisy copies (different sigma) of a unitary-Fourier measurement of one image
    g = _gen(4)
    x = torch.rand(2, 1, 6, 5, generator=g, dtype=F64)
    f = _Fourier((1, 6, 5))
    op = StackedOperator([f, Identity((1, 6, 5))])
    pb = Problem.simulate(op, x, StackedNoise([Gaussian(0.05), Gaussian(0.2)]), generator=g)
    w1, w2 = 1 / 0.05**2, 1 / 0.2**2
    expect = (w1 * f.adjoint(pb.y[0]) + w2 * pb.y[1]) / (w1 + w2)
    r = cgls(pb, iters=30, tol=1e-13)
    torch.testing.assert_close(r.mean, expect, rtol=1e-10, atol=1e-10)
    # a warm start at the solution converges immediately
    r2 = cgls(pb, iters=30, x0=expect, tol=1e-8)
    assert int(r2.info["iterations"].max()) == 0
    torch.testing.assert_close(r2.mean, expect)


def test_cgls_callback_and_items_are_independent():
    a, pb = _dense_problem()
    calls = []
    full = cgls(pb, iters=5, tol=0.0, callback=lambda i, x, x0, s: calls.append((i, x.shape, s)))
    assert [c[0] for c in calls] == list(range(5)) and calls[0][1] == (3, 1, 8) and calls[0][2] == 0.0
    one = cgls(Problem(pb.operator, pb.y[1:2], pb.noise, pb.image_shape), iters=5, tol=0.0)
    torch.testing.assert_close(full.mean[1:2], one.mean, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Finite differences, operator norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 7, 5), (1, 4, 6, 5), (3, 1, 6)])
def test_gradient_divergence_adjoint(shape):
    op = Gradient(shape)
    assert check_adjoint(op, dtype=F64) < 1e-13
    x = torch.randn(2, *shape, generator=_gen(1), dtype=F64)
    v = torch.randn(2, len(shape) - 1, *shape, generator=_gen(2), dtype=F64)
    lhs = (gradient(x) * v).sum()
    rhs = -(x * divergence(v)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs() + rhs.abs())


def test_gradient_is_forward_difference_with_neumann_boundary():
    x = torch.arange(12, dtype=F64).reshape(1, 1, 3, 4) ** 2
    gx = gradient(x)
    assert gx.shape == (1, 2, 1, 3, 4)
    torch.testing.assert_close(gx[0, 0, 0, :2], x[0, 0, 1:] - x[0, 0, :-1])
    torch.testing.assert_close(gx[0, 1, 0, :, :3], x[0, 0, :, 1:] - x[0, 0, :, :-1])
    assert torch.all(gx[0, 0, 0, -1] == 0) and torch.all(gx[0, 1, 0, :, -1] == 0)
    assert torch.all(gradient(torch.ones(2, 3, 4, 5, 6, dtype=F64)) == 0)


def test_operator_norm_matches_largest_singular_value():
    a = torch.randn(15, 9, generator=_gen(5), dtype=F64)
    est = operator_norm(MatrixOperator(a, (1, 9)), (1, 1, 9), iters=500, tol=1e-14, dtype=F64)
    assert est.shape == (1,)
    smax = torch.linalg.svdvals(a)[0]
    assert abs(float(est) - float(smax)) < 1e-8 * float(smax)
    # the norm of the 2D gradient approaches sqrt(8) from below
    gnorm = float(operator_norm(Gradient((1, 16, 16)), (1, 1, 16, 16), iters=200, dtype=F64))
    assert 0.97 * math.sqrt(8) < gnorm <= math.sqrt(8)


# ---------------------------------------------------------------------------------------------
# TV by PDHG
# ---------------------------------------------------------------------------------------------


def test_tv_lam_to_zero_converges_to_least_squares():
    g = _gen(1)
    d = 16
    a = torch.eye(d, dtype=F64) + 0.3 * torch.randn(d, d, generator=g, dtype=F64) / d**0.5
    x = torch.rand(2, 1, 4, 4, generator=g, dtype=F64)
    pb = Problem.simulate(MatrixOperator(a, (1, 4, 4)), x, Gaussian(0.05), generator=g)
    ls = torch.linalg.solve(a, pb.y.T).T.reshape(2, 1, 4, 4)
    errs = [float((tv_pdhg(pb, lam=lam, iters=300).mean - ls).norm() / ls.norm())
            for lam in (1e-2, 1e-3, 1e-4)]
    assert errs[0] > 5 * errs[1] > 25 * errs[2]  # bias shrinks in proportion to lam
    assert errs[2] < 1e-3
    assert float((tv_pdhg(pb, lam=0.0, iters=300).mean - ls).norm() / ls.norm()) < 1e-10


def test_tv_denoising_piecewise_constant():
    clean = _piecewise_constant()
    pb = Problem.simulate(Identity((1, 48, 48)), clean, Gaussian(0.1), generator=_gen(7))
    lam = 0.1
    r = tv_pdhg(pb, lam=lam, iters=300)
    x = r.mean

    def psnr(u):
        return 10 * math.log10(1.0 / float(((u - clean) ** 2).mean()))

    assert psnr(x) > psnr(pb.y) + 8.0  # noisy input ~20 dB; measured gain ~9.6 dB
    # nearly piecewise constant: total variation back to about that of the clean image (noisy: ~3.3x),
    # and most of it sits on the true edges
    tv_clean, tv_noisy, tv_x = (float(total_variation(u)) for u in (clean, pb.y, x))
    assert tv_noisy > 3 * tv_clean and tv_x < 1.2 * tv_clean
    edges = (gradient(clean).abs().sum(dim=1) > 0).to(F64)
    near = torch.nn.functional.max_pool2d(edges[:, 0], 3, stride=1, padding=1)[:, None]
    mag = gradient(x).square().sum(dim=1).sqrt()
    assert float((mag * near).sum() / mag.sum()) > 0.9
    # objective: decreasing to the end, and a small ROF duality gap certified by the dual variable v
    obj = r.info["objective"][0]
    assert obj[-1] < obj[0] / 5 and bool((obj[150:].diff() <= 1e-9 * obj[-1]).all())
    _, v = r.info["dual"]
    assert float(v.square().sum(dim=1).sqrt().max()) <= lam * (1 + 1e-12)
    dv = divergence(v)
    primal = 0.5 * ((x - pb.y) ** 2).sum() + lam * total_variation(x).sum()
    dual = -0.5 * (dv**2).sum() - (pb.y * dv).sum()  # ROF dual, valid for any |v| <= lam
    gap = float(primal - dual)
    assert 0 <= gap < 1e-3 * float(primal)
    assert float(r.info["primal_residual"][0]) < 1e-2 and float(r.info["dual_residual"][0]) < 5e-2


def test_tv_3d_nonneg_anisotropic_complex():
    g = _gen(8)
    clean = torch.zeros(2, 1, 6, 8, 8, dtype=F64)
    clean[:, :, 1:4, 2:6, 3:7] = 1.0
    op = _Fourier((1, 6, 8, 8))  # fft2 over the last two axes: complex data of a 3D volume
    pb = Problem.simulate(op, clean, Gaussian(0.2), generator=g)
    r = tv_pdhg(pb, lam=0.1, iters=150, nonneg=True, isotropic=False)
    assert r.mean.shape == (2, 1, 6, 8, 8) and r.mean.dtype == F64
    assert float(r.mean.min()) >= 0
    naive = adjoint_recon(pb).mean  # = least squares for a unitary operator
    assert float(((r.mean - clean) ** 2).mean()) < 0.3 * float(((naive - clean) ** 2).mean())
    obj = r.info["objective"]
    assert bool((obj[:, -1] < obj[:, 10]).all())


def test_tv_relative_weights_make_lam_independent_of_sigma_scaling():
    # Same data, noise models that differ only in sigma: relative weights give the same solution.
    clean = _piecewise_constant(16)
    pb = Problem.simulate(Identity((1, 16, 16)), clean, Gaussian(0.1), generator=_gen(9))
    pb2 = Problem(pb.operator, pb.y, Gaussian(0.5), pb.image_shape)
    r1, r2 = tv_pdhg(pb, lam=0.1, iters=50), tv_pdhg(pb2, lam=0.1, iters=50)
    torch.testing.assert_close(r1.mean, r2.mean, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


class _Square(Operator):
    def forward(self, x):
        return x**2


def test_bad_inputs_raise_naming_the_argument():
    _, pb = _dense_problem()
    img = Problem.simulate(Identity((1, 8, 8)), torch.rand(1, 1, 8, 8, dtype=F64), Gaussian(0.1),
                           generator=_gen(0))
    with pytest.raises(ValueError, match=r"tv_pdhg: lam=-0\.1; expected a finite number >= 0"):
        tv_pdhg(img, lam=-0.1)
    with pytest.raises(ValueError, match="tv_pdhg: iters=0; expected an int >= 1"):
        tv_pdhg(img, iters=0)
    with pytest.raises(ValueError, match="step_ratio"):
        tv_pdhg(img, step_ratio=0.0)
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        tv_pdhg(pb)  # (1, 8): no spatial image
    with pytest.raises(ValueError, match=r"x0 must have shape \(1, 1, 8, 8\)"):
        tv_pdhg(img, x0=torch.zeros(1, 8, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"x0 must have shape \(3, 1, 8\)"):
        cgls(pb, x0=torch.zeros(3, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"cgls: damping=-1\.0; expected a finite number >= 0"):
        cgls(pb, damping=-1.0)
    with pytest.raises(ValueError, match="cgls: iters=-3; expected an int >= 1"):
        cgls(pb, iters=-3)
    nonlinear = Problem(_Square((1, 8)), pb.y[:, :8].clone(), Gaussian(0.1), (1, 8))
    for fn in (cgls, tv_pdhg, adjoint_recon):
        with pytest.raises(TypeError, match="needs a LinearOperator"):
            fn(nonlinear)
    with pytest.raises(ValueError, match="operator_norm: shape"):
        operator_norm(Gradient((1, 4, 4)), (1, 4, 4))
    with pytest.raises(ValueError, match="divergence: expected"):
        divergence(torch.zeros(1, 3, 1, 4, 4))
