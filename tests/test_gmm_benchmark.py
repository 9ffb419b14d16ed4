"""The Gaussian-mixture benchmark (benchmarks/gmm_posterior.py) and the fast paths it relies on: its pieces
are exact, its budgets are matched, and its quick mode separates an exact sampler from approximate ones.

The fast paths of ``GaussianMixturePrior`` (isotropic denoiser through matrix products and low-rank means,
one conditioning per distinct variance, one Cholesky factor for shared posterior covariances) are checked
against the library's general full-covariance code, an independent implementation of the same formulas.

The quick run (d_x in {8, 80}, d_y in {1, 2}, 5 problems, 200 samples, budget 20, all sciprior solvers that
exist) takes about 10 s of CPU. Thresholds: the SMC sampler (asymptotically exact) must stay within 3x the
floor (exact vs independent exact samples) summed over the cells, which prior samples or DPS-like
approximations are far from (measured: SMC ~1.9x, DPS ~8x, prior ~16x); and the best sampler must be at
most half of DPS's distance, summed over the cells, and below it in every cell.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    grid_means,
    make_case,
    random_directions,
    sliced_wasserstein,
    write_atomic,
)
from benchmarks.gmm_posterior import (  # noqa: E402
    QUICK,
    discover_solvers,
    pnpdm_plan,
    run_and_write,
    solver_config,
)
from sciprior.priors.analytic import GaussianMixturePrior  # noqa: E402
from sciprior.solvers.common import ItemNoise  # noqa: E402


def _full_cov_twin(prior: GaussianMixturePrior) -> GaussianMixturePrior:
    """The same mixture given with (K, d, d) covariances: the library's general code path."""
    return GaussianMixturePrior(prior.log_w.exp(), prior.means, prior.full_covs, image_shape=prior.image_shape)


def test_protocol_case():
    case = make_case(8, 2, seed=3)
    assert grid_means(8)[0].tolist() == [-16.0, -16.0] * 4 and grid_means(8).shape == (25, 8)
    a = case.problem.operator.matrix
    s = torch.linalg.svdvals(a)
    assert torch.allclose(s, case.singular_values) and bool((s < 1).all())
    assert 0 < case.sigma_y <= float(s.max())
    assert case.problem.noise.sigma == case.sigma_y
    w = case.prior.log_w.exp()
    assert math.isclose(float(w.sum()), 1.0) and w.shape == (25,)
    low = make_case(8, 2, seed=3, dtype=torch.float32)  # same draws, rounded operator and measurement
    assert low.problem.y.dtype == torch.float32 and low.problem.operator.matrix.dtype == torch.float32
    assert torch.allclose(low.problem.y.double(), case.problem.y, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        grid_means(7)


@pytest.mark.parametrize("means_kind", ["grid", "random"])
def test_isotropic_denoiser_matches_general_path(means_kind):
    """Values and input gradients of the fast isotropic denoiser (low-rank grid means, or full-rank random
    means) equal those of the full-covariance code, for scalar and per-row noise levels."""
    case = make_case(80, 1, seed=1)
    prior = case.prior
    if means_kind == "random":
        g0 = torch.Generator().manual_seed(5)
        prior = GaussianMixturePrior(prior.log_w.exp(), 6 * torch.randn(25, 80, generator=g0, dtype=torch.float64),
                                     0.5 + torch.rand(25, generator=g0, dtype=torch.float64), image_shape=(1, 80))
    assert (prior._basis is not None) == (means_kind == "grid")  # the grid means have rank 2
    twin = _full_cov_twin(prior)
    g = torch.Generator().manual_seed(0)
    x = prior.sample(6, generator=g) + 3 * torch.randn(6, 1, 80, generator=g, dtype=torch.float64)
    for sigma in (0.01, 0.7, torch.tensor(5.0), torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 100.0])):
        assert torch.allclose(prior(x, sigma), twin(x, sigma), atol=1e-9, rtol=1e-9)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        u = torch.randn(6, 1, 80, generator=g, dtype=torch.float64)
        (ga,) = torch.autograd.grad((prior(xa, sigma) * u).sum(), xa)
        (gb,) = torch.autograd.grad((twin(xb, sigma) * u).sum(), xb)
        assert torch.allclose(ga, gb, atol=1e-8, rtol=1e-8)
    assert prior(x.float(), 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match="entries"):
        prior(x, torch.ones(4))


def test_isotropic_posterior_and_sampler_match_general_path():
    case = make_case(8, 2, seed=4)
    fast, slow = case.prior.posterior(case.problem), _full_cov_twin(case.prior).posterior(case.problem)
    assert fast.covs.stride(0) == 0  # one shared (d, d) covariance, expanded
    assert torch.allclose(fast.means, slow.means, atol=1e-10)
    assert torch.allclose(fast.covs, slow.covs, atol=1e-12)
    assert torch.allclose(fast.log_weights, slow.log_weights, atol=1e-9)
    # distinct variances: one conditioning per distinct value
    prior = GaussianMixturePrior(case.prior.log_w.exp(), case.prior.means,
                                 torch.tensor([1.0, 2.0, 0.5, 1.0, 2.0] * 5, dtype=torch.float64), (1, 8))
    fast, slow = prior.posterior(case.problem), _full_cov_twin(prior).posterior(case.problem)
    assert torch.allclose(fast.covs, slow.covs, atol=1e-12) and torch.allclose(fast.means, slow.means, atol=1e-10)
    assert torch.allclose(fast.log_weights, slow.log_weights, atol=1e-9)
    # the grouped sampler makes the same draws as a per-draw Cholesky product from the same generator
    n = 300
    got = fast.sample(n, generator=torch.Generator().manual_seed(7)).reshape(n, 8)
    g = torch.Generator().manual_seed(7)
    comp = torch.multinomial(fast.log_weights[0].softmax(-1), n, replacement=True, generator=g)
    z = torch.randn((n, 8), generator=g, dtype=torch.float64)
    chols = torch.linalg.cholesky(fast.covs + 1e-12 * torch.eye(8, dtype=torch.float64))
    want = fast.means[0, comp] + torch.einsum("nij,nj->ni", chols[comp], z)
    assert torch.allclose(got, want, atol=1e-12)


