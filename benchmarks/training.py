"""Training throughput: ``sciprior train`` (EDMPriorModule + Lightning Trainer) vs a plain PyTorch loop.

Both train the same EDM denoiser (MONAI DiffusionModelUNet, the demo prior's size) on the same
in-memory batches with the same work per step: EDM loss, backward, gradient clipping at 1.0, AdamW with
warm-up, EMA update (Lightning: the ``EMA`` callback; plain: ``torch.optim.swa_utils.AveragedModel``
with the same EMA function). Lightning adds its loop, logging of the loss every step, callbacks and
precision plumbing; checkpointing, progress bar and validation are off in both. Runs alternate
(Lightning, plain, Lightning, ...) so that drifting machine load affects both alike; the table reports
the median images/s over the repeats, timing only steps after ``warmup`` untimed steps.

    .venv/bin/python benchmarks/training.py [--size 64] [--batch 16] [--steps 20] [--repeats 3]

Writes ``docs/benchmarks/training.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet, count_parameters
from sciprior.training.module import EMA, EDMPriorModule, WarmupSchedule, stream_seed

NETWORK = {
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": 16,
}


def _data(n_batches: int, batch: int, size: int) -> DataLoader:
    x = torch.randn(n_batches * batch, 1, size, size, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)
    return DataLoader(
        TensorDataset(x),
        batch_size=batch,
        shuffle=False,
        drop_last=True,
        collate_fn=lambda rows: torch.stack([r[0] for r in rows]),
    )


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process summed over its threads)."""
    return time.perf_counter(), time.process_time()


class _Timer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, (0.0, 0.0), (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = _clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1 = _clock()


def _rates(images: int, t0: tuple[float, float], t1: tuple[float, float]) -> tuple[float, float]:
    """(images per wall second, images per CPU second)."""
    return images / (t1[0] - t0[0]), images / (t1[1] - t0[1])


def lightning_run(steps: int, warmup: int, batch: int, size: int) -> tuple[float, float]:
    """Images/s (wall, CPU) of EDMPriorModule under a Lightning Trainer (timed steps only)."""
    torch.manual_seed(0)
    model = EDMPriorModule(network=dict(NETWORK), warmup_steps=10, lr=2e-4)
    timer = _Timer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        precision="32-true",
        limit_val_batches=0,
        callbacks=[EMA(decay=0.999), timer],
    )
    trainer.fit(model, train_dataloaders=_data(steps + warmup, batch, size))
    return _rates(steps * batch, timer.t0, timer.t1)


def plain_run(steps: int, warmup: int, batch: int, size: int) -> tuple[float, float]:
    """Images/s (wall, CPU) of the same training step written as a plain PyTorch loop."""
    torch.manual_seed(0)
    den = EDMDenoiser(build_unet(**NETWORK))
    den.train()
    opt = torch.optim.AdamW(den.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupSchedule(10))
    ema = AveragedModel(den, use_buffers=True, avg_fn=get_ema_avg_fn(0.999))
    t0 = (0.0, 0.0)
    for i, x in enumerate(_data(steps + warmup, batch, size)):
        if i == warmup:
            t0 = _clock()
        gen = torch.Generator().manual_seed(stream_seed(0, 0, 0, 0, i))
        loss = den.loss(x, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(den)
        float(loss.detach())  # the trainer reads the loss each step too (logging)
    return _rates(steps * batch, t0, _clock())


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "training.md")
    )
    args = p.parse_args(argv)

    lit, plain = [], []
    for r in range(args.repeats):
        lit.append(lightning_run(args.steps, args.warmup, args.batch, args.size))
        plain.append(plain_run(args.steps, args.warmup, args.batch, args.size))
        print(
            f"repeat {r}: lightning {lit[-1][0]:.2f} img/s wall, {lit[-1][1]:.2f} img/CPU-s; "
            f"plain {plain[-1][0]:.2f} img/s wall, {plain[-1][1]:.2f} img/CPU-s",
            flush=True,
        )
    med = {
        name: [statistics.median(v[k] for v in runs) for k in (0, 1)]
        for name, runs in (("lightning", lit), ("plain", plain))
    }
    over = [100.0 * (med["plain"][k] / med["lightning"][k] - 1.0) for k in (0, 1)]
    params = count_parameters(build_unet(**NETWORK))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(
        [
            "# Training throughput: Lightning vs plain PyTorch",
            "",
            "Generated by `benchmarks/training.py`. Same EDM denoiser (MONAI DiffusionModelUNet, "
            f"{params:,} parameters, channels {NETWORK['channels']}, attention at the last level), "
            f"same batches ({args.batch} x 1 x {args.size} x {args.size}, float32), "
            "same per-step work (EDM loss, backward, gradient clipping, AdamW + warm-up, EMA update). "
            f"Median over {args.repeats} alternating repeats of {args.steps} timed steps (after {args.warmup} "
            "untimed). Wall-clock rates depend on what else runs on the machine; CPU-time rates (images per "
            "CPU-second of the training process, all threads) do not, and measure the overhead itself.",
            "",
            f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, lightning {pl.__version__}; 1-minute load average at the end: "
            f"{load:.1f}.",
            "",
            "| loop | images/s (wall, median) | images per CPU-second (median) | runs (wall; CPU) |",
            "| --- | --- | --- | --- |",
            f"| `sciprior train` (EDMPriorModule + Trainer) | {med['lightning'][0]:.2f} | {med['lightning'][1]:.2f} "
            f"| {_runs([v[0] for v in lit])}; {_runs([v[1] for v in lit])} |",
            f"| plain PyTorch loop | {med['plain'][0]:.2f} | {med['plain'][1]:.2f} "
            f"| {_runs([v[0] for v in plain])}; {_runs([v[1] for v in plain])} |",
            "",
            f"Lightning overhead (time per image, Lightning vs plain): {over[1]:+.1f}% in CPU time, "
            f"{over[0]:+.1f}% in wall time (goal: under 10%).",
            "",
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
