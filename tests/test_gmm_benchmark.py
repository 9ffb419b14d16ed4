"""The Gaussian-mixture benchmark (benchmarks/gmm_posterior.py): its pieces are exact, and its quick mode
separates an exact sampler from approximate ones.

The quick run (d_x in {8, 80}, d_y in {1, 2}, 5 problems, 200 samples, 20 steps, all sciprior solvers that
exist) takes about a minute on one core. Thresholds: the SMC sampler (asymptotically exact) must stay
within 3x the floor (exact vs independent exact samples) summed over the cells, which prior samples or
DPS-like approximations are far from (measured: SMC ~1.9x, DPS ~8x, prior ~16x); and the best sampler
must be at most half of DPS's distance, summed over the cells, and below it in every cell.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    FastGMMDenoiser,
    grid_means,
    make_case,
    random_directions,
    sample_posterior,
    sliced_wasserstein,
    write_atomic,
)
from benchmarks.gmm_posterior import QUICK, discover_solvers, run_and_write  # noqa: E402


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
    with pytest.raises(ValueError, match="even"):
        grid_means(7)


def test_fast_denoiser_matches_mixture_prior():
    case = make_case(80, 1, seed=1)
    fast = FastGMMDenoiser(case.prior)
    g = torch.Generator().manual_seed(0)
    x = case.prior.sample(6, generator=g) + 3 * torch.randn(6, 1, 80, generator=g, dtype=torch.float64)
    for sigma in (0.01, 0.7, torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 100.0], dtype=torch.float64)):
        assert torch.allclose(fast(x, sigma), case.prior(x, sigma), atol=1e-8, rtol=1e-8)
    assert fast(x.float(), 0.5).dtype == torch.float32


def test_exact_sampler_and_sliced_wasserstein():
    case = make_case(8, 1, seed=2)
    post = case.prior.posterior(case.problem)
    g = torch.Generator().manual_seed(0)
    x = sample_posterior(post, 20000, g).reshape(20000, 8)
    w = post.log_weights.softmax(-1)[0]
    mean = w @ post.means[0]
    assert torch.allclose(x.mean(0), mean, atol=0.1)
    dirs = random_directions(100, 8, g)
    assert sliced_wasserstein(x, x, dirs) == 0.0
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 2.0
    # a pure shift moves every projection by |theta . v|
    expected = float((dirs @ shift).abs().mean())
    assert math.isclose(sliced_wasserstein(x, x + shift, dirs), expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match="equal"):
        sliced_wasserstein(x[:10], x[:11], dirs)


def test_write_atomic(tmp_path):
    p = write_atomic(tmp_path / "sub" / "t.md", "hello\n")
    assert p.read_text() == "hello\n"
    assert [f.name for f in p.parent.iterdir()] == ["t.md"]  # no temporary left behind


def test_quick_mode_separates_exact_from_approximate(tmp_path):
    torch.manual_seed(0)
    fns, _ = discover_solvers()
    if "smc" not in fns:
        pytest.skip("the smc solver is not available")
    out = tmp_path / "gmm.md"
    res = run_and_write(out, "pytest quick run", quick=True)
    text = out.read_text()
    assert "exact (floor)" in text and "| smc | 20 |" in text
    cells = [(dx, dy) for dx in QUICK["dims"] for dy in QUICK["obs_dims"]]
    floor = sum(res.floor_mean(c) for c in cells)
    smc_total = sum(res.mean("smc", 20, c) for c in cells)
    assert smc_total < 3.0 * floor, (smc_total, floor)
    if "dps" in fns:
        dps = {c: res.mean("dps", 20, c) for c in cells}
        names = [r.solver for r in res.rows if r.steps == 20 and r.sw]
        best = min(names, key=lambda n: sum(res.mean(n, 20, c) for c in cells))
        best_total = sum(res.mean(best, 20, c) for c in cells)
        assert best_total < 0.5 * sum(dps.values()), (best, best_total, dps)
        assert all(res.mean(best, 20, c) < dps[c] for c in cells), (best, dps)
