"""``sciprior train CONFIG.yaml [--key value ...]``: train a prior with Lightning's ``LightningCLI``.

The config has the sections ``model`` (:class:`~sciprior.training.module.EDMPriorModule`), ``data``
(:class:`~sciprior.datasets.module.PriorDataModule`: ``modality``, its ``reader`` by name with settings, the files),
``trainer`` (``lightning.pytorch.Trainer``), ``ema`` (:class:`~sciprior.training.module.EMA`),
``export`` (:class:`~sciprior.training.module.ExportPrior`), ``checkpoint`` (``ModelCheckpoint``) and
``seed_everything``. Typed signatures are the schema (jsonargparse): an unknown or misspelt key fails at
once, naming it. Examples::

    sciprior train configs/NAME/train.yaml
    sciprior train configs/NAME/train.yaml --print_config            # the resolved config
    sciprior train configs/NAME/train.yaml --trainer.max_epochs 2 --data.batch_size 8
    sciprior train configs/NAME/train.yaml --ckpt_path last          # resume (exact at epoch boundaries)
    sciprior train validate --config configs/NAME/train.yaml --ckpt_path ...   # other LightningCLI subcommands

Defaults that differ from Lightning's: ``trainer.precision`` is ``bf16-mixed`` on a CUDA device that
supports bfloat16 or a CPU with native bfloat16 (AVX512-BF16, AMX) and ``32-true`` otherwise;
``trainer.gradient_clip_val`` is 1.0; ``seed_everything`` is 0; a ``ModelCheckpoint`` saves ``last.ckpt`` every epoch.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sciprior import modalities
from sciprior.datasets.module import PriorDataModule
from sciprior.training.module import EMA, EDMPriorModule, ExportPrior

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), so that bf16 autocast is faster
    than float32 (about 1.7x for the demo priors' U-Net on an AMD EPYC with AVX512-BF16,
    docs/benchmarks/training.md); without it bf16 is emulated and slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def default_precision() -> str:
    """``bf16-mixed`` on a CUDA device with bfloat16 or, without CUDA, on a CPU with native bfloat16
    (:func:`cpu_has_native_bf16`); ``32-true`` otherwise. Weights, gradients and optimizer state stay float32
    either way (autocast), and exported priors are float32."""
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


class TrainCLI(LightningCLI):
    """``LightningCLI`` with the EMA, export and checkpoint callbacks as typed top-level sections."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(ExportPrior, "export")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "trainer.precision": default_precision(),
                "trainer.gradient_clip_val": 1.0,
                "checkpoint.save_last": True,
                "checkpoint.every_n_epochs": 1,
            }
        )

    def before_fit(self) -> None:
        """Hand the resolved training config to the exporter (stored in the exported checkpoint)."""
        exporter = next((cb for cb in self.trainer.callbacks if isinstance(cb, ExportPrior)), None)
        if exporter is not None:
            cfg = self.config.get(str(self.subcommand), self.config)
            text = self._parser(self.subcommand).dump(cfg, format="yaml", skip_check=True)
            exporter.train_config = yaml.safe_load(text)


def normalise_argv(argv: list[str]) -> list[str]:
    """``CONFIG.yaml [args]`` -> ``fit --config CONFIG.yaml [args]``; ``--config X`` -> ``fit --config X``;
    an explicit LightningCLI subcommand (fit, validate, test, predict) is kept."""
    if not argv:
        return ["fit", "--help"]
    if argv[0] in SUBCOMMANDS:
        return list(argv)
    if argv[0].startswith("-"):
        return ["fit", *argv]
    return ["fit", "--config", argv[0], *argv[1:]]


def make_cli(argv: list[str], run: bool = True, **kwargs: Any) -> TrainCLI:
    """The configured :class:`TrainCLI` for ``argv`` (in LightningCLI's form, e.g. ``fit --config X``)."""
    options: dict[str, Any] = dict(
        model_class=EDMPriorModule,
        datamodule_class=PriorDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=argv,
        run=run,
        parser_kwargs={"parser_mode": "yaml"},
        auto_configure_optimizers=False,
    )
    options.update(kwargs)
    return TrainCLI(**options)


def check_config_spelling(argv: list[str]) -> None:
    """Refuse a training config in the earlier ``data: {class_path, init_args}`` spelling, printing the new one."""
    for i, a in enumerate(argv[:-1]):
        if a != "--config":
            continue
        try:
            data = yaml.safe_load(open(argv[i + 1], encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports it
        section = data.get("data") if isinstance(data, dict) else None
        if isinstance(section, dict) and "class_path" in section:
            new = modalities.from_legacy_data_section(section)
            hint = (yaml.safe_dump({"data": new}, sort_keys=False) if new is not None else
                    "data:\n  modality: <one of " + ", ".join(modalities.names()) + ">\n  reader: {name: ..., ...}\n")
            raise SystemExit(f"sciprior train: {argv[i + 1]}: data.class_path/init_args is the old spelling (configs "
                             f"name modalities and readers, not code); write:\n{hint}")


def main_train(argv: list[str] | None = None) -> int:
    """Entry point of ``sciprior train``: ``argv`` are the arguments after ``train``."""
    args = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    check_config_spelling(args)
    saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both sys.argv and args are set
    try:
        make_cli(args)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_train())
