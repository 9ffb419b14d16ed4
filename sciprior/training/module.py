"""Training of EDM priors with Lightning: the ``LightningModule``, the optimiser schedule, the exporter.

``EDMPriorModule`` trains an :class:`~sciprior.priors.edm.EDMDenoiser` around a MONAI
``DiffusionModelUNet`` (:func:`~sciprior.priors.networks.build_unet`) with the EDM loss (Karras et al.
2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Eq. 8): AdamW (Loshchilov &
Hutter 2019) with a linear warm-up, then a constant or cosine learning rate. Gradient clipping, mixed
precision, DDP and EMA weights (Lightning's ``EMAWeightAveraging`` callback) are Trainer settings.

Randomness: the noise levels and noise of a training batch come from a generator seeded by
``(seed, rank, epoch, batch index)``, and the data modules seed their random views by
``(seed, epoch, index)``: training never touches the global RNG, so a run resumed from a Lightning
checkpoint saved at an epoch boundary continues exactly as the uninterrupted run.

Validation logs the denoising loss at fixed noise levels ``val_sigmas`` (relative to ``sigma_data``):
``val/mse_sigma{r}`` the plain MSE of ``D`` (prior units squared) and ``val/loss_sigma{r}`` the EDM-weighted
loss, each on fixed noise (the same every epoch), with the EMA weights when the EMA callback is on.
Every ``sample_every_n_epochs`` epochs it writes a PNG grid of unconditional samples (EDM Heun sampler,
:func:`~sciprior.solvers.edm.edm_sample`) to ``<log_dir>/samples/``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, WeightAveraging
from torch import Tensor, nn

from sciprior.io.plain import plain
from sciprior.priors.checkpoint import save_checkpoint
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet, unet_size_multiple
from sciprior.ranges import FiniteFloat, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval
from sciprior.solvers.edm import edm_sample


def _unet_config_class() -> type:
    """A frozen dataclass with exactly the parameters (names, types, defaults) of :func:`build_unet`,
    so the network section of a training config is typed and checked without repeating the builder."""
    hints = typing.get_type_hints(build_unet)
    fields = [
        (name, hints[name], dataclasses.field(default=p.default))
        for name, p in inspect.signature(build_unet).parameters.items()
    ]
    cls = dataclasses.make_dataclass("UNetConfig", fields, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = (
        "Keyword arguments of :func:`sciprior.priors.networks.build_unet` (MONAI DiffusionModelUNet).\n\n"
        + (inspect.getdoc(build_unet) or "").split("Returns:")[0]
    )
    return cls


UNetConfig = _unet_config_class()


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixing several integers (numpy ``SeedSequence``), for independent streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class WarmupSchedule:
    """Learning-rate factor per optimiser step: linear warm-up over ``warmup_steps``, then constant or a
    cosine decay to ``min_lr_ratio`` at ``total_steps`` (a picklable callable for ``LambdaLR``)."""

    def __init__(
        self, warmup_steps: int, schedule: str = "constant", total_steps: int = 0, min_lr_ratio: float = 0.0
    ):
        self.warmup_steps, self.schedule = int(warmup_steps), schedule
        self.total_steps, self.min_lr_ratio = int(total_steps), float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        w = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.schedule == "cosine" and self.total_steps > self.warmup_steps:
            t = min(max((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0), 1.0)
            w *= self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return w


class EDMPriorModule(pl.LightningModule):
    """Trains an :class:`EDMDenoiser` (EDM preconditioning around a MONAI UNet) with the EDM loss.

    Args:
        network: the UNet (``build_unet`` keyword arguments); ``in_channels`` must match the data.
        sigma_data: standard deviation of the training data in prior units (0.5 for data in [-1, 1]).
        sigma_min, sigma_max: noise range of the prior (sampling schedules use it), prior units.
        P_mean, P_std: log-normal distribution of the training noise levels (EDM: -1.2, 1.2).
        image_shape: (C, H, W) of the training examples; None takes it from the data module.
        lr: peak AdamW learning rate; betas, weight_decay: AdamW settings.
        warmup_steps: optimiser steps of linear learning-rate warm-up.
        lr_schedule: after warm-up, ``constant`` or ``cosine`` (to ``min_lr_ratio * lr`` at the last step).
        val_sigmas: validation noise levels, in units of ``sigma_data``.
        sample_every_n_epochs: write a PNG grid of samples every N epochs (when validation runs); 0: never.
        num_samples, sample_steps: samples in the grid and EDM Heun steps (NFE = 2 steps - 1).
        seed: seed of the training noise (mixed with rank, epoch and batch index) and of the samples.
    """

    def __init__(
        self,
        network: UNetConfig | None = None,  # type: ignore[valid-type]
        sigma_data: PositiveFloat = 0.5,
        sigma_min: PositiveFloat = 0.002,
        sigma_max: PositiveFloat = 80.0,
        P_mean: FiniteFloat = -1.2,
        P_std: PositiveFloat = 1.2,
        image_shape: list[int] | None = None,
        lr: PositiveFloat = 2e-4,
        betas: tuple[UnitInterval, UnitInterval] = (0.9, 0.999),
        weight_decay: NonNegativeFloat = 0.0,
        warmup_steps: NonNegativeInt = 200,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: UnitInterval = 0.1,
        val_sigmas: list[float] | None = None,
        sample_every_n_epochs: NonNegativeInt = 0,
        num_samples: PositiveInt = 16,
        sample_steps: PositiveInt = 18,
        seed: int = 0,
    ):
        super().__init__()
        network = UNetConfig() if network is None else network
        if isinstance(network, dict):
            network = UNetConfig(**network)
        val_sigmas = [0.05, 0.1, 0.2, 0.5, 1.0] if val_sigmas is None else [float(s) for s in val_sigmas]
        if lr <= 0 or warmup_steps < 0:
            raise ValueError(
                f"EDMPriorModule: need lr > 0 and warmup_steps >= 0, got lr={lr}, warmup_steps={warmup_steps}"
            )
        if any(s <= 0 for s in val_sigmas):
            raise ValueError(f"EDMPriorModule: val_sigmas must be > 0, got {val_sigmas}")
        self.save_hyperparameters(ignore=["network"])
        self.network_config: dict[str, Any] = plain(dataclasses.asdict(network))
        self.hparams["network"] = self.network_config
        try:
            net = build_unet(**dataclasses.asdict(network))
        except (ValueError, TypeError, AssertionError) as e:  # MONAI checks some arguments with asserts
            raise ValueError(f"model.network: {e}") from None
        self.denoiser = EDMDenoiser(
            net,
            sigma_data=sigma_data,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            image_shape=image_shape,
            P_mean=P_mean,
            P_std=P_std,
        )
        self.val_sigmas = val_sigmas
        self.seed = int(seed)
        self._display_range: tuple[float, float] | None = None

    # -- shapes --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take the image shape from the data module and check it against the network, before any compute."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        shape = getattr(dm, "example_shape", None) if dm is not None else None
        if shape is None:
            return
        shape = tuple(int(s) for s in shape)
        if self.denoiser.image_shape is not None and tuple(self.denoiser.image_shape) != shape:
            raise ValueError(
                f"model.image_shape={list(self.denoiser.image_shape)} but the data module gives "
                f"examples of shape {list(shape)}"
            )
        c = self.network_config["in_channels"]
        if shape[0] != c:
            raise ValueError(
                f"model.network.in_channels={c} but the data module gives {shape[0]}-channel "
                f"examples of shape {list(shape)}"
            )
        m = unet_size_multiple(self.denoiser.net)
        if any(s % m for s in shape[1:]):
            raise ValueError(
                f"the data module gives examples of spatial size {list(shape[1:])}, but a UNet with "
                f"{len(self.network_config['channels'])} levels needs multiples of {m}: set "
                f"data spatial_size / patch_size"
            )
        self.denoiser.image_shape = shape

    # -- training --------------------------------------------------------------------------------------
    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``D(x, sigma)``."""
        return self.denoiser(x, sigma)

    def _generator(self, *keys: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, *keys))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        gen = self._generator(0, self.global_rank, self.current_epoch, batch_idx)
        loss = self.denoiser.loss(batch, generator=gen)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch.shape[0])
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        sd = self.denoiser.sigma_data
        gen = self._generator(1, self.global_rank, batch_idx)
        mse = self.denoiser.denoise_loss_at(
            batch, [r * sd for r in self.val_sigmas], generator=gen, weighted=False
        )
        b = batch.shape[0]
        weighted = []
        for r, m in zip(self.val_sigmas, mse):
            w = self.denoiser.loss_weight(torch.tensor(r * sd, dtype=m.dtype, device=m.device)) * m
            weighted.append(w)
            self.log(f"val/mse_sigma{r:g}", m, sync_dist=True, batch_size=b)
            self.log(f"val/loss_sigma{r:g}", w, sync_dist=True, batch_size=b)
        self.log("val/loss", torch.stack(weighted).mean(), prog_bar=True, sync_dist=True, batch_size=b)
        if batch_idx == 0 and self._display_range is None:
            v = _display(batch.detach().float().cpu())
            lo, hi = np.percentile(v.numpy(), [0.5, 99.5])
            self._display_range = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)

    def on_validation_epoch_end(self) -> None:
        n = self.hparams.sample_every_n_epochs
        if (
            n <= 0
            or self.trainer.sanity_checking
            or not self.trainer.is_global_zero
            or (self.current_epoch + 1) % n
        ):
            return
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        self.write_samples(Path(log_dir) / "samples" / f"epoch{self.current_epoch:04d}.png")

    @torch.no_grad()
    def write_samples(
        self, path: str | os.PathLike, num_samples: int | None = None, steps: int | None = None
    ) -> Path:
        """Draw unconditional samples with the current weights and write them as a PNG grid."""
        from PIL import Image

        shape = self.denoiser.image_shape
        if shape is None:
            raise ValueError("EDMPriorModule.write_samples: image_shape is unknown (set model.image_shape)")
        n = num_samples or self.hparams.num_samples
        x = _sample(
            self.denoiser,
            (n, *shape),
            steps or self.hparams.sample_steps,
            [stream_seed(self.seed, 2, i) for i in range(n)],
            self.device,
        )
        grid = _grid(_display(x.float().cpu()), self._display_range)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, path)
        return path

    # -- optimiser -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(
            self.denoiser.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        total = 0
        if hp.lr_schedule == "cosine":
            total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupSchedule(hp.warmup_steps, hp.lr_schedule, total, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def _sample(
    denoiser: EDMDenoiser, shape: Sequence[int], steps: int, seeds: list[int], device: torch.device
) -> Tensor:
    """EDM Heun samples (Karras et al. 2022, Algorithm 1), in eval mode."""
    was_training = denoiser.training
    denoiser.eval()
    try:
        return edm_sample(denoiser, shape, steps=steps, seeds=seeds, device=device)
    finally:
        denoiser.train(was_training)


def _display(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W) or (B, H, W, 3) for display: 1 channel as is, 2 channels (complex) as
    magnitude, 3+ channels (bands) as an RGB of the first, middle and last channel."""
    if x.dim() == 5:  # volumes: central slice
        x = x[:, :, x.shape[2] // 2]
    c = x.shape[1]
    if c == 1:
        return x[:, 0]
    if c == 2:
        return x.pow(2).sum(1).sqrt()
    return x[:, [0, c // 2, c - 1]].permute(0, 2, 3, 1)


def _grid(v: Tensor, value_range: tuple[float, float] | None) -> np.ndarray:
    """Tile (B, H, W[, 3]) images into a uint8 grid, values mapped from ``value_range`` to 0..255."""
    b, h, w = v.shape[:3]
    if value_range is None:
        lo, hi = np.percentile(v.numpy(), [0.5, 99.5])
        value_range = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    lo, hi = value_range
    img = ((v - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    pad = 2
    out = torch.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, *img.shape[3:]), dtype=torch.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            img[i]
        )
    return out.numpy()


# ---------------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------------
class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with typed, config-friendly arguments.

    The averaged weights ``w_ema <- decay w_ema + (1 - decay) w`` are updated every
    ``update_every_n_steps`` optimiser steps from ``update_starting_at_step`` on; they are swapped in for
    validation, and copied into the model when training ends (so the exported prior holds them).
    ``decay = 0`` makes the average equal to the current weights (no EMA).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: PositiveInt = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        super().__init__(
            device=device,
            use_buffers=True,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = float(decay)
        self._args = (decay, update_every_n_steps, update_starting_at_step, device)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by arguments (the parent holds a local averaging function), so ``ddp_spawn`` can ship the
        callback to its processes. Only an unstarted callback can be pickled (setup builds the average)."""
        if self._average_model is not None:
            raise TypeError("EMA: cannot pickle a callback that already holds an averaged model")
        return (type(self), self._args)


def ema_module(trainer: pl.Trainer) -> nn.Module | None:
    """The averaged copy of the LightningModule kept by a weight-averaging callback, if any."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
            return cb._average_model.module
    return None


class ExportPrior(Callback):
    """Exports the trained prior as a sciprior checkpoint directory (safetensors weights + resolved
    config, :func:`~sciprior.priors.checkpoint.save_checkpoint`; no pickled code) when training ends,
    and optionally every ``every_n_epochs`` epochs. With EMA on, the EMA weights are exported.

    Args:
        dirpath: output directory; default ``<log_dir>/prior``.
        every_n_epochs: also export at the end of every N-th training epoch (0: only at the end).
        enabled: turn the export off.
        storage_dtype: dtype the weights are stored in (``float16`` halves the file; the prior still
            loads and runs in float32). Default: float32, as trained.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: NonNegativeInt = 0, enabled: bool = True,
                 storage_dtype: Literal["float32", "float16", "bfloat16"] | None = None):
        self.dirpath, self.every_n_epochs, self.enabled = dirpath, int(every_n_epochs), bool(enabled)
        self.storage_dtype = storage_dtype
        self.train_config: dict[str, Any] | None = None  # set by the CLI: the resolved training config
        self.last_path: Path | None = None
        self._fit_start: float | None = None
        self.previous_seconds = 0.0  # wall time of earlier runs of a resumed training (from the checkpoint)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def train_seconds(self) -> float:
        """Wall seconds of training so far: this run plus the runs it resumed."""
        now = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self.previous_seconds + now

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_seconds = float(state_dict.get("train_seconds", 0.0))

    def target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "prior"

    def export(self, trainer: pl.Trainer, pl_module: EDMPriorModule) -> Path:
        """Write the (EMA) denoiser of ``pl_module`` now; returns the checkpoint directory."""
        src = ema_module(trainer) or pl_module
        denoiser: EDMDenoiser = src.denoiser  # type: ignore[assignment]
        denoiser.image_shape = pl_module.denoiser.image_shape
        dm = getattr(trainer, "datamodule", None)
        metadata: dict[str, Any] = {
            "training": {
                "global_step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "ema": ema_module(trainer) is not None,
                "train_seconds": round(self.train_seconds(), 1),
                "devices": int(trainer.num_devices) * int(trainer.num_nodes),
                "accelerator": type(trainer.accelerator).__name__,
                "hparams": plain(
                    {k: v for k, v in pl_module.hparams.items() if k != "network" and not k.startswith("_")}
                ),
            },
            "data": dm.domain() if dm is not None and hasattr(dm, "domain") else None,
        }
        if self.train_config is not None:
            metadata["train_config"] = self.train_config
        path = self.target(trainer)
        save_checkpoint(denoiser, path, net_config=pl_module.network_config, metadata=metadata,
                        storage_dtype=self.storage_dtype)
        self.last_path = path
        return path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.enabled
            and self.every_n_epochs > 0
            and trainer.is_global_zero
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        ):
            self.export(trainer, pl_module)  # type: ignore[arg-type]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            self.export(trainer, pl_module)  # type: ignore[arg-type]
