"""Helpers of tests/app/test_batch.py: a tiny real posterior problem as a ``process_item``, and a script
entry point so the batch engine can be started in a subprocess (DDP relaunches it once per extra rank).

Problem: x ~ GaussianPrior on (1, 8, 8) images (exponential covariance), y = M x + N(0, 0.1^2) with
a fixed inpainting mask M; each input file is y as a float64 ``.npy`` of shape (1, 1, 8, 8).
Sampler: a few steps of DiffPIR (Zhu et al. 2023, "Denoising diffusion models for plug-and-play
image restoration") in the EDM/VE form: Tweedie estimate, a data-consistency step whose gradient
comes from autograd, re-noise to the next sigma.

Run as a script::

    python tests/app/batch_helpers.py --inputs 'dir/*.npy' --out out --devices 2 --strategy ddp [--log calls.txt]

The script hands :func:`process_item` itself to ``run_batch`` (code the test runs, not a config). A config names
it through an entry point: :func:`install_processor` writes the dist-info an installed package would have.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sciprior.app.batch import ItemOutput, ItemSpec, run_batch
from sciprior.physics.generic import Mask
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from sciprior.priors.analytic import GaussianPrior
from sciprior.priors.base import karras_sigmas

IMAGE_SHAPE = (1, 8, 8)
SIGMA_Y = 0.1


def make_prior() -> GaussianPrior:
    """N(0, C) with C_ij = exp(-|p_i - p_j| / 3) over the 8x8 pixel grid."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    p = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).double()
    cov = torch.exp(-torch.cdist(p, p) / 3.0)
    return GaussianPrior(torch.zeros(64, dtype=torch.float64), cov, image_shape=IMAGE_SHAPE)


def make_mask() -> torch.Tensor:
    idx = torch.arange(64).reshape(IMAGE_SHAPE)
    return ((idx * 7) % 5 != 0).double()  # ~80% of the pixels observed


def make_inputs(root: Path, n: int, seed: int = 123) -> tuple[Path, Path]:
    """``n`` measurements ``root/inputs/case_k.npy`` and their ground truths ``root/truth/case_k.npy``."""
    inp, truth = root / "inputs", root / "truth"
    inp.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    prior, m = make_prior(), make_mask()
    for k in range(n):
        x = prior.sample(1, generator=g)
        y = m * (x + SIGMA_Y * torch.randn(x.shape, generator=g, dtype=torch.float64))  # unobserved: 0
        np.save(inp / f"case_{k}.npy", y.numpy())
        np.save(truth / f"case_{k}.npy", x.numpy())
    return inp, truth


def make_ct_inputs(root: Path, n: int, size: int = 32) -> list[Path]:
    """``n`` small axial CT slices ``root/ct_k.nii.gz`` (HU, one slice each) for the ``reconstruct`` processor."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disc = (yy**2 + xx**2 < (size / 2.5) ** 2).astype(np.float32)
    paths = []
    for k in range(n):
        hu = -1000 + disc * (1000 + 40 * rng.standard_normal((size, size)).astype(np.float32))
        p = root / f"ct_{k}.nii.gz"
        nib.save(nib.Nifti1Image(hu[:, :, None], np.diag([0.9, 0.9, 2.0, 1.0])), p)
        paths.append(p)
    return paths


def write_ct_config(path: Path, **modality) -> Path:
    """A fast ``sciprior reconstruct`` config for :func:`make_ct_inputs` (8 views, no prior: the adjoint solver,
    no baseline, no report figure); ``input`` and ``output_dir`` are set per item by the batch."""
    import yaml

    cfg = {"modality": {"name": "ct", "n_views": 8, "image_size": 32, "i0": None, "sigma": 0.01, **modality},
           "prior": {"checkpoint": None}, "solver": {"name": "adjoint"}, "device": "cpu", "progress": False,
           "baseline": False, "report": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def diffpir(prior: GaussianPrior, problem: Problem, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(1, *IMAGE_SHAPE) approximate posterior sample; all randomness from ``generator`` (the item's seed)."""
    sigmas = karras_sigmas(steps, 0.02, 10.0)
    dev = problem.y.device
    x = (sigmas[0] * torch.randn((1, *IMAGE_SHAPE), generator=generator, dtype=torch.float64)).to(dev)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = prior(x, s)
        # data step: argmin_z nll(z) + |z - x0|^2 / (2 s^2); the gradient comes from autograd (the batch
        # runner predicts under no_grad, never inference mode, so enable_grad works); for a mask one
        # step of size 1 / (1/sigma_y^2 + 1/s^2) from z = x0 is the exact minimiser
        with torch.enable_grad():
            z = x0.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(problem.nll(z).sum(), z)
        x0 = x0 - g / (1 / SIGMA_Y**2 + 1 / s**2)
        noise = torch.randn((1, *IMAGE_SHAPE), generator=generator, dtype=torch.float64).to(dev)
        x = x0 + s_next * noise
    return x.detach()


def process_item(spec: ItemSpec, *, steps: int = 6, log: str | None = None, sleep: float = 0.0,
                 truth_dir: str | None = None) -> ItemOutput:
    """Reconstruct one measurement file; record the call (name, rank, pid) in ``log`` when given."""
    if log:
        with open(log, "a") as f:
            f.write(f"{spec.name} {spec.rank} {os.getpid()}\n")
    if sleep:
        time.sleep(sleep)
    y = torch.from_numpy(np.load(spec.path)).to(spec.device)
    op = Mask(make_mask(), IMAGE_SHAPE).to(spec.device)
    problem = Problem(op, y, Gaussian(SIGMA_Y), IMAGE_SHAPE)  # a NaN in y -> ValueError
    prior = make_prior().to(spec.device)
    x = diffpir(prior, problem, steps, spec.generator())
    metrics = {"inference_mode": torch.is_inference_mode_enabled(), "nll": float(problem.nll(x)),
               "torch_rand": float(torch.rand(()))}  # global RNG: seeded per item by the engine
    if truth_dir:
        ref = torch.from_numpy(np.load(Path(truth_dir) / f"{spec.name}.npy"))
        metrics["rmse"] = float((x.cpu() - ref).pow(2).mean().sqrt())
    return ItemOutput(arrays={"": x[0].cpu().numpy()}, metrics=metrics)


def install_processor(site: Path, entry_points: dict[str, str], dist: str = "batch_test_processors") -> Path:
    """Make ``site`` look like a site-packages holding an installed distribution that declares ``entry_points``
    (``{name: "module:attr"}``) in the group ``sciprior.processors``, the way pip leaves it (a .dist-info with
    entry_points.txt); put ``site`` on ``sys.path`` / ``PYTHONPATH`` to install it. Returns the .dist-info."""
    info = Path(site) / f"{dist}-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sciprior.processors]\n{lines}")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--log", default=None)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args(argv)
    summary = run_batch(a.inputs, a.out, process_item,
                        process_kwargs={"steps": a.steps, "log": a.log, "sleep": a.sleep},
                        devices=a.devices, accelerator="cpu", strategy=a.strategy, progress=False)
    print(f"rank {os.environ.get('LOCAL_RANK', '0')}: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