def test_exact_sampler_and_sliced_wasserstein():
    case = make_case(8, 1, seed=2)
    post = case.prior.posterior(case.problem)
    g = torch.Generator().manual_seed(0)
    x = post.sample(20000, generator=g).reshape(20000, 8)
    w = post.log_weights.softmax(-1)[0]
    assert torch.allclose(x.mean(0), w @ post.means[0], atol=0.1)
    dirs = random_directions(100, 8, g)
    assert sliced_wasserstein(x, x, dirs) == 0.0
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 2.0
    # a pure shift moves every projection by |theta . v|
    expected = float((dirs @ shift).abs().mean())
    assert math.isclose(sliced_wasserstein(x, x + shift, dirs), expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match="equal"):
        sliced_wasserstein(x[:10], x[:11], dirs)


def test_item_noise_is_per_item_and_in_state_dtype():
    noise = ItemNoise([3, 9], num_samples=4, dtype=torch.float64)
    a = noise.randn(2, 5)
    assert a.shape == (8, 2, 5) and a.dtype == torch.float64
    alone = ItemNoise([9], num_samples=4, dtype=torch.float64).randn(2, 5)
    assert torch.equal(a[4:], alone)  # item 1's rows depend on its own seed only
    assert not torch.equal(a[:4], a[4:])
    u = ItemNoise([3], 1000, dtype=torch.float64).rand(10)
    assert u.dtype == torch.float64 and 0 <= float(u.min()) and float(u.max()) < 1
    big = ItemNoise([0], 20000, dtype=torch.float64).randn(10)
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


def test_budgets_are_matched():
    prior = make_case(8, 1, seed=0).prior
    for budget in (20, 100):
        plan = pnpdm_plan(prior, budget, 5)
        assert plan["steps"] == 5 and math.isclose(plan["rho_start"] * plan["rho_decay"] ** 4, plan["rho_min"],
                                                   rel_tol=1e-3)
        assert solver_config("edm", budget, prior, 10)["steps"] * 2 - 1 in (budget, budget - 1)
        assert solver_config("smc", budget, prior, 10)["num_particles"] == 10
    with pytest.raises(ValueError, match="iterations"):
        pnpdm_plan(prior, 20, 21)


def test_quick_mode_separates_exact_from_approximate(tmp_path):
    torch.manual_seed(0)
    fns, _ = discover_solvers()
    if "smc" not in fns:
        pytest.skip("the smc solver is not available")
    out = tmp_path / "gmm.md"
    res = run_and_write(out, "pytest quick run", quick=True, deepinv=False)
    text = out.read_text()
    assert "exact (floor)" in text and "| smc | 20 |" in text and "Reading" in text
    for row in res.rows:  # every solver spends (at most) the budget
        assert row.error is None and row.nfe and max(row.nfe) <= 20 and min(row.nfe) >= 19, (row.solver, row.nfe)
    cells = [(dx, dy) for dx in QUICK["dims"] for dy in QUICK["obs_dims"]]
    floor = sum(res.floor_mean(c) for c in cells)
    smc_total = sum(res.mean("smc", 20, c) for c in cells)
    assert smc_total < 3.0 * floor, (smc_total, floor)
    if "dps" in fns:
        dps = {c: res.mean("dps", 20, c) for c in cells}
        names = [r.solver for r in res.rows if r.budget == 20 and r.sw]
        best = min(names, key=lambda n: sum(res.mean(n, 20, c) for c in cells))
        best_total = sum(res.mean(best, 20, c) for c in cells)
        assert best_total < 0.5 * sum(dps.values()), (best, best_total, dps)
        assert all(res.mean(best, 20, c) < dps[c] for c in cells), (best, dps)


def test_write_atomic(tmp_path):
    p = write_atomic(tmp_path / "sub" / "t.md", "hello\n")
    assert p.read_text() == "hello\n"
    assert [f.name for f in p.parent.iterdir()] == ["t.md"]  # no temporary left behind


def test_a_quick_run_never_overwrites_the_published_table(tmp_path, monkeypatch):
    from benchmarks import gmm_posterior
    from benchmarks._common import table_path

    published = gmm_posterior.DEFAULT_OUT
    assert table_path(None, published, quick=False) == published
    scratch = table_path(None, published, quick=True)
    assert scratch.name == published.name and published.parent not in scratch.parents and scratch != published
    assert table_path(tmp_path / "x.md", published, quick=True) == tmp_path / "x.md"  # --out wins
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # keep the scratch file inside this test's folder
    before = published.read_bytes() if published.exists() else None
    gmm_posterior.main(["--quick", "--no-deepinv", "--solvers", "smc", "--problems", "1", "--samples", "20",
                        "--dims", "8", "--obs-dims", "1", "--budgets", "20"])
    assert (tmp_path / "sciprior-benchmarks" / published.name).is_file()
    assert (published.read_bytes() if published.exists() else None) == before
