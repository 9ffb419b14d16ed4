#!/usr/bin/env python
"""Batch example: reconstruct many small inpainting problems with the batch engine, on any machine.

A Gaussian prior on 16x16 images (analytic, exact denoiser: no weights to download) and noisy masked
measurements ``y = M x + N(0, 0.05^2)``; every input file is one measurement (``.npy``). Each input is
reconstructed by a posterior sampler from the solver registry (default ``dps``; ``exact`` draws from the
closed-form Gaussian posterior) and written as ``<name>_mean.npy`` (+ ``<name>_std.npy`` with several
samples) plus a small text report; ``summary.csv`` lists every input's status and metrics (PSNR against
the ground truth, distance to the exact posterior mean). Run it twice: the second run skips the inputs
that are already done; kill it half-way and it resumes.

    python scripts/batch_example.py --work /tmp/sciprior_batch_demo              # 1 process
    python scripts/batch_example.py --work /tmp/sciprior_batch_demo --devices 2  # 2 CPU processes, DDP/gloo
    python scripts/batch_example.py --work /tmp/demo --accelerator gpu --devices 4 --solver dps --steps 200

Here the processor (``InpaintItem``) is handed to ``run_batch`` from Python. A config
(``sciprior batch CONFIG.yaml`` or ``python -m sciprior.app.batch CONFIG.yaml``) never names code by import
path: it names a registered processor, ``reconstruct`` or one an installed package declares in the entry-point
group ``sciprior.processors``. To run this example from a config, put ``InpaintItem`` in a package whose
``pyproject.toml`` says::

    [project.entry-points."sciprior.processors"]
    inpaint = "my_package.batch_example:InpaintItem"

install it (``pip install -e .``), and write::

    inputs: /tmp/sciprior_batch_demo/inputs/*.npy
    output_dir: /tmp/sciprior_batch_demo/out
    process_item: inpaint                        # a registered name (sciprior.app.batch.registry.names())
    process_kwargs: {solver: dps, steps: 100, truth_dir: /tmp/sciprior_batch_demo/truth}
    devices: 2
    accelerator: cpu
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from sciprior.app.batch import ItemOutput, ItemSpec, run_batch
from sciprior.physics.generic import Mask
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from sciprior.priors.analytic import GaussianPrior

SIDE = 16
SIGMA_Y = 0.05  # noise std in the image's units (the operator is a mask)


def make_prior(side: int = SIDE) -> GaussianPrior:
    """N(0, C), C_ij = exp(-|p_i - p_j|^2 / (2 * 2^2)) + 0.01 I over the pixel grid (smooth images)."""
    yy, xx = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    p = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).double()
    cov = torch.exp(-torch.cdist(p, p) ** 2 / 8.0) + 0.01 * torch.eye(side * side, dtype=torch.float64)
    return GaussianPrior(torch.zeros(side * side, dtype=torch.float64), cov, image_shape=(1, side, side))


def make_mask(side: int = SIDE) -> torch.Tensor:
    """A fixed pseudo-random mask observing about half of the pixels."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand((1, side, side), generator=g) < 0.5).double()


def make_inputs(work: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` measurements in ``work/inputs`` and their ground truths in ``work/truth`` (float64 .npy)."""
    inp, truth = work / "inputs", work / "truth"
    inp.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    prior, mask = make_prior(), make_mask()
    for k in range(n):
        x = prior.sample(1, generator=g)
        y = mask * (x + SIGMA_Y * torch.randn(x.shape, generator=g, dtype=torch.float64))  # unobserved: 0
        np.save(inp / f"img_{k:03d}.npy", y.numpy())
        np.save(truth / f"img_{k:03d}.npy", x.numpy())
    return inp, truth


class InpaintItem:
    """``process_item`` for the batch engine: reconstruct ONE measurement file.

    Built once per process (the prior is set up once); called once per input with its :class:`ItemSpec`.
    All randomness comes from ``spec.seed``, so results do not depend on the number of devices.
    """

    def __init__(self, solver: str = "dps", steps: int = 50, num_samples: int = 1,
                 truth_dir: str | None = None):
        self.solver, self.steps, self.num_samples = solver, steps, num_samples
        self.truth_dir = truth_dir
        self.prior = make_prior()

    def __call__(self, spec: ItemSpec) -> ItemOutput:
        dev = torch.device(spec.device)
        prior = self.prior.to(dev)
        y = torch.from_numpy(np.load(spec.path)).to(dev)
        problem = Problem(Mask(make_mask(), (1, SIDE, SIDE)).to(dev), y, Gaussian(SIGMA_Y), (1, SIDE, SIDE))
        if self.solver == "exact":
            samples = prior.posterior(problem).sample(self.num_samples, generator=spec.generator())[0]
            mean = samples.mean(0)
            std = samples.std(0) if self.num_samples > 1 else None
        else:
            from sciprior.solvers import get_solver

            res = get_solver(self.solver)(prior, problem, steps=self.steps, num_samples=self.num_samples,
                                          seeds=[spec.seed], progress=False)
            mean, std = res.mean[0], None if res.std is None else res.std[0]
        exact_mean = prior.posterior(problem).mean.reshape(mean.shape)
        rms_to_exact = float((mean - exact_mean).norm() / math.sqrt(mean.numel()))
        metrics = {"solver": self.solver, "dist_to_exact_mean": rms_to_exact}
        if self.truth_dir:
            ref = torch.from_numpy(np.load(Path(self.truth_dir) / Path(spec.path).name)).to(dev)[0]
            mse = float((mean - ref).pow(2).mean())
            metrics["psnr"] = 10 * math.log10(float(ref.max() - ref.min()) ** 2 / mse)
        arrays = {"_mean": mean.cpu().numpy()}
        if std is not None:
            arrays["_std"] = std.cpu().numpy()
        report = "\n".join(f"{k}: {v}" for k, v in {"input": spec.path, "seed": spec.seed, **metrics}.items())
        return ItemOutput(arrays=arrays, files={"_report.txt": report + "\n"}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("sciprior_batch_demo"),
                    help="inputs, truth and out go here")
    ap.add_argument("--num-inputs", type=int, default=8)
    ap.add_argument("--solver", default="dps",
                    help="a name of sciprior.solvers.available_solvers(), or 'exact'")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--num-nodes", type=int, default=1)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inp = a.work / "inputs"
    if not any(inp.glob("*.npy")):  # the DDP relaunch of this script finds them already there
        make_inputs(a.work, a.num_inputs)
    summary = run_batch(str(inp / "*.npy"), a.work / "out", InpaintItem,
                        process_kwargs={"solver": a.solver, "steps": a.steps, "num_samples": a.num_samples,
                                        "truth_dir": str(a.work / "truth")},
                        devices=a.devices, num_nodes=a.num_nodes, accelerator=a.accelerator,
                        strategy=a.strategy, base_seed=a.base_seed, overwrite=a.overwrite,
                        progress=not a.no_progress)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return 0  # DDP: only rank 0 reports
    print(summary)
    for row in summary.rows:
        m = row["metrics"]
        print(f"  {row['name']}: {row['status']:8s} rank={row['rank']} "
              + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
              + (f" error={row['error']}" if row["error"] else ""))
    return 1 if summary.names("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
