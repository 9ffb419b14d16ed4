"""The reconstruction benchmark's bookkeeping (benchmarks/reconstruction.py): the ``NAME:NFE[xK][+tuned]``
method syntax, solver tuning on the tuning problem, and which rows the DDS-vs-DPS goal compares.

The benchmark itself needs the shipped priors and minutes per task; these tests use an exact Gaussian prior
on a 16 x 16 inpainting problem (seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.reconstruction as rb  # noqa: E402
from sciprior.physics.generic import Mask  # noqa: E402
from sciprior.physics.noise import Gaussian  # noqa: E402
from sciprior.physics.problem import Problem  # noqa: E402
from sciprior.priors.analytic import GaussianPrior  # noqa: E402


def test_parse_method_tuned_suffix():
    assert rb.parse_method("dds:50") == ("dds", 50, 1, False)
    assert rb.parse_method("dds:50+tuned") == ("dds", 50, 1, True)
    assert rb.parse_method("dds:50x4+tuned") == ("dds", 50, 4, True)
    assert rb.parse_method("tv") == ("tv", None, 1, False)
    assert rb.parse_method("reddiff:100+tuned") == ("reddiff", 100, 1, True)  # grids: SOLVER_GRIDS
    for bad, msg in [("dds:50+fast", r"only suffix is \+tuned"), ("tv+tuned", "tuning grids exist"),
                     ("pigdm:100+tuned", "tuning grids exist")]:
        with pytest.raises(SystemExit, match=msg):
            rb.parse_method(bad)
    assert rb.method_label("dds", 50, "zero-filled", 4, True) == "DDS (50), mean of 4 samples, tuned"


def _inpainting_case() -> tuple[GaussianPrior, rb.Case]:
    g = torch.Generator().manual_seed(0)
    d = 16 * 16
    prior = GaussianPrior(0.3 * torch.randn(d, generator=g, dtype=torch.float64),
                          0.25 * torch.eye(d, dtype=torch.float64), image_shape=(1, 16, 16))
    keep = (torch.rand(1, 16, 16, generator=g) < 0.5).double()
    x = prior.sample(1, generator=g)
    problem = Problem.simulate(Mask(keep, (1, 16, 16)).double(), x, Gaussian(0.01), generator=g)
    return prior, rb.Case("tuning", problem, None, None, 0)


def test_tune_solver_picks_the_best_grid_point(monkeypatch):
    """Without CG steps DDS ignores the data (its estimate is the prior's); the tuner must see that on the
    tuning problem, keep every grid score, and return the settings of the best one."""
    prior, case = _inpainting_case()
    monkeypatch.setitem(rb.SOLVER_GRIDS, "dds", {"cg_iters": [0, 5], "eta": [0.5]})
    monkeypatch.setitem(rb.TUNE_REPEATS, "dds", 2)
    t = rb.tune_solver("dds", 10, prior, case, {"steps": 10, "eta": 0.85}, lambda msg: None)  # grid wins
    assert set(t["grid"]) == {"cg_iters=0, eta=0.5", "cg_iters=5, eta=0.5"}
    assert t["settings"] == {"cg_iters": 5, "eta": 0.5}
    # using the data gains 3.3 dB here (2.3-3.7 dB over problem seeds 0..5; ignoring it in both gains 0)
    assert t["grid"]["cg_iters=5, eta=0.5"] > t["grid"]["cg_iters=0, eta=0.5"] + 1.5
    assert t["psnr"] == pytest.approx(max(t["grid"].values()), abs=1e-3)
    assert t["repeats"] == 2


def _row(label, name, nfe, psnr, seconds, tuned=False):
    return {"label": label, "name": name, "nfe_budget": nfe, "samples": 1, "settings": {}, "psnr": psnr,
            "ssim": [0.9] * len(psnr), "nfe": [nfe] * len(psnr), "seconds": seconds,
            "problems": [str(i) for i in range(len(psnr))], "error": None, "tuned": tuned}


def test_goal_two_pairs_tuned_with_tuned_and_defaults_with_defaults():
    payload = {"methods": [
        _row("TV", "tv", None, [30.0, 30.0], [1.0, 1.0]),
        _row("DDS (50)", "dds", 50, [31.0, 31.0], [2.0, 2.0]),
        _row("DPS (500)", "dps", 500, [32.0, 32.0], [40.0, 40.0]),
        _row("DDS (50), tuned", "dds", 50, [33.0, 33.0], [2.0, 2.0], tuned=True),
        _row("DPS (500), tuned", "dps", 500, [33.2, 33.2], [40.0, 40.0], tuned=True),
    ]}
    lines = [g for g in rb.goals(payload) if g.startswith("- Goal 2")]
    assert len(lines) == 2
    default = next(g for g in lines if "(DDS (50) within" in g)
    tuned = next(g for g in lines if "(DDS (50), tuned within" in g)
    assert "of DPS (500) and" in default
    assert "does not hold" in default and "-1.00 dB" in default
    assert "of DPS (500), tuned and" in tuned and "**holds**" in tuned and "-0.20 dB" in tuned


def test_merge_keeps_solvers_tuned_by_a_later_run():
    first = {"task": "mri", "methods": [], "skipped": [], "seconds": 1.0,
             "tuning": {"tv_lam": 0.1, "solvers": {"dds:50": {"settings": {"eta": 1.0}}}}}
    later = {"task": "mri", "methods": [], "skipped": [], "seconds": 2.0,
             "tuning": {"tv_lam": 0.1, "solvers": {"dds:50": {"settings": {"eta": 0.5}},
                                                    "diffpir:100": {"settings": {"lam": 3.0}}}}}
    (merged,) = rb.merge_payloads([first, later])
    assert merged["tuning"]["solvers"] == {"dds:50": {"settings": {"eta": 1.0}},  # the first run's tuning wins
                                           "diffpir:100": {"settings": {"lam": 3.0}}}
    assert set(rb.SOLVER_GRIDS) >= {name.split(":")[0] for name in rb.FULL_TUNED["mri"]}  # every tuned row has a grid
