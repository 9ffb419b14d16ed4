"""The reconstruction report: ``report.json`` (metrics, data consistency, cost, config echo) and ``report.png``.

Metrics are computed against the reference when the input was simulated from an image, in the prior's
normalised domain, by the modality's adapter (:meth:`~sciprior.modalities.adapter.ModalityAdapter.metrics`:
PSNR, SSIM, NMSE with the adapter's data range; ``metrics.domain`` says how), and the panels of report.png are
the adapter's previews (:meth:`~sciprior.modalities.adapter.ModalityAdapter.preview`: grey, magnitude or
false colour). The data-consistency
residual ``||A x - y|| / ||y||`` is given for the reconstruction, the baseline and the reference (the
last one is the noise floor: a reconstruction that fits the data better than the truth overfits the
noise). Figures are drawn with matplotlib's Agg canvas (no display, no global backend change).
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciprior.io.atomic import atomic_write
from sciprior.io.plain import finite_float, plain
from sciprior.modalities import trained_reader
from sciprior.modalities.adapter import Context, ModalityAdapter
from sciprior.physics.problem import Problem, data_consistency, noise_residual

#: a data residual this many times the noise level is reported as not fitting the data
RESIDUAL_WARNING_FACTOR = 3.0


def build_report(job, problem: Problem, context: Context, result, baseline: Tensor | None,
                 timings: dict[str, float], files: list[Path], device: torch.device) -> dict[str, Any]:
    """The report dictionary (what report.json holds)."""
    import sciprior

    adapter: ModalityAdapter = job.modality
    mean = result.mean
    ref = problem.reference
    metrics = None
    if ref is not None:
        metrics = {"domain": adapter.metrics_domain(context), "reconstruction": adapter.metrics(mean, ref)}
        if baseline is not None:
            metrics["baseline"] = adapter.metrics(baseline, ref)
        if result.samples.shape[1] > 1:
            metrics["samples_psnr"] = [adapter.metrics(result.samples[:, s], ref)["psnr"]
                                       for s in range(result.samples.shape[1])]
    extra = adapter.extra_metrics(mean, context)
    if extra:
        metrics = {**(metrics or {}), **extra}
    dc = {"definition": "||A x - y|| / ||y|| over the measured data (the noise model's weighted-least-squares data, "
                        "e.g. post-log line integrals for photon counts), A x and y including the intensity offset",
          "reconstruction": finite_float(data_consistency(problem, mean)[0])}
    if baseline is not None:
        dc["baseline"] = finite_float(data_consistency(problem, baseline)[0])
    if ref is not None:
        dc["reference"] = finite_float(data_consistency(problem, ref)[0])
    floor = noise_residual(problem)
    if floor is not None:
        dc["noise_level"] = finite_float(floor[0])
        dc["noise_level_definition"] = ("sigma sqrt(measured components) / ||y||: the residual the noise alone gives; "
                                        f"a reconstruction above {RESIDUAL_WARNING_FACTOR:g}x it does not fit the data")
        rec, level, ref_fit = dc["reconstruction"], dc["noise_level"], dc.get("reference")
        if rec is not None and rec > RESIDUAL_WARNING_FACTOR * level:
            also = f"; the reference fits {ref_fit:.3g}" if ref_fit is not None else ""
            dc["warning"] = (f"the reconstruction fits the data {rec / level:.1f}x worse than the noise level "
                             f"({rec:.3g} vs {level:.3g}{also}): check the noise level (sigma), the intensity mapping "
                             "and the operator (e.g. coil maps, mask, the image model's phase)")
    uncertainty = None
    if result.std is not None:
        std = result.std.detach().double()
        uncertainty = {"num_samples": int(result.samples.shape[1]), "mean_std_prior_units": finite_float(std.mean()),
                       "max_std_prior_units": finite_float(std.max()),
                       "mean_std_physical": finite_float(std.mean() * abs(context.intensity.scale))}
    plan = job.plan
    rep = {
        "sciprior_version": getattr(sciprior, "__version__", None) or _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": job.input,
        "modality": {**adapter.describe(), **context.meta},
        "noise": {"model": type(problem.noise).__name__, "units": problem.metadata.get("sigma_units")},
        "prior": {"checkpoint": str(plan.path) if plan and plan.path else None,
                  "wrap": plan.wrap if plan else None, "roi": list(plan.roi) if plan and plan.roi else None,
                  "prior_image_shape": list(plan.prior_shape) if plan and plan.prior_shape else None,
                  "trained_domain": _trained_domain(plan.config) if plan and plan.config else None},
        "image_shape": list(problem.image_shape),
        "solver": {"name": job.solver, "settings": plain(job.solver_settings)},
        "num_samples": job.num_samples, "seed": job.seed, "nfe": int(result.nfe),
        "metrics": metrics,
        "data_consistency": dc,
        "uncertainty": uncertainty,
        "baseline": {"name": adapter.baseline_name} if baseline is not None else None,
        "device": str(device), "dtype": str(mean.dtype).removeprefix("torch."),
        "torch": torch.__version__, "python": platform.python_version(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "solver_timings_s": plain(result.timings),
        "outputs": [str(f) for f in files],
        "config": plain(job.config),
    }
    return plain(rep)


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("sciprior")
    except Exception:  # not installed
        return None


def _trained_domain(cfg: dict[str, Any]) -> Any:
    data = (cfg.get("metadata") or {}).get("data")
    trained = trained_reader(data)
    if trained is None:
        return None
    return {"modality": trained.modality, "reader": {"name": trained.reader, **trained.args},
            **{k: data.get(k) for k in ("spatial_size", "patch_size") if k in data}}


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``report.json`` (atomically)."""
    return [atomic_write(Path(out_dir) / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")]


def write_figure(job, adapter: ModalityAdapter, problem: Problem, context: Context, result,
                 baseline: Tensor | None, report: dict[str, Any], out_dir: Path) -> Path:
    """``report.png``: measurement, baseline, reconstruction, posterior std, error map, reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = report.get("metrics") or {}
    panels: list[tuple[np.ndarray, str, dict[str, Any]]] = []
    meas = adapter.measurement_image(problem, context)
    if meas is not None:
        panels.append((meas[0], meas[1], {"cmap": "gray", "aspect": "auto"}))
    ref = problem.reference
    vmin, vmax = adapter.preview_range

    def title(name: str, key: str) -> str:
        m = metrics.get(key) if metrics else None
        return f"{name}\nPSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}" if m and m.get("ssim") is not None \
            else (f"{name}\nPSNR {m['psnr']:.2f} dB" if m else name)

    if baseline is not None:
        panels.append((adapter.preview(baseline), title(adapter.baseline_name, "baseline"),
                       {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
    panels.append((adapter.preview(result.mean),
                   title(f"{job.solver} ({result.samples.shape[1]} sample(s), NFE {result.nfe})", "reconstruction"),
                   {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
    if result.std is not None:
        panels.append((adapter.preview(result.std), "posterior std", {"cmap": "magma", "vmin": 0.0}))
    if ref is not None:
        err = adapter.preview(result.mean) - adapter.preview(ref)
        panels.append((np.abs(err), "|error| (reconstruction - reference)", {"cmap": "inferno", "vmin": 0.0}))
        panels.append((adapter.preview(ref), "reference", {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
    n = len(panels)
    fig = Figure(figsize=(3.2 * n, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (img, name, kw) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        im = ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    dc = report["data_consistency"]["reconstruction"]
    fig.suptitle(f"{report['modality'].get('modality', '')} | {context.intensity.description} | "
                 f"data residual {dc:.3g}", fontsize=8)
    fig.tight_layout()
    return atomic_write(Path(out_dir) / "report.png", lambda tmp: fig.savefig(tmp, format="png"))


__all__ = ["build_report", "plain", "write_figure", "write_report"]
