"""The reconstruction report: ``report.json`` (metrics, data consistency, cost, config echo) and ``report.png``.

Metrics (PSNR, SSIM, NMSE; :mod:`sciprior.metrics`) are computed against the reference when the input
was simulated from an image, in the prior's normalised domain (stated in ``metrics.domain``). For
priors on [-1, 1] the PSNR/SSIM data range is 2 (the domain's width); complex (2-channel) images are
scored on their magnitude with the reference's peak magnitude as the range. The data-consistency
residual ``||A x - y|| / ||y||`` is given for the reconstruction, the baseline and the reference (the
last one is the noise floor: a reconstruction that fits the data better than the truth overfits the
noise). Figures are drawn with matplotlib's Agg canvas (no display, no global backend change).
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciprior.modalities.adapter import Context, ModalityAdapter, atomic_write, data_consistency
from sciprior.modalities.noise import Problem


def _float(v: float | Tensor) -> float | None:
    f = float(v)
    return None if math.isnan(f) else (f if math.isfinite(f) else (1e300 if f > 0 else -1e300))


def _magnitude(x: Tensor) -> Tensor:
    return x.square().sum(1, keepdim=True).sqrt()


def score(x: Tensor, ref: Tensor, complex_image: bool) -> dict[str, float | None]:
    """PSNR (dB), SSIM and NMSE of ``x`` against ``ref`` (first item), in the prior's domain."""
    from sciprior.metrics import nmse, psnr, ssim

    x, ref = x[:1].detach().double().cpu(), ref[:1].detach().double().cpu()
    if complex_image:
        x, ref = _magnitude(x), _magnitude(ref)
        rng = float(ref.max())
    else:
        rng = 2.0
    h, w = x.shape[-2:]
    win = min(7, h - (1 - h % 2), w - (1 - w % 2))
    out = {"psnr": _float(psnr(x, ref, rng)[0]), "nmse": _float(nmse(x, ref)[0])}
    out["ssim"] = _float(ssim(x, ref, rng, win_size=win)[0]) if win >= 3 else None
    return out


def metrics_domain(context: Context, complex_image: bool) -> dict[str, Any]:
    d = {"description": f"prior-normalised domain: {context.intensity.description}",
         "physical = offset + scale * x": {"scale": context.intensity.scale, "offset": context.intensity.offset},
         "physical_units": context.intensity.units}
    if complex_image:
        d["scored_on"] = "magnitude of the complex image; data_range = max |reference|"
    else:
        d["data_range"] = 2.0
    return d


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"array{v.shape}"
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def build_report(job, problem: Problem, context: Context, result, baseline: Tensor | None,
                 timings: dict[str, float], files: list[Path], device: torch.device) -> dict[str, Any]:
    """The report dictionary (what report.json holds)."""
    import sciprior

    adapter: ModalityAdapter = job.modality
    complex_image = getattr(adapter, "image_model", "") == "complex"
    mean = result.mean
    ref = problem.reference
    metrics = None
    if ref is not None:
        metrics = {"domain": metrics_domain(context, complex_image), "reconstruction": score(mean, ref, complex_image)}
        if baseline is not None:
            metrics["baseline"] = score(baseline, ref, complex_image)
        if result.samples.shape[1] > 1:
            per = [score(result.samples[:, s], ref, complex_image)["psnr"] for s in range(result.samples.shape[1])]
            metrics["samples_psnr"] = per
    dc = {"definition": "||A x - y|| / ||y|| over the measured data (CT: post-log line integrals; MRI: k-space), "
                        "A x and y including the intensity offset",
          "reconstruction": _float(data_consistency(problem, mean)[0])}
    if baseline is not None:
        dc["baseline"] = _float(data_consistency(problem, baseline)[0])
    if ref is not None:
        dc["reference"] = _float(data_consistency(problem, ref)[0])
    uncertainty = None
    if result.std is not None:
        std = result.std.detach().double()
        uncertainty = {"num_samples": int(result.samples.shape[1]), "mean_std_prior_units": _float(std.mean()),
                       "max_std_prior_units": _float(std.max()),
                       "mean_std_physical": _float(std.mean() * abs(context.intensity.scale))}
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
        "solver": {"name": job.solver, "settings": _plain(job.solver_settings)},
        "num_samples": job.num_samples, "seed": job.seed, "nfe": int(result.nfe),
        "metrics": metrics,
        "data_consistency": dc,
        "uncertainty": uncertainty,
        "baseline": {"name": adapter.baseline_name} if baseline is not None else None,
        "device": str(device), "dtype": str(mean.dtype).removeprefix("torch."),
        "torch": torch.__version__, "python": platform.python_version(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "solver_timings_s": _plain(result.timings),
        "outputs": [str(f) for f in files],
        "config": _plain(job.config),
    }
    return _plain(rep)


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("sciprior")
    except Exception:  # not installed
        return None


def _trained_domain(cfg: dict[str, Any]) -> Any:
    data = (cfg.get("metadata") or {}).get("data")
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("data_module", "reader", "reader_args", "spatial_size", "patch_size")
            if k in data}


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``report.json`` (atomically)."""
    text = json.dumps(report, indent=2, allow_nan=False)
    return [atomic_write(Path(out_dir) / "report.json", lambda tmp: Path(tmp).write_text(text + "\n"))]


def _display(x: Tensor, complex_image: bool) -> np.ndarray:
    """First item, middle slice, as a 2D array (magnitude for complex images)."""
    a = x[:1].detach().double().cpu()
    a = _magnitude(a) if complex_image else a[:, :1]
    a = a[0, 0]
    if a.dim() == 3:
        a = a[a.shape[0] // 2]
    return a.numpy()


def write_figure(job, adapter: ModalityAdapter, problem: Problem, context: Context, result,
                 baseline: Tensor | None, report: dict[str, Any], out_dir: Path) -> Path:
    """``report.png``: measurement, baseline, reconstruction, posterior std, error map, reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    complex_image = getattr(adapter, "image_model", "") == "complex"
    metrics = report.get("metrics") or {}
    panels: list[tuple[np.ndarray, str, dict[str, Any]]] = []
    meas = adapter.measurement_image(problem, context)
    if meas is not None:
        panels.append((meas[0], meas[1], {"cmap": "gray", "aspect": "auto"}))
    ref = problem.reference
    vmin, vmax = (0.0, None) if complex_image else (-1.0, 1.0)

    def title(name: str, key: str) -> str:
        m = metrics.get(key) if metrics else None
        return f"{name}\nPSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}" if m and m.get("ssim") is not None \
            else (f"{name}\nPSNR {m['psnr']:.2f} dB" if m else name)

    if baseline is not None:
        panels.append((_display(baseline, complex_image), title(adapter.baseline_name, "baseline"),
                       {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
    panels.append((_display(result.mean, complex_image),
                   title(f"{job.solver} ({result.samples.shape[1]} sample(s), NFE {result.nfe})", "reconstruction"),
                   {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
    if result.std is not None:
        panels.append((_display(result.std, complex_image), "posterior std", {"cmap": "magma", "vmin": 0.0}))
    if ref is not None:
        err = _display(result.mean, complex_image) - _display(ref, complex_image)
        panels.append((np.abs(err), "|error| (reconstruction - reference)", {"cmap": "inferno", "vmin": 0.0}))
        panels.append((_display(ref, complex_image), "reference", {"cmap": "gray", "vmin": vmin, "vmax": vmax}))
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


__all__ = ["build_report", "metrics_domain", "score", "write_figure", "write_report"]
