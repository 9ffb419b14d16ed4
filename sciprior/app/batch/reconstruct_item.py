"""``sciprior batch``'s default per-input work: run a reconstruction config on one input.

A batch config names a reconstruction config and optional overrides; every input of the batch is
reconstructed with it, into the item's scratch directory (committed atomically by the batch engine
as ``<output_dir>/<name>/``), with the item's own seed and device::

    inputs: data/scans/*.dcm
    output_dir: outputs/ct_batch
    process_item: reconstruct              # the default (registered names only: sciprior.app.batch.registry)
    process_kwargs:
      config: configs/NAME/TASK.yaml       # any `sciprior reconstruct` config
      overrides: {solver.steps: 20}
    devices: 2

Before any item runs, the reconstruction config is validated against the inputs in order until one of them
validates (:meth:`ReconstructItem.check_config`): an input that is itself bad (``ConfigError.key == "input"``)
is skipped there and recorded as that item's failure when the batch runs, so the order of the inputs never
decides whether the batch runs; any other error of the config stops the batch before any compute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sciprior.app.batch.spec import BatchConfigError, ItemOutput, ItemSpec, input_problem
from sciprior.app.reconstruct import ConfigError, Job, parse_config, run, validate

#: reconstruction-config keys the batch engine sets for every item (an override of them is refused)
PER_ITEM_KEYS = ("input", "output_dir", "seed", "device", "progress")


def _scalars(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar leaves of nested mappings, keys joined by ``_`` (``fastmri_reconstruction_psnr``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, Mapping):
            out.update(_scalars(v, f"{prefix}{k}_"))
    return out


def _flat_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    out = _scalars(report.get("metrics") or {})
    for key in ("nfe", "data_consistency", "solver"):
        if isinstance(report.get(key), (int, float, str)):
            out[key] = report[key]
    solve = (report.get("timings_s") or {}).get("solve")
    if solve is not None:
        out["solve_s"] = solve
    return out


class ReconstructItem:
    """Reconstruct one batch input with a ``sciprior reconstruct`` config.

    Args:
        config: path of a reconstruction YAML (or the mapping itself).
        overrides: dotted keys (``{"solver.steps": 20}``) applied on top; ``input``, ``output_dir``,
            ``seed``, ``device`` and ``progress`` are set per item by the batch engine (overriding them is
            refused).
    """

    def __init__(self, config: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any] | None = None):
        if isinstance(config, Mapping):
            self.config: str | dict[str, Any] = dict(config)
            self.label = "process_kwargs.config (a mapping)"
        elif isinstance(config, (str, os.PathLike)) and str(config):
            path = Path(os.path.expanduser(os.fspath(config)))
            if not path.is_file():
                what = "is not a regular file" if path.exists() else "does not exist"
                raise BatchConfigError(f"process_kwargs.config: the reconstruction config {str(path)!r} {what}",
                                       key="process_kwargs.config")
            self.config = str(path)
            self.label = f"process_kwargs.config {str(path)!r}"
        else:
            raise BatchConfigError("process_kwargs.config: expected the path of a reconstruction config (e.g. "
                                   f"configs/<modality>/<task>.yaml) or a mapping, got {config!r}",
                                   key="process_kwargs.config")
        if overrides is not None and not isinstance(overrides, Mapping):
            raise BatchConfigError("process_kwargs.overrides: expected a mapping of dotted keys to values "
                                   f"({{solver.steps: 20}}), got {type(overrides).__name__}",
                                   key="process_kwargs.overrides")
        self.overrides = dict(overrides or {})
        for k in self.overrides:
            top = str(k).split(".", 1)[0]
            if top in PER_ITEM_KEYS:
                raise BatchConfigError(f"process_kwargs.overrides.{k}: set for every item by the batch engine "
                                       f"({', '.join(PER_ITEM_KEYS)}); remove it", key="process_kwargs.overrides")

    @classmethod
    def check_config(cls, kwargs: Mapping[str, Any], inputs: Sequence[str]) -> str | None:
        """Validate the settings before any item runs: against the inputs in order until one validates (returned;
        None when every input is bad, and then every item is recorded failed with its own message).

        Raises:
            BatchConfigError: naming ``process_kwargs.config`` (its file) and the reconstruction key at fault.
        """
        return cls(**kwargs).validate_against(inputs)

    def validate_against(self, inputs: Sequence[str]) -> str | None:
        """The first of ``inputs`` the config validates against (see :meth:`check_config`)."""
        for path in inputs:
            if input_problem(path) is not None:  # a FIFO or device: never opened here (it could block)
                continue
            try:
                self.job_for(path, output_dir=None, seed=0, device="cpu")
            except ConfigError as e:
                if e.key == "input":  # this input is bad, not the config: try the next one
                    continue
                raise BatchConfigError(f"{self.label}: {e}", key="process_kwargs.config") from e
            except Exception:  # an unreadable input: recorded as that item's failure when it runs
                continue
            return path
        return None

    def job_for(self, path: str, output_dir: str | None, seed: int, device: str) -> Job:
        over = {**self.overrides, "input": path, "output_dir": output_dir, "seed": seed, "device": device,
                "progress": False}
        return validate(parse_config(self.config, over))

    def __call__(self, spec: ItemSpec) -> ItemOutput:
        job = self.job_for(spec.path, spec.scratch_dir, spec.seed, spec.device)
        out = run(job)
        return ItemOutput(metrics=_flat_metrics(out.report))
