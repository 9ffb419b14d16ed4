"""``sciprior batch``'s default per-input work: run a reconstruction config on one input.

A batch config names a reconstruction config and optional overrides; every input of the batch is
reconstructed with it, into the item's scratch directory (committed atomically by the batch engine
as ``<output_dir>/<name>/``), with the item's own seed and device::

    inputs: data/scans/*.dcm
    output_dir: outputs/ct_batch
    process_item: reconstruct              # the default; the only name a YAML config may use
    process_kwargs:
      config: configs/NAME/TASK.yaml       # any `sciprior reconstruct` config
      overrides: {solver.steps: 20}
    devices: 2
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sciprior.app.batch.spec import ItemOutput, ItemSpec
from sciprior.app.reconstruct import Job, parse_config, run, validate

#: what the ``process_item`` key of a YAML batch config may name (configs never import arbitrary code)
PROCESS_ITEMS = {"reconstruct": "sciprior.app.batch.reconstruct_item:ReconstructItem"}


def _flat_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (report.get("metrics") or {}).items():
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
        elif isinstance(v, Mapping):
            out.update({f"{k}_{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))})
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
            ``seed``, ``device`` and ``progress`` are set per item by the batch engine.
        first_input: if given, the config is validated against it at construction (fail before compute).
    """

    def __init__(self, config: str | os.PathLike | Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None, first_input: str | None = None):
        self.config = config if isinstance(config, Mapping) else str(config)
        self.overrides = dict(overrides or {})
        if first_input is not None:
            self.job_for(first_input, output_dir=None, seed=0, device="cpu")

    def job_for(self, path: str, output_dir: str | None, seed: int, device: str) -> Job:
        over = {**self.overrides, "input": path, "output_dir": output_dir, "seed": seed, "device": device,
                "progress": False}
        return validate(parse_config(self.config, over))

    def __call__(self, spec: ItemSpec) -> ItemOutput:
        job = self.job_for(spec.path, spec.scratch_dir, spec.seed, spec.device)
        out = run(job)
        return ItemOutput(metrics=_flat_metrics(out.report))
