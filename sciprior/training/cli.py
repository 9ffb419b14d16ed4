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

Before anything is built, every ``--config`` file is read strictly (:func:`sciprior.io.yamlfiles.load_yaml`: plain
data, no duplicate keys) and no ``class_path`` may name code outside Lightning (``lightning.pytorch.*`` callbacks,
loggers, ... or a bare class name jsonargparse resolves among them): a config never imports a module of its
choosing. After parsing, a run must be bounded (``trainer.max_steps >= 1``, or ``max_epochs >= 1`` / ``max_time``
when ``max_steps`` is -1) and ``--ckpt_path`` must be a Lightning checkpoint that loads without unpickling code.

Defaults that differ from Lightning's: ``trainer.precision`` is ``bf16-mixed`` on a CUDA device that
supports bfloat16 or a CPU with native bfloat16 (AVX512-BF16, AMX) and ``32-true`` otherwise;
``trainer.gradient_clip_val`` is 1.0; ``seed_everything`` is 0; a ``ModelCheckpoint`` saves ``last.ckpt`` every epoch.
"""

from __future__ import annotations

import re
import sys
import zipfile
from argparse import ArgumentError
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sciprior import modalities
from sciprior.datasets.module import PriorDataModule
from sciprior.io.outdir import OutputDirError, check_writable_dir
from sciprior.io.paths import InputError
from sciprior.io.yamlfiles import YAMLFileError, load_yaml
from sciprior.ranges import describe_parse_error
from sciprior.training.module import EMA, EDMPriorModule, ExportPrior

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: module prefixes a train config's class_path may name (Lightning's own callbacks, loggers, strategies, ...)
ALLOWED_CLASS_PREFIXES = ("lightning.pytorch.", "lightning.fabric.")
#: options whose values jsonargparse resolves as classes
_CLASS_OPTIONS = ("trainer.callbacks", "trainer.logger", "trainer.strategy", "trainer.plugins", "trainer.profiler",
                  "trainer.accelerator")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class TrainConfigError(ValueError):
    """A training config or command line refused before anything is built; the message names the key or file."""


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


def _check_class_path(value: Any, where: str) -> None:
    if isinstance(value, str) and "." in value and not value.startswith(ALLOWED_CLASS_PREFIXES):
        raise TrainConfigError(f"{where}: {value!r} is not read: a config may name Lightning's own classes "
                               f"({', '.join(p + '*' for p in ALLOWED_CLASS_PREFIXES)}) or a bare class name, never "
                               "other code (configs name registered things: data.modality, data.reader.name)")


def refuse_foreign_classes(data: Any, where: str, path: str = "") -> None:
    """Refuse a ``class_path`` (anywhere in ``data``) that names a module outside Lightning."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = f"{path}.{k}" if path else str(k)
            if k == "class_path":
                _check_class_path(v, f"{where}: {here}")
            refuse_foreign_classes(v, where, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            refuse_foreign_classes(v, where, f"{path}[{i}]")


def check_train_argv(argv: list[str]) -> None:
    """Strict reading of every ``--config`` file and no foreign ``class_path`` in the files or the command line."""
    for i, a in enumerate(argv):
        opt, _, inline = a.partition("=")
        if not opt.startswith("--"):
            continue
        value = inline if inline else (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "")
        key = opt[2:].removesuffix("+")
        if key == "config":
            try:
                data = load_yaml(value, "--config")
            except YAMLFileError as e:
                raise TrainConfigError(str(e)) from None
            check_config_spelling(data, value)
            refuse_foreign_classes(data, value)
            continue
        if key.endswith("class_path") or key.startswith(_CLASS_OPTIONS):
            try:
                parsed = yaml.safe_load(value) if value else None
            except yaml.YAMLError:
                parsed = value
            if isinstance(parsed, (Mapping, list)):
                refuse_foreign_classes(parsed, f"--{key}")
            elif isinstance(parsed, str) and _DOTTED.match(parsed):
                _check_class_path(parsed, f"--{key}")


def check_run_bounds(cfg: Any) -> None:
    """A run must end: ``max_steps >= 1``, or ``max_steps = -1`` with ``max_epochs >= 1`` or ``max_time``."""
    t = cfg.get("trainer") or {}
    steps, epochs, max_time = t.get("max_steps", -1), t.get("max_epochs"), t.get("max_time")
    if steps is not None and steps != -1 and steps < 1:
        raise TrainConfigError(f"trainer.max_steps must be >= 1 (or -1 with max_epochs), got {steps}")
    if epochs is not None and epochs != -1 and epochs < 1:
        raise TrainConfigError(f"trainer.max_epochs must be >= 1, got {epochs}")
    if (steps is None or steps == -1) and (epochs is None or epochs == -1) and not max_time:
        raise TrainConfigError(f"trainer.max_steps={steps} with trainer.max_epochs={epochs} trains without bound "
                               "(Lightning would default to 1000 epochs); set trainer.max_steps >= 1, "
                               "trainer.max_epochs >= 1 or trainer.max_time")


#: where a training run writes (config key -> the value's meaning)
_OUTPUT_KEYS = ("trainer.default_root_dir", "checkpoint.dirpath", "export.dirpath")


def check_output_locations(cfg: Any) -> None:
    """Every directory a run writes to (logs, checkpoints, the exported prior) can be created and written: checked
    before anything is built, so that a run never trains for hours and then fails to save its result."""
    for dotted in _OUTPUT_KEYS:
        section, key = dotted.split(".")
        value = (cfg.get(section) or {}).get(key)
        if value is not None:
            try:
                check_writable_dir(str(value), dotted)
            except OutputDirError as e:
                raise TrainConfigError(str(e)) from None


def describe_cli_error(e: BaseException) -> str:
    """A jsonargparse / LightningCLI parse error in one line naming the key."""
    msg = str(e)
    m = (re.search(r"does not accept option '(?:--)?([^']+)'", msg)
         or re.search(r"Key \"([^\"]+)\" is not expected", msg))
    if m:
        return f"{m.group(1)}: not a setting of a training config (sciprior train --help lists them)"
    m = re.search(r'Parser key "([^"]+)":.*?Option \'([^\']+)\' is not accepted', msg, re.S)
    if m:
        return f"{m.group(1)}.{m.group(2)}: not a setting of {m.group(1)}"
    return describe_parse_error(msg)[1]


def check_ckpt_path(ckpt: Any) -> None:
    """``--ckpt_path``: a keyword Lightning resolves (last, best, hpc, registry) or a Lightning checkpoint file
    (torch zip) that loads with ``weights_only=True`` (tensors and plain data only: nothing is unpickled)."""
    if ckpt is None or (isinstance(ckpt, str) and ckpt.split(":")[0] in _CKPT_KEYWORDS):
        return
    p = Path(str(ckpt))
    if not p.exists():
        raise TrainConfigError(f"ckpt_path: no such checkpoint {str(p)!r}")
    if not p.is_file():
        raise TrainConfigError(f"ckpt_path: {str(p)!r} is not a regular file")
    if not zipfile.is_zipfile(p):
        raise TrainConfigError(f"ckpt_path: {str(p)!r} is not a Lightning checkpoint (a torch.save zip archive); "
                               "an old-style pickle is never loaded")
    import torch

    try:
        ckpt_data = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError for objects beyond tensors and plain data, RuntimeError for corruption
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainConfigError(f"ckpt_path: {str(p)!r} does not load as tensors and plain data only "
                               f"(weights_only=True): {first[:300]}") from None
    if not isinstance(ckpt_data, dict) or "state_dict" not in ckpt_data:
        raise TrainConfigError(f"ckpt_path: {str(p)!r} is not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt_data.get("hyper_parameters") or {}
    own = f"{EDMPriorModule.__module__}.{EDMPriorModule.__qualname__}"
    if isinstance(hparams, Mapping) and hparams.get("_class_path") not in (None, own):
        raise TrainConfigError(f"ckpt_path: {str(p)!r} was saved by {hparams['_class_path']!r}, not {own}; its "
                               "hyperparameters are not read")
    refuse_foreign_classes(hparams, f"ckpt_path {str(p)!r}: hyper_parameters")


class TrainCLI(LightningCLI):
    """``LightningCLI`` with the EMA, export and checkpoint callbacks as typed top-level sections."""

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (:func:`check_ckpt_path`) before Lightning reads hyperparameters from it."""
        sub = self.config.get("subcommand")
        if sub:
            check_ckpt_path(self.config[sub].get("ckpt_path"))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Refuse unbounded runs and unwritable output locations before any class is built."""
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        check_run_bounds(cfg)
        check_output_locations(cfg)

    def instantiate_classes(self) -> None:
        """Build the model, data, trainer and callbacks; an error from their arguments (a missing training file,
        an unknown reader, a network that cannot be built, a device that does not exist) is a config error."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except TrainConfigError:
            raise
        except (ValueError, TypeError, OSError, MisconfigurationException) as e:
            msg = " ".join(str(e).split())
            trainer_arg = re.search(r"Trainer\((\w+)=", msg)
            if trainer_arg:
                msg = f"trainer.{trainer_arg.group(1)}: {msg}"
            elif not re.match(r"^[a-z_]+\.[\w.\[\]]+\b", msg):
                msg = f"the config does not build: {msg}"
            raise TrainConfigError(msg) from None

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
        parser_kwargs={"parser_mode": "yaml", "exit_on_error": False},
        auto_configure_optimizers=False,
    )
    options.update(kwargs)
    return TrainCLI(**options)


def check_config_spelling(data: Mapping[str, Any], file: str) -> None:
    """Refuse a training config in the earlier ``data: {class_path, init_args}`` spelling, printing the new one."""
    section = data.get("data")
    if isinstance(section, dict) and "class_path" in section:
        new = modalities.from_legacy_data_section(section)
        hint = (yaml.safe_dump({"data": new}, sort_keys=False) if new is not None else
                "data:\n  modality: <one of " + ", ".join(modalities.names()) + ">\n  reader: {name: ..., ...}\n")
        raise TrainConfigError(f"{file}: data.class_path/init_args is the old spelling (configs name modalities "
                               f"and readers, not code); write:\n{hint}")


def main_train(argv: list[str] | None = None) -> int:
    """Entry point of ``sciprior train``: ``argv`` are the arguments after ``train``."""
    args = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        check_train_argv(args)
        saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both sys.argv and args are set
        try:
            make_cli(args)
        finally:
            sys.argv = saved
    except TrainConfigError as e:
        print(f"sciprior train: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:  # jsonargparse: an unknown key, a value of the wrong type or range
        print(f"sciprior train: error: {describe_cli_error(e)}", file=sys.stderr)
        return 2
    except InputError as e:  # a training file turned out unreadable while the data were scanned (before step 1)
        print(f"sciprior train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_train())
