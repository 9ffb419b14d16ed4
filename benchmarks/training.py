"""Training throughput: ``sciprior train`` (EDMPriorModule + Lightning Trainer) vs a plain PyTorch loop.

Both train the same EDM denoiser (MONAI DiffusionModelUNet, the demo prior's size) on the same
in-memory batches with the same work per step: EDM loss, backward, gradient clipping at 1.0, AdamW with
warm-up, EMA update (Lightning: the ``EMA`` callback; plain: ``torch.optim.swa_utils.AveragedModel``
with the same EMA function). Lightning adds its loop, logging of the loss every step, callbacks and
precision plumbing; checkpointing, progress bar and validation are off in both. Runs alternate
(Lightning, plain, Lightning, ...) so that drifting machine load affects both alike; the table reports
the median images/s over the repeats, timing only steps after ``warmup`` untimed steps.

The network is the one of the shipped MRI prior (``model.network`` of ``configs/mri/train.yaml``). Each
precision in ``--precision`` is measured the same way: ``32-true`` (float32) and ``bf16-mixed``
(Lightning's bf16 autocast; the plain loop wraps its forward pass and loss in the same
``torch.autocast(device, bfloat16)``), so the table also shows what bf16 autocast buys on this CPU.

    .venv/bin/python benchmarks/training.py [--size 64] [--batch 16] [--steps 20] [--repeats 3]
        [--precision 32-true bf16-mixed]

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
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet, count_parameters
from sciprior.training.cli import cpu_has_native_bf16
from sciprior.training.module import EMA, EDMPriorModule, WarmupSchedule, stream_seed

ROOT = Path(__file__).resolve().parents[1]
#: the shipped MRI prior's network (build_unet arguments)
NETWORK: dict = yaml.safe_load((ROOT / "configs" / "mri" / "train.yaml").read_text())["model"]["network"]
PRECISIONS = ("32-true", "bf16-mixed")


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


def lightning_run(steps: int, warmup: int, batch: int, size: int, precision: str = "32-true") -> tuple[float, float]:
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
        precision=precision,
        limit_val_batches=0,
        callbacks=[EMA(decay=0.999), timer],
    )
    trainer.fit(model, train_dataloaders=_data(steps + warmup, batch, size))
    return _rates(steps * batch, timer.t0, timer.t1)


def plain_run(steps: int, warmup: int, batch: int, size: int, precision: str = "32-true") -> tuple[float, float]:
    """Images/s (wall, CPU) of the same training step written as a plain PyTorch loop."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
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
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "training.md"))
    args = p.parse_args(argv)

    rows, overheads, medians = [], [], {}
    for precision in args.precision:
        lit, plain = [], []
        for r in range(args.repeats):
            lit.append(lightning_run(args.steps, args.warmup, args.batch, args.size, precision))
            plain.append(plain_run(args.steps, args.warmup, args.batch, args.size, precision))
            print(
                f"{precision} repeat {r}: lightning {lit[-1][0]:.2f} img/s wall, {lit[-1][1]:.2f} img/CPU-s; "
                f"plain {plain[-1][0]:.2f} img/s wall, {plain[-1][1]:.2f} img/CPU-s",
                flush=True,
            )
        med = {
            name: [statistics.median(v[k] for v in runs) for k in (0, 1)]
            for name, runs in (("lightning", lit), ("plain", plain))
        }
        medians[precision] = med
        over = [100.0 * (med["plain"][k] / med["lightning"][k] - 1.0) for k in (0, 1)]
        rows += [
            f"| `sciprior train` (EDMPriorModule + Trainer) | {precision} | {med['lightning'][0]:.2f} "
            f"| {med['lightning'][1]:.2f} | {_runs([v[0] for v in lit])}; {_runs([v[1] for v in lit])} |",
            f"| plain PyTorch loop | {precision} | {med['plain'][0]:.2f} | {med['plain'][1]:.2f} "
            f"| {_runs([v[0] for v in plain])}; {_runs([v[1] for v in plain])} |",
        ]
        overheads.append(
            f"- {precision}: {over[1]:+.1f}% in CPU time, {over[0]:+.1f}% in wall time (goal: under 10%)."
        )
    speedup = []
    if all(q in medians for q in PRECISIONS):
        f32, b16 = medians["32-true"]["lightning"], medians["bf16-mixed"]["lightning"]
        speedup = [
            "",
            f"bf16-mixed vs 32-true under `sciprior train`: {b16[0] / f32[0]:.2f}x the images per wall second "
            f"({b16[1] / f32[1]:.2f}x per CPU-second). `sciprior train` picks bf16-mixed by default on CPUs with "
            "native bfloat16 (AVX512-BF16 or AMX) and on CUDA devices with bfloat16; this CPU has native bf16: "
            f"{cpu_has_native_bf16()}.",
        ]
    params = count_parameters(build_unet(**NETWORK))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    attention = [i for i, a in enumerate(NETWORK["attention_levels"]) if a]
    table = "\n".join(
        [
            "# Training throughput: Lightning vs plain PyTorch",
            "",
            "Generated by `benchmarks/training.py`. Same EDM denoiser (MONAI DiffusionModelUNet of the shipped "
            f"MRI prior, configs/mri/train.yaml: {params:,} parameters, channels {NETWORK['channels']}, "
            f"{NETWORK['num_res_blocks']} res block per level, attention at levels {attention}), "
            f"same batches ({args.batch} x 1 x {args.size} x {args.size}), "
            "same per-step work (EDM loss, backward, gradient clipping, AdamW + warm-up, EMA update), same "
            "precision (float32 weights and optimizer in both; bf16-mixed autocasts the forward pass and loss "
            f"in both). Median over {args.repeats} alternating repeats of {args.steps} timed steps (after "
            f"{args.warmup} untimed). Wall-clock rates depend on what else runs on the machine; CPU-time rates "
            "(images per CPU-second of the training process, all threads) do not, and measure the overhead "
            "itself.",
            "",
            f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, lightning {pl.__version__}; 1-minute load average at the end: "
            f"{load:.1f}.",
            "",
            "| loop | precision | images/s (wall, median) | images per CPU-second (median) | runs (wall; CPU) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Lightning overhead (time per image, Lightning vs plain):",
            "",
            *overheads,
            *speedup,
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
