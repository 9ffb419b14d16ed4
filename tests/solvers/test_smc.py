"""MCGdiff SMC (``sciprior.solvers.smc``) against exact posteriors.

Statistics. Each problem item is replicated ``R`` times with independent seeds; every replicate is a full
SMC run with ``N`` particles. ``C_EFF`` bounds the SMC inefficiency: the variance of a weighted-cloud
estimate is at most ``C_EFF`` times that of ``N`` independent exact draws (the test checks the bound from
the replicates' spread: measured 4.8 at the seeds used, 3.4-6.7 over 4 truth draws x 3 sets of SMC seeds,
pooled over the two items of the Gaussian fixture (5.9-8.8 over 6 seed sets with an earlier truth draw); the
broken variant below scores about 1600). Pooled over ``R`` replicates,
a whitened mean coordinate then has standard error ``sqrt(C_EFF / (N R))`` and a whitened covariance entry
``sqrt((1 + delta_ij) C_EFF / (N R))``; tolerances are ``Z`` of those (``Z = 4.5`` covers the few dozen
coordinates checked at once). The SMC targets the posterior of the *discretised* prior (the
ancestral sampler's law on the given sampling_sigmas): for a Gaussian prior that posterior is computed in
closed form, and the distance between it and the true posterior (a deterministic bias, below the
Monte Carlo tolerance at the step counts used) is added to the tolerance against the true posterior.

A broken variant (the log-likelihood terms of the weights with flipped sign) must fail the same checks.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from gaussian_problems import make_gaussian_problem, make_gmm_problem
from torch import Tensor

import sciprior.solvers.smc as smc_module
from sciprior.physics.generic import Identity, Mask, MatrixOperator
from sciprior.physics.noise import Gaussian, Poisson
from sciprior.physics.operator import LinearOperator, Operator
from sciprior.physics.problem import Problem
from sciprior.priors.analytic import GaussianPrior
from sciprior.priors.base import karras_sigmas
from sciprior.solvers.smc import smc, svd_system

C_EFF = 12.0  # above every measured value (header), 1.4 x the largest
Z = 4.5
R = 12  # independent SMC runs per problem item
N = 384  # particles per run


def _replicate(problem: Problem, r: int) -> Problem:
    return Problem(problem.operator, problem.y.repeat_interleave(r, 0), problem.noise, problem.image_shape)


def _weighted_moments(particles: Tensor, logw: Tensor) -> tuple[Tensor, Tensor]:
    """Per run weighted mean (..., d) and covariance (..., d, d) of particles (..., N, d)."""
    w = logw.exp()
    mean = (w[..., None] * particles).sum(-2)
    c = particles - mean[..., None, :]
    cov = torch.einsum("...n,...ni,...nj->...ij", w, c, c)
    return mean, cov


def _whiten(cov: Tensor) -> Tensor:
    return torch.linalg.inv(torch.linalg.cholesky(cov))


@cache
def _run(kind: str, flip: bool, steps: int):
    """SMC on fixture ``kind`` replicated R times: particles (B, R, N, d), log-weights (B, R, N)."""
    prior, problem, post = (make_gaussian_problem if kind == "gauss" else make_gmm_problem)(batch=2)
    rep = _replicate(problem, R)
    orig = smc_module._log_normal
    if flip:
        smc_module._log_normal = lambda x, m, v: -orig(x, m, v)
    try:
        res = smc(prior, rep, steps=steps, num_particles=N, num_samples=8, return_particles=True,
                  seeds=list(range(problem.batch_size * R)), progress=False)
    finally:
        smc_module._log_normal = orig
    b = problem.batch_size
    parts = res.info["particles"].reshape(b, R, N, -1)
    logw = res.info["log_weights"].reshape(b, R, N)
    return prior, problem, post, parts, logw, res


def _model_posterior(prior: GaussianPrior, problem: Problem, steps: int) -> tuple[Tensor, Tensor]:
    """Exact posterior of the discretised Gaussian prior: the ancestral chain is linear-Gaussian."""
    sig = karras_sigmas(steps, prior.sigma_min, prior.sigma_max)
    d = prior.mean.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    m, c = torch.zeros(d, dtype=torch.float64), float(sig[0]) ** 2 * eye
    for i in range(steps):
        s, r = float(sig[i]), float(sig[i + 1])
        p = prior.cov @ torch.linalg.inv(prior.cov + s * s * eye)  # D(x, s) = p x + (I - p) mean
        ratio = r * r / (s * s)
        step = ratio * eye + (1 - ratio) * p
        m = step @ m + (1 - ratio) * (eye - p) @ prior.mean
        c = step @ c @ step.T + r * r * (1 - ratio) * eye
    model = GaussianPrior(m, c, image_shape=prior.image_shape)
    post = model.posterior(problem)
    return post.mean, post.cov


def _gaussian_failures(parts, logw, mean_ref, cov_ref, bias_mean=None, bias_cov=None,
                       c_eff: float = C_EFF) -> list[str]:
    """Compare weighted clouds (B, R, N, d) with reference Gaussians (B, d), (d, d); failure messages."""
    fails = []
    b, r, n, d = parts.shape
    mean, cov = _weighted_moments(parts, logw)
    wm = _whiten(cov_ref)
    zr = (mean - mean_ref[:, None]) @ wm.T  # (B, R, d) whitened errors per run
    ineff = float((zr**2).sum(-1).mean() * n / d)
    if ineff > c_eff:
        fails.append(f"inefficiency {ineff:.1f} > {c_eff}")
    se = math.sqrt(c_eff / (n * r))
    err_m = zr.mean(1).abs().max().item()
    tol_m = Z * se + (bias_mean or 0.0)
    if err_m > tol_m:
        fails.append(f"whitened mean error {err_m:.3f} > {tol_m:.3f}")
    wcov = wm @ cov.mean(1) @ wm.T  # (B, d, d), identity if exact
    dev = (wcov - torch.eye(d, dtype=wcov.dtype)).abs()
    scale = torch.sqrt(1 + torch.eye(d, dtype=wcov.dtype))
    err_c = (dev / scale).max().item()
    tol_c = Z * se + (bias_cov or 0.0)
    if err_c > tol_c:
        fails.append(f"whitened covariance error {err_c:.3f} > {tol_c:.3f}")
    return fails


GAUSS_STEPS = 64
GMM_STEPS = 100


def test_gaussian_posterior_mean_and_covariance_match_closed_form():
    prior, problem, post, parts, logw, res = _run("gauss", False, GAUSS_STEPS)
    m_model, c_model = _model_posterior(prior, problem, GAUSS_STEPS)
    # against the exact target of the SMC (the discretised prior's posterior)
    fails = _gaussian_failures(parts, logw, m_model, c_model)
    assert not fails, fails
    # against the true closed form: add the (exactly computed) discretisation bias
    wm = _whiten(post.cov)
    bias_m = float(((m_model - post.mean) @ wm.T).abs().max())
    bias_c = float((wm @ c_model @ wm.T - torch.eye(post.cov.shape[0], dtype=torch.float64)).abs().max())
    tol = Z * math.sqrt(C_EFF / (N * R))
    assert bias_m < tol and bias_c < tol, (bias_m, bias_c, tol)  # the comparison stays meaningful
    fails = _gaussian_failures(parts, logw, post.mean, post.cov, bias_m, bias_c)
    assert not fails, fails


def test_gaussian_broken_weights_fail():
    prior, problem, post, parts, logw, _ = _run("gauss", True, GAUSS_STEPS)
    m_model, c_model = _model_posterior(prior, problem, GAUSS_STEPS)
    assert _gaussian_failures(parts, logw, m_model, c_model)


def _gmm_failures(parts, logw, post) -> list[str]:
    """Component weights (via exact responsibilities) and mean of weighted clouds vs a MixturePosterior."""
    fails = []
    b, r, n, d = parts.shape
    w_exact = post.log_weights.softmax(-1)  # (B, K)
    chols = torch.linalg.cholesky(post.covs)  # (K, d, d)
    diff = parts[:, :, :, None, :] - post.means[:, None, None]  # (B, R, N, K, d)
    sol = torch.linalg.solve_triangular(chols, diff[..., None], upper=False)[..., 0]
    logn = -0.5 * (sol**2).sum(-1) - torch.log(torch.diagonal(chols, dim1=-2, dim2=-1)).sum(-1)
    resp = (post.log_weights[:, None, None] + logn).softmax(-1)  # p(k | x, y), (B, R, N, K)
    w_hat = (logw.exp()[..., None] * resp).sum(2)  # (B, R, K); E_post[p(k|x,y)] = w_k exactly
    tol_w = Z * torch.sqrt(C_EFF * w_exact * (1 - w_exact) / (n * r)) + 1e-3
    err_w = (w_hat.mean(1) - w_exact).abs()
    if bool((err_w > tol_w).any()):
        fails.append(f"component weights off: max error {err_w.max():.3f} (tolerance {tol_w.min():.3f}"
                     f"..{tol_w.max():.3f})")
    # mean, whitened by the exact mixture covariance
    m = post.mean  # (B, d)
    outer = post.means[..., :, None] * post.means[..., None, :]
    cov = (w_exact[..., None, None] * (post.covs[None] + outer)).sum(1) - m[:, :, None] * m[:, None, :]
    mean_hat, _ = _weighted_moments(parts, logw)
    for i in range(b):
        wm = _whiten(cov[i])
        z = (mean_hat[i] - m[i]) @ wm.T  # (R, d)
        err = z.mean(0).abs().max().item()
        tol = Z * math.sqrt(C_EFF / (n * r))
        if err > tol:
            fails.append(f"item {i}: whitened mean error {err:.3f} > {tol:.3f}")
    return fails


def test_gmm_component_weights_and_mean_match_mixture_posterior():
    prior, problem, post, parts, logw, _ = _run("gmm", False, GMM_STEPS)
    w = post.log_weights.softmax(-1)
    assert bool(((w > 0.05).sum(-1) >= 2).all()), "fixture posterior should be multimodal"
    fails = _gmm_failures(parts, logw, post)
    assert not fails, fails


def test_gmm_broken_weights_fail():
    prior, problem, post, parts, logw, _ = _run("gmm", True, GMM_STEPS)
    assert _gmm_failures(parts, logw, post)


def test_result_contract_and_determinism():
    prior, problem, post, parts, logw, res = _run("gauss", False, GAUSS_STEPS)
    b = problem.batch_size * R
    assert res.nfe == GAUSS_STEPS
    assert res.samples.shape == (b, 8, *problem.image_shape)
    assert res.info["ess"].shape == (b, GAUSS_STEPS)
    assert bool((res.info["ess"] > 0).all()) and bool((res.info["ess"] <= N + 1e-6).all())
    assert res.info["num_particles"] == N
    # every returned sample is one of the final particles of its item
    flat = res.info["particles"].reshape(b, N, -1)
    s = res.samples.reshape(b, 8, -1)
    dist = (s[:, :, None] - flat[:, None]).abs().amax(-1).amin(-1)
    assert float(dist.max()) == 0.0
    # weighted mean in info agrees with the particles
    wmean = (res.info["log_weights"].exp()[..., None] * flat).sum(1)
    assert torch.allclose(wmean, res.info["weighted_mean"].reshape(b, -1))
    # same seeds, same result; other seeds, other result (small run). Bitwise: a rerun repeats every operation,
    # and item 1's rows do the same arithmetic whatever item 0's seed (the batch layout is the same)
    kw = dict(steps=10, num_particles=32, num_samples=4, progress=False)
    a1 = smc(prior, problem, seeds=[3, 4], **kw).samples
    a2 = smc(prior, problem, seeds=[3, 4], **kw).samples
    a3 = smc(prior, problem, seeds=[5, 4], **kw).samples
    assert torch.equal(a1, a2)
    assert not torch.equal(a1[0], a3[0]) and torch.equal(a1[1], a3[1])


def test_chunked_denoiser_calls_and_float32():
    prior, problem, _ = make_gaussian_problem(batch=2)
    kw = dict(steps=6, num_particles=20, num_samples=5, progress=False)
    a = smc(prior, problem, **kw)
    b = smc(prior, problem, particle_chunk=7, **kw)
    assert a.nfe == b.nfe == 6
    # Chunking changes the row count of the denoiser's matmuls, so BLAS may round differently (MKL on AVX-512
    # does): equal up to rounding only. The Gaussian denoiser shrinks (coefficients <= 1) and resampling copies
    # particles, so rounding does not grow over the 6 steps: measured |diff| <= 4e-15 (samples ~5) over chunk
    # sizes 1, 3, 7, 13 and N - 1, 4 problems, 6 and 30 steps, MKL_CBWR=COMPATIBLE/AVX512 and
    # ATEN_CPU_CAPABILITY=default. A different resampling decision would move a sample by O(1) and still fail.
    torch.testing.assert_close(b.samples, a.samples, rtol=1e-12, atol=1e-12)
    p32 = Problem(problem.operator.float(), problem.y.float(), problem.noise, problem.image_shape)
    c = smc(prior, p32, **kw)
    assert c.samples.dtype == torch.float32 and bool(torch.isfinite(c.samples).all())


def test_mask_problem_through_the_dense_svd():
    """An operator without svd() (a Mask on a 2-D image) against the discretised prior's exact posterior.

    Half the pixels observed with a correlated prior is a harder case for the particle filter: its
    inefficiency measured about 15 (N = 256 to 4096, no bias visible at N = 4096), so the bound is 30.
    """
    g = torch.Generator().manual_seed(4)
    d, shape = 12, (1, 3, 4)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(torch.randn(d, generator=g, dtype=torch.float64), q @ q.T / d + 0.3 * torch.eye(d),
                          image_shape=shape)
    mask = torch.zeros(1, 3, 4, dtype=torch.float64)
    mask[..., ::2] = 1.0
    problem = Problem.simulate(Mask(mask, shape), prior.sample(1, generator=g), Gaussian(0.5), generator=g)
    r, n, steps = 16, 256, 32
    res = smc(prior, _replicate(problem, r), steps=steps, num_particles=n, return_particles=True,
              seeds=list(range(r)), progress=False)
    parts = res.info["particles"].reshape(1, r, n, d)
    logw = res.info["log_weights"].reshape(1, r, n)
    m_model, c_model = _model_posterior(prior, problem, steps)
    fails = _gaussian_failures(parts, logw, m_model, c_model, c_eff=30.0)
    assert not fails, fails


def test_callback_and_samples_beyond_particle_count():
    prior, problem, _ = make_gaussian_problem(batch=1)
    seen = []
    res = smc(prior, problem, steps=5, num_particles=16, num_samples=40, progress=False,
              callback=lambda i, x, x0, s: seen.append((i, x.shape, x0.shape, s)))
    assert [t[0] for t in seen] == list(range(5))
    assert all(t[1] == (16, *problem.image_shape) for t in seen)
    assert res.samples.shape == (1, 40, *problem.image_shape)


# ------------------------------------------------------------------------------------------------
# The SVD view of the problem
# ------------------------------------------------------------------------------------------------


def _misfit(system, x: Tensor) -> Tensor:
    """sum_i (yhat_i - xbar_i)^2 / eta_i^2 per item (B,), x (B, d)."""
    return (((system.yhat - system.project(x)) / system.eta) ** 2).sum(-1)


def _check_system(problem: Problem, sigma: float, **kw):
    """The SVD view reproduces ||y - A x||^2 / sigma^2 up to a constant independent of x."""
    system = svd_system(problem, **kw)
    b, d = problem.batch_size, math.prod(problem.image_shape)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(2))

    def full(x):
        ax = problem.operator(x.reshape(b, *problem.image_shape).to(problem.y.dtype)).reshape(b, -1)
        return ((problem.y.reshape(b, -1) - ax).abs() ** 2).sum(-1).double() / sigma**2

    lhs = _misfit(system, x1) - _misfit(system, x2)
    rhs = full(x1) - full(x2)
    assert torch.allclose(lhs, rhs, rtol=1e-6, atol=1e-6 * float(rhs.abs().max())), (lhs, rhs)
    return system


class _TransposedSVD(MatrixOperator):
    """Returns ``(U, s, V)`` (V not transposed) to exercise the convention check."""

    def svd(self):
        u, s, vh = torch.linalg.svd(self.matrix, full_matrices=False)
        return u, s, vh.T


class _WrongSVD(MatrixOperator):
    def svd(self):
        u, s, vh = torch.linalg.svd(self.matrix, full_matrices=False)
        return u, 2 * s, vh


class _ListSVD(MatrixOperator):
    def svd(self):
        return list(torch.linalg.svd(self.matrix, full_matrices=False))


class _NoSVD(LinearOperator):
    def __init__(self, matrix, in_shape):
        super().__init__(in_shape, (matrix.shape[0],))
        self.matrix = matrix

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def adjoint(self, y):
        return (y @ self.matrix).reshape(y.shape[0], *self.in_shape)


def _problem(op, shape, sigma=0.3, batch=2, complex_y=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    return Problem.simulate(op, x, Gaussian(sigma), generator=g)


def test_svd_system_paths():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 8, generator=g, dtype=torch.float64)
    s1 = _check_system(_problem(MatrixOperator(a, (1, 8)), (1, 8)), 0.3)
    s2 = _check_system(_problem(_TransposedSVD(a, (1, 8)), (1, 8)), 0.3)
    s3 = _check_system(_problem(_NoSVD(a, (1, 8)), (1, 8)), 0.3)  # dense fallback
    for s in (s1, s2, s3):
        assert s.eta.shape == (5,) and s.yhat.shape == (2, 5)
    square = torch.randn(6, 6, generator=g, dtype=torch.float64)
    _check_system(_problem(_TransposedSVD(square, (6,)), (6,)), 0.3)
    _check_system(_problem(Identity((1, 3, 4)), (1, 3, 4)), 0.3)
    mask = (torch.rand(1, 4, 5, generator=g) > 0.5).double()
    sm = _check_system(_problem(Mask(mask, (1, 4, 5)), (1, 4, 5)), 0.3)
    assert sm.eta.shape == (int(mask.sum()),)  # unobserved pixels carry no coordinate
    # noiseless problems use the Gaussian's sigma floor
    _check_system(_problem(MatrixOperator(a, (1, 8)), (1, 8), sigma=0.0), Gaussian(0.0).effective_sigma)


def test_svd_system_errors():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 8, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not reproduce"):
        svd_system(_problem(_WrongSVD(a, (1, 8)), (1, 8)))
    with pytest.raises(TypeError, match=r"_ListSVD.*svd\(\) returned list; expected a tuple \(U, s, Vh\)"):
        svd_system(_problem(_ListSVD(a, (1, 8)), (1, 8)))
    with pytest.raises(TypeError, match="max_dense_dim"):
        svd_system(_problem(_NoSVD(a, (1, 8)), (1, 8)), max_dense_dim=4)
    op = MatrixOperator(a, (1, 8))
    x = torch.rand(2, 1, 8, generator=g, dtype=torch.float64)
    pois = Problem(op, (op(x).abs() + 1).round(), Poisson(10.0), (1, 8))
    with pytest.raises(TypeError, match="Gaussian noise"):
        svd_system(Problem(_NoSVD(a, (1, 8)), pois.y, pois.noise, (1, 8)))

    class Square(Operator):
        def forward(self, x):
            return x**2

    with pytest.raises(TypeError, match="LinearOperator"):
        smc(GaussianPrior(torch.zeros(8), torch.eye(8), (1, 8)),
            Problem(Square((1, 8)), x**2, Gaussian(0.1), (1, 8)), steps=2, progress=False)
    prior = GaussianPrior(torch.zeros(8), torch.eye(8), (1, 8))
    with pytest.raises(ValueError, match="num_particles"):
        smc(prior, _problem(op, (1, 8)), num_particles=0, progress=False)
