"""Quality of the shipped demo priors (``sciprior/modalities/{ct,mri}/prior``): unconditional samples next to
real held-out images, and denoising of held-out real images against the identity.

For each prior:

(a) **Samples.** 16 unconditional samples with the EDM Heun sampler (Karras et al. 2022, "Elucidating the
    Design Space of Diffusion-Based Generative Models", Algorithm 1; ``sciprior.solvers.edm.edm_sample``,
    18 levels = 35 network evaluations, sample b seeded with b) drawn as a 4 x 4 grid next to 16 real
    held-out examples of the same size and domain, both on the gray scale [-1, 1]
    (``<out>/priors/<name>_samples.png``).
(b) **Denoising.** The held-out set is rebuilt exactly as the training run's validation split: the data
    module named by the ``data`` section of the training config stored in the checkpoint
    (``metadata.train_config``; else ``configs/<name>/train.yaml``) is instantiated, ``setup()`` is called,
    and its validation dataset is read (fixed views, no flips). For each sigma of :data:`SIGMAS` (prior
    units, i.e. the [-1, 1] image domain) every held-out image x gets the fixed noise ``x + sigma n``
    (``n`` ~ N(0, I) drawn from a generator seeded per example, the same ``n`` at every sigma), and the
    table compares the identity (the noisy input itself) with the prior's ``D(x + sigma n, sigma)``:
    MSE (mean over examples of the per-example MSE) and PSNR (mean over examples of
    ``10 log10(2^2 / MSE)``, data range 2). A patch prior (training examples cut with ``patch_size``) is
    evaluated on the validation patches AND on the whole held-out images through
    :class:`sciprior.priors.wrappers.PatchPrior` (roi = the patch size, overlap 0.25, Gaussian blending).
    ``<out>/priors/<name>_denoise.png`` shows one held-out image, noisy and denoised, at two sigmas.

Results go to ``<out>/priors/<name>.json``; ``<out>/priors.md`` is rendered from every such JSON present
(so ``--prior ct`` refreshes the CT section and keeps the MRI one). Everything is seeded; nothing is
downloaded (the data ship inside installed packages). About 1-2 minutes per prior on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prior_quality.py --prior all --out docs
    .venv/bin/python benchmarks/prior_quality.py --prior ct --checkpoint /tmp/run/prior --out /tmp/pq
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, write_atomic  # noqa: E402
from sciprior import modalities  # noqa: E402
from sciprior.datasets.module import PriorDataModule  # noqa: E402
from sciprior.priors.base import Denoiser  # noqa: E402
from sciprior.priors.checkpoint import load_checkpoint, read_config  # noqa: E402
from sciprior.priors.edm import EDMDenoiser  # noqa: E402
from sciprior.priors.networks import count_parameters  # noqa: E402
from sciprior.priors.wrappers import PatchPrior  # noqa: E402

#: the shipped priors, in the order of the doc
#: a name ``MODALITY_VARIANT`` is the modality's further shipped prior ``builtin:MODALITY/VARIANT``
PRIOR_NAMES: tuple[str, ...] = ("ct", "mri", "mri_native")
#: noise levels of the denoising table, in prior units (the [-1, 1] image domain)
SIGMAS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: PSNR data range: the width of the [-1, 1] domain
DATA_RANGE = 2.0
#: seed of example i's noise: NOISE_SEED + i (validation examples), NOISE_SEED + 10_000 + j (whole images)
NOISE_SEED = 20_261_122
FULL_SEED_OFFSET = 10_000
NUM_SAMPLES = 16
SAMPLE_STEPS = 18
PATCH_OVERLAP = 0.25
FIGURE_SIGMAS: tuple[float, ...] = (0.1, 0.5)
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prior_quality.py --prior all --out docs"


#: at most this many training examples are searched for nearest neighbours of the samples
MAX_TRAIN_EXAMPLES = 4096


def shipped_prior_dir(name: str) -> Path:
    """The shipped prior ``name`` (``sciprior/modalities/<name>/prior``, or for ``MODALITY_VARIANT`` the modality's
    ``prior_variants[VARIANT]``; it may not exist yet)."""
    modality, _, variant = name.partition("_")
    m = modalities.get(modality)
    return Path(m.prior_variants[variant] if variant else m.prior)


def train_config(name: str) -> Path:
    """``configs/<modality>/train.yaml`` or, for ``MODALITY_VARIANT``, ``configs/<modality>/train_<variant>.yaml``."""
    modality, _, variant = name.partition("_")
    return ROOT / "configs" / modality / (f"train_{variant}.yaml" if variant else "train.yaml")


# ---------------------------------------------------------------------------------------------
# the held-out set, rebuilt from the training config
# ---------------------------------------------------------------------------------------------
@dataclass
class HeldOut:
    """Real held-out images in the prior's domain.

    Attributes:
        examples: (N, C, h, w) the validation examples exactly as the training run validates on them
            (its fixed patches for a patch prior, else whole examples).
        labels: one description per example.
        indices: the example (slice) index inside its file, per example.
        full: whole held-out images (each (1, C, H, W)) for a patch prior, else empty.
        full_labels: one description per whole image.
        patch_size: (h, w) of a patch prior, or None.
        files: the files the held-out examples come from.
        holdout: the held-out example range ``(start, stop)`` of single-volume splits, or None.
        section: the ``data`` section the set was built from (in the current spelling).
        source: where that section came from.
    """

    examples: Tensor
    labels: list[str]
    indices: list[int]
    full: list[Tensor] = field(default_factory=list)
    full_labels: list[str] = field(default_factory=list)
    patch_size: tuple[int, int] | None = None
    files: list[str] = field(default_factory=list)
    holdout: tuple[int, int] | None = None
    section: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def data_section(cfg: dict[str, Any], name: str, config_path: str | os.PathLike | None = None) -> tuple[dict, str]:
    """The training config's ``data`` section: from ``config_path`` if given, else the one stored in the
    checkpoint config ``cfg`` (``metadata.train_config.data``), else ``configs/<name>/train.yaml``."""
    if config_path is None:
        stored = ((cfg.get("metadata") or {}).get("train_config") or {}).get("data")
        if isinstance(stored, dict):
            return stored, "the training config stored in the checkpoint (metadata.train_config.data)"
        config_path = train_config(name)
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"prior_quality: no training config {str(path)!r} for prior {name!r}")
    section = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(section, dict):
        raise ValueError(f"prior_quality: {path} has no `data` mapping")
    return section, f"`data` of {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"


def current_section(section: dict[str, Any]) -> dict[str, Any]:
    """A ``data`` section in the current spelling (``modality``, ``reader``, ...): the earlier ``class_path`` /
    ``init_args`` spelling (the shipped priors' stored configs) is translated; configs never name code."""
    if "class_path" not in section:
        return dict(section)
    new = modalities.from_legacy_data_section(section)
    if new is None:
        raise ValueError(f"data.class_path: {section['class_path']!r} is no data module the modalities recognise")
    return new


def build_data_module(section: dict[str, Any]) -> PriorDataModule:
    """The data module of a training config's ``data`` section (cache forced to memory, workers to 0; the split
    is unchanged)."""
    args = current_section(section)
    args.update(cache="memory", cache_dir=None, num_workers=0, pin_memory=False)
    return PriorDataModule(**args)


def heldout_set(prior_dir: str | os.PathLike, name: str, config_path: str | os.PathLike | None = None) -> HeldOut:
    """The validation split of the training run of the prior in ``prior_dir`` (see :class:`HeldOut`)."""
    cfg = read_config(prior_dir)
    section, source = data_section(cfg, name, config_path)
    dm = build_data_module(section)
    dm.setup("validate")
    val = dm.val_set
    if val is None or len(val) == 0:
        raise ValueError(f"prior_quality: the validation split of {name!r} ({source}) is empty")
    stored = (cfg.get("metadata") or {}).get("data") or {}
    if stored.get("val_files") and sorted(Path(f).name for f in stored["val_files"]) != sorted(
        f.name for f in dm.val_files
    ):
        raise ValueError(f"prior_quality: held-out files {[f.name for f in dm.val_files]} differ from those "
                         f"recorded in the checkpoint {stored['val_files']}")
    if (stored.get("holdout") or None) != (list(dm.holdout) if dm.holdout else None):
        raise ValueError(f"prior_quality: holdout {dm.holdout} differs from the checkpoint's {stored.get('holdout')}")

    def item_label(i: int) -> str:
        item = dm.val_items[i % len(dm.val_items)]
        return f"{Path(item['path']).name}[{item['index']}]"

    examples = torch.stack([val[i] for i in range(len(val))]).float()
    labels = [item_label(i) + (f" patch {i // len(dm.val_items)}" if dm.patch_size else "")
              for i in range(len(val))]
    files = list(dict.fromkeys(item["path"] for item in dm.val_items))
    out = HeldOut(examples, labels, [int(dm.val_items[i % len(dm.val_items)]["index"]) for i in range(len(val))],
                  patch_size=dm.patch_size, files=files,
                  holdout=tuple(dm.holdout) if dm.holdout else None, section=current_section(section),
                  source=source)
    if dm.patch_size is not None:
        out.full = [val.base[j][None].float() for j in range(len(val.base))]
        out.full_labels = [item_label(j) for j in range(len(val.base))]
    return out


def training_examples(section: dict[str, Any], max_examples: int = MAX_TRAIN_EXAMPLES) -> tuple[Tensor, int]:
    """Training examples of the run, as the data module yields them (``(N, C, h, w)``, N <= max_examples).

    Whole-example priors: every training example as stored (no flips or affine jitter). Patch priors: the
    training views of the first epochs (their random patch positions and flips, as the run drew them) up to
    ``max_examples``. Also returns how many examples the training set holds per epoch.
    """
    dm = build_data_module(section)
    dm.setup("fit")
    train = dm.train_set
    if dm.patch_size is None:
        stored = train.base
        return torch.stack([stored[i] for i in range(min(len(stored), int(max_examples)))]).float(), len(train)
    keys = [(i, epoch) for epoch in range(math.ceil(max_examples / len(train))) for i in range(len(train))]
    keys = keys[: int(max_examples)]
    return torch.stack([train[k] for k in keys]).float(), len(train)


def nearest(queries: Tensor, pool: Tensor, exclude_self: bool = False) -> tuple[Tensor, Tensor]:
    """Nearest ``pool`` example of each query (Euclidean over all pixels): (index (N,), RMS distance (N,)).
    ``exclude_self``: queries are the pool; query i is not matched with pool item i (leave-one-out)."""
    d = torch.cdist(queries.flatten(1).double(), pool.flatten(1).double())
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    dist, idx = d.min(dim=1)
    return idx, (dist / math.sqrt(queries[0].numel())).float()


# ---------------------------------------------------------------------------------------------
# denoising against the identity
# ---------------------------------------------------------------------------------------------
def example_noise(shape: Sequence[int], seed: int) -> Tensor:
    """Standard normal noise of ``shape`` (float32) from a generator seeded with ``seed``."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


@dataclass
class Errors:
    """Per-example squared errors at one sigma: ``identity`` (the noisy input) and ``prior`` (D), (N,)."""

    sigma: float
    identity: Tensor
    prior: Tensor

    @staticmethod
    def _psnr(mse: Tensor) -> float:
        return float((10.0 * torch.log10(DATA_RANGE**2 / mse)).mean())

    def row(self) -> dict[str, float]:
        """Means over the examples: MSEs and PSNRs (dB, data range 2) of the identity and of D."""
        return {
            "sigma": self.sigma,
            "n": int(self.identity.numel()),
            "mse_identity": float(self.identity.mean()),
            "mse_prior": float(self.prior.mean()),
            "psnr_identity": self._psnr(self.identity),
            "psnr_prior": self._psnr(self.prior),
        }


def denoising_errors(denoiser: Denoiser, x: Tensor, sigmas: Sequence[float], seeds: Sequence[int],
                     batch_size: int = 16, keep: int | None = None) -> tuple[list[Errors], dict[float, Tensor]]:
    """MSE per example of ``x + sigma n`` (identity) and of ``D(x + sigma n, sigma)`` for each sigma.

    Args:
        x: (N, C, ...) clean images in prior units.
        seeds: one noise seed per example (:func:`example_noise`); the same noise at every sigma.
        keep: index of an example whose noisy input and estimate are returned (for figures).
    Returns:
        (one :class:`Errors` per sigma, {sigma: (2, C, ...) noisy and denoised example ``keep``}).
    """
    if len(seeds) != x.shape[0]:
        raise ValueError(f"denoising_errors: {len(seeds)} seeds for {x.shape[0]} examples")
    noise = torch.stack([example_noise(x.shape[1:], s) for s in seeds]).to(x)
    out, kept = [], {}
    with torch.no_grad():
        for sigma in sigmas:
            y = x + float(sigma) * noise
            d = torch.cat([denoiser(y[i:i + batch_size], float(sigma)) for i in range(0, len(y), batch_size)])
            mse = lambda z: ((z - x) ** 2).reshape(len(x), -1).mean(1).double()  # noqa: E731
            out.append(Errors(float(sigma), mse(y), mse(d)))
            if keep is not None:
                kept[float(sigma)] = torch.stack([y[keep], d[keep]])
    return out, kept


def patch_prior(denoiser: Denoiser, patch_size: Sequence[int]) -> PatchPrior:
    """The sliding-window prior used on whole images: roi = ``patch_size``, overlap 0.25."""
    return PatchPrior(denoiser, roi_size=patch_size, overlap=PATCH_OVERLAP, sw_batch_size=16)


# ---------------------------------------------------------------------------------------------
# figures (matplotlib Agg; written atomically)
# ---------------------------------------------------------------------------------------------
def _grid(images: Tensor, cols: int = 4, gap: int = 2) -> np.ndarray:
    """(N, 1, h, w) -> one (rows*(h+gap)-gap, cols*(w+gap)-gap) array, NaN between tiles."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[k, 0].cpu().numpy()
    return canvas


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _gray():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("white")
    return plt, cmap


def samples_figure(panels: Sequence[tuple[Tensor, str]], title: str, path: Path) -> None:
    """4 x 4 grids side by side (e.g. samples | their nearest training examples | real held-out), gray,
    value range [-1, 1]; ``panels`` are ``(images (16, 1, h, w), subtitle)``."""
    plt, cmap = _gray()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4))
    for ax, (imgs, sub) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(_grid(imgs), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(sub, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="prior units")
    fig.suptitle(title, fontsize=11)
    _save_figure(fig, path)
    plt.close(fig)


def denoise_figure(clean: Tensor, kept: dict[float, Tensor], title: str, path: Path) -> None:
    """Rows: one per sigma (noisy, D(noisy), clean); gray, value range [-1, 1]."""
    plt, cmap = _gray()
    sig = sorted(kept)
    fig, axes = plt.subplots(len(sig), 3, figsize=(9, 3.1 * len(sig)), squeeze=False)
    for r, s in enumerate(sig):
        mse = [float(((kept[s][k] - clean) ** 2).mean()) for k in (0, 1)]
        cells = [(kept[s][0], f"noisy, sigma = {s:g} (PSNR {10 * math.log10(DATA_RANGE**2 / mse[0]):.1f} dB)"),
                 (kept[s][1], f"D(noisy, {s:g}) (PSNR {10 * math.log10(DATA_RANGE**2 / mse[1]):.1f} dB)"),
                 (clean, "held-out original")]
        for c, (img, sub) in enumerate(cells):
            axes[r, c].imshow(img[0].cpu().numpy(), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
            axes[r, c].set_title(sub, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(title, fontsize=10)
    _save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# one prior
# ---------------------------------------------------------------------------------------------
def _stats(x: Tensor) -> dict[str, float]:
    return {"mean": float(x.mean()), "std": float(x.std()), "background": float((x < -0.9).float().mean()),
            "min": float(x.min()), "max": float(x.max())}


def evaluate_prior(name: str, prior_dir: Path, out: Path, config_path: str | None = None,
                   log=print) -> dict[str, Any]:
    """Samples, figures and denoising table of one prior; returns the JSON-able results."""
    t0 = time.perf_counter()
    cfg = read_config(prior_dir)
    denoiser = load_checkpoint(prior_dir).eval()
    if not isinstance(denoiser, EDMDenoiser) or denoiser.image_shape is None:
        raise ValueError(f"prior_quality: {prior_dir} does not record the image shape of its training examples")
    held = heldout_set(prior_dir, name, config_path)
    if tuple(held.examples.shape[1:]) != tuple(denoiser.image_shape):
        raise ValueError(f"prior_quality: held-out examples have shape {tuple(held.examples.shape[1:])}, "
                         f"the prior {tuple(denoiser.image_shape)}")
    log(f"[{name}] {prior_dir}: {len(held.examples)} held-out examples {tuple(held.examples.shape[1:])} "
        f"from {held.source}")
    figdir = out / "priors"

    # (a) unconditional samples next to real held-out examples
    from sciprior.solvers.edm import edm_sample

    t = time.perf_counter()
    samples = edm_sample(denoiser, (NUM_SAMPLES, *denoiser.image_shape), steps=SAMPLE_STEPS,
                         seeds=list(range(NUM_SAMPLES)))
    t_samples = time.perf_counter() - t
    real = held.examples[:NUM_SAMPLES]
    section, _ = data_section(cfg, name, config_path)
    train, n_train = training_examples(section)
    nn_idx, nn_dist = nearest(samples.clamp(-1, 1), train)
    _, held_dist = nearest(held.examples, train)
    # the spacing of the training set itself: each training example to its nearest other one (for slices of
    # one volume: the neighbouring slice; a new slice between training slices sits about this far away)
    _, loo_dist = nearest(train, train, exclude_self=True)
    files = ", ".join(Path(f).name for f in held.files)
    real_desc = (f"{len(real)} fixed validation patches of\n{files}" if held.patch_size else
                 f"{len(real)} real held-out examples: slices {held.indices[0]}..{held.indices[len(real) - 1]} of\n"
                 f"{files}")
    h, w = real.shape[-2:]
    samples_figure([(samples.clamp(-1, 1), f"{NUM_SAMPLES} samples (EDM Heun, {SAMPLE_STEPS} levels,\n"
                                           f"{2 * SAMPLE_STEPS - 1} NFE, seeds 0-15)"),
                    (train[nn_idx], f"the nearest training example of each sample\n(of {len(train)} "
                                    f"{'training patches' if held.patch_size else 'examples'}, Euclidean)"),
                    (real, real_desc)],
                   f"{name.upper()} prior: unconditional samples, their nearest training examples, and real "
                   f"held-out images ({h} x {w})", figdir / f"{name}_samples.png")
    log(f"[{name}] samples: {t_samples:.1f} s")

    # (b) denoising of the held-out set
    t = time.perf_counter()
    sets = []
    seeds = [NOISE_SEED + i for i in range(len(held.examples))]
    errs, kept = denoising_errors(denoiser, held.examples, SIGMAS, seeds,
                                  keep=None if held.full else len(held.examples) // 2)
    desc = "validation patches" if held.patch_size else "held-out examples"
    sets.append({"set": f"{desc} ({tuple(held.examples.shape[-2:])[0]} x {tuple(held.examples.shape[-2:])[1]})",
                 "rows": [e.row() for e in errs]})
    fig_clean, fig_label = (held.examples[len(held.examples) // 2], held.labels[len(held.examples) // 2])
    if held.full:
        wrapped = patch_prior(denoiser, held.patch_size)
        full_errs: list[list[Errors]] = []
        for j, img in enumerate(held.full):
            e, k = denoising_errors(wrapped, img, SIGMAS, [NOISE_SEED + FULL_SEED_OFFSET + j],
                                    keep=0 if j == 0 else None)
            full_errs.append(e)
            if j == 0:
                kept, fig_clean, fig_label = k, img[0], held.full_labels[0]
        merged = [Errors(s, torch.cat([fe[i].identity for fe in full_errs]),
                         torch.cat([fe[i].prior for fe in full_errs])) for i, s in enumerate(SIGMAS)]
        h, w = held.full[0].shape[-2:]
        sets.append({"set": f"whole held-out slice ({h} x {w}) via PatchPrior (roi {held.patch_size[0]}, "
                            f"overlap {PATCH_OVERLAP})", "rows": [e.row() for e in merged]})
    t_denoise = time.perf_counter() - t
    denoise_figure(fig_clean, {s: kept[s] for s in FIGURE_SIGMAS if s in kept},
                   f"{name.upper()} prior: denoising the held-out {fig_label}", figdir / f"{name}_denoise.png")
    log(f"[{name}] denoising: {t_denoise:.1f} s")
    for s in sets:
        log(f"[{name}] {s['set']}:\n" + _table(s["rows"]))

    meta = cfg.get("metadata") or {}
    training = meta.get("training") or {}
    return {
        "name": name,
        "prior_dir": str(prior_dir.resolve().relative_to(ROOT) if prior_dir.resolve().is_relative_to(ROOT)
                         else prior_dir),
        "checkpoint": {
            "format": cfg.get("format"),
            "denoiser": cfg.get("denoiser"),
            "network": cfg.get("network"),
            "parameters": count_parameters(denoiser.net),
            "dtype": cfg.get("dtype"),
            "storage_dtype": cfg.get("storage_dtype") or cfg.get("dtype"),
            "weights_bytes": _weights_bytes(prior_dir),
        },
        "training": {k: v for k, v in training.items() if k != "hparams"},
        "hparams": training.get("hparams"),
        "data_domain": meta.get("data"),
        "heldout": {"files": held.files, "holdout": held.holdout, "source": held.source, "section": held.section,
                    "n_examples": len(held.examples), "example_shape": list(held.examples.shape[1:]),
                    "patch_size": list(held.patch_size) if held.patch_size else None,
                    "full_shapes": [list(f.shape[1:]) for f in held.full]},
        "sampling": {"num_samples": NUM_SAMPLES, "steps": SAMPLE_STEPS, "nfe": 2 * SAMPLE_STEPS - 1,
                     "seeds": "0..15", "sample_stats": _stats(samples), "real_stats": _stats(real),
                     "nearest_training": {"searched": len(train), "training_set": n_train,
                                          "samples_rms": _stats(nn_dist), "heldout_rms": _stats(held_dist),
                                          "training_rms": _stats(loo_dist)}},
        "denoising": {"sigmas": list(SIGMAS), "noise_seed": NOISE_SEED, "sets": sets},
        "seconds": {"samples": t_samples, "denoising": t_denoise, "total": time.perf_counter() - t0},
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------
def _gain(row: dict[str, float]) -> float:
    """``10 log10(mean MSE identity / mean MSE D)`` in dB: positive exactly when D is better."""
    return 10.0 * math.log10(row["mse_identity"] / row["mse_prior"])


def _table(rows: list[dict[str, float]]) -> str:
    head = ("| sigma | n | MSE identity | MSE prior D | PSNR identity (dB) | PSNR prior D (dB) | gain (dB) "
            "| D better |\n"
            "|---:|---:|---:|---:|---:|---:|---:|:---:|\n")
    lines = [f"| {r['sigma']:g} | {r['n']} | {r['mse_identity']:.3g} | {r['mse_prior']:.3g} | "
             f"{r['psnr_identity']:.2f} | {r['psnr_prior']:.2f} | {_gain(r):+.2f} | "
             f"{'yes' if r['mse_prior'] < r['mse_identity'] else '**no**'} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _files(paths: Sequence[str] | None) -> str:
    return ", ".join(f"`{Path(p).name}`" for p in (paths or [])) or "?"


def _duration(training: dict[str, Any]) -> str:
    for key, value in training.items():
        if isinstance(value, (int, float)) and ("second" in key or "time" in key):
            return f"{float(value) / 60:.0f} min ({key} = {float(value):.0f} s)"
    return "not recorded in the checkpoint"


def _memorisation(nt: dict[str, Any]) -> list[str]:
    """The nearest-training-example distances as a sentence (a copy of the training set would be ~0)."""
    sr, hr, tr = nt["samples_rms"], nt["heldout_rms"], nt.get("training_rms")
    spacing = (f", and {tr['mean']:.3f} (min {tr['min']:.3f}) from each training example to its nearest other "
               "training example (the spacing of the training set)") if tr else ""
    verdict = ("A copy of a training example would be at ~0. Samples about as far from the training set as its "
               "examples are from each other are new images in between them (for slices of one volume: new slice "
               "positions); held-out images lie farther when they come from a slab kept apart from training; "
               "samples much farther than those would be off the data.") if tr else (
        "Samples much closer to the training set than held-out images are would mean copying; much farther, "
        "that they are off the data.")
    return ["", f"Memorisation check: RMS distance (prior units) from each sample to its nearest training "
                f"example, mean {sr['mean']:.3f} (min {sr['min']:.3f}), against {hr['mean']:.3f} (min "
                f"{hr['min']:.3f}) from each real held-out image to its nearest training example{spacing} "
                f"({nt['searched']} training examples searched" + (
                    f": the views of {nt['searched'] // nt['training_set']} epochs of {nt['training_set']}, "
                    f"a patch prior draws new patches every epoch" if nt['searched'] > nt['training_set'] else
                    ": all of them") + "). " + verdict]


def _weights_bytes(prior_dir: Path) -> int | None:
    f = prior_dir / "model.safetensors" if prior_dir.is_dir() else prior_dir
    return f.stat().st_size if f.is_file() else None


def _views(init_args: dict[str, Any]) -> str:
    """How the training views differ from the stored examples (oblique re-slicing, flips, affine jitter)."""
    parts = []
    if init_args.get("tilt") or init_args.get("spin"):
        parts.append(f"each training view re-cut from the volume on a plane tilted up to {init_args.get('tilt', 0):g} "
                     f"degrees and turned up to {init_args.get('spin', 0):g} degrees in-plane (oblique re-slicing)")
    if init_args.get("flips"):
        parts.append(f"flips: {init_args['flips']}")
    if init_args.get("affine"):
        parts.append(f"affine jitter {init_args['affine']}")
    return ("; " + "; ".join(parts)) if parts else ""


def _data_args(section: dict[str, Any]) -> dict[str, Any]:
    """The data-module settings of a stored ``data`` section (either spelling)."""
    return dict(section.get("init_args") or {}) if "init_args" in section else dict(section)


def render_section(r: dict[str, Any]) -> str:
    ck, hp, dom, held = r["checkpoint"], r.get("hparams") or {}, r.get("data_domain") or {}, r["heldout"]
    kw = (ck.get("network") or {}).get("kwargs") or {}
    den = ck.get("denoiser") or {}
    tr = r.get("training") or {}
    trained = modalities.trained_reader(dom)
    reader = trained.args if trained is not None else {}
    if reader.get("scale") == "slice":
        norm = (f"each slice on its own: 2 |m| / s - 1, s the {reader.get('scale_percentile', 99)}th percentile of "
                "the slice's foreground (the map of measured k-space)")
    elif reader.get("window") is not None:
        norm = f"HU window {reader.get('window')} mapped to [-1, 1]" + (", clipped" if reader.get("clip") else "")
    elif reader.get("percentiles") is not None:
        norm = f"the volume's {reader.get('percentiles')} percentiles mapped to [-1, 1]"
    else:
        norm = f"{trained.reader if trained else '?'} reader normalisation"
    if reader.get("pixel_spacing"):
        norm += f"; slices resampled to {reader['pixel_spacing']} mm pixels"
    if dom.get("spatial_size"):
        norm += f"; examples padded to square and resized to {dom['spatial_size']}"
    norm += _views(_data_args(held.get("section") or {}))
    stored = ck.get("storage_dtype") or ck.get("dtype")
    size = f", {ck['weights_bytes'] / 1e6:.1f} MB" if ck.get("weights_bytes") else ""
    dtype = f"{ck.get('dtype')} (stored as {stored}{size})" if stored != ck.get("dtype") else f"{ck.get('dtype')}{size}"
    geometry = (f"{dom['patch_size'][0]} x {dom['patch_size'][1]} patch prior" if dom.get("patch_size")
                else f"{held['example_shape'][1]} x {held['example_shape'][2]} image prior")
    held_desc, caveat = _files(held["files"]), ""
    if held.get("holdout"):
        a, b = held["holdout"]
        margin = int(_data_args(held.get("section") or {}).get("holdout_margin") or 0)
        held_desc = f"slices {a}..{b - 1} of {held_desc}" + (
            f" (the {margin} slices on each side of them are used by neither set)" if margin else "")
        if len(dom.get("train_files") or []) == 1:
            caveat = (" With a single training volume the held-out slices are unseen slices of the same subject: "
                      "this tests generalisation across slices, not across subjects.")
    else:
        held_desc += " (split by file: no slice of it is trained on)"
    s, sm = r["sampling"], r["sampling"]
    lines = [
        f"## {r['name'].upper()} prior (`{r['prior_dir']}`)",
        "",
        f"- **What:** an EDM denoiser (Karras et al. 2022 preconditioning, sigma_data = {den.get('sigma_data')}, "
        f"trained sigma range [{den.get('sigma_min')}, {den.get('sigma_max')}], sigma in prior units) around a "
        f"MONAI `DiffusionModelUNet` ({kw.get('spatial_dims')}D, channels {kw.get('channels')}, attention "
        f"{kw.get('attention_levels')}, {kw.get('num_res_blocks')} res block per level), "
        f"**{ck['parameters']:,} parameters**, {dtype}; a {geometry} of shape {den.get('image_shape')}.",
        f"- **Data:** {trained.modality if trained else '?'} modality, reader {trained.reader if trained else '?'}: "
        f"{norm}. "
        f"Trained on {_files(dom.get('train_files'))}.",
        f"- **Held out (never trained on, the validation split):** {held_desc}: {held['n_examples']} validation "
        f"examples of shape {held['example_shape']}"
        + (f", plus the whole slice(s) {held['full_shapes']}" if held.get("full_shapes") else "") + "." + caveat,
        f"- **Training:** {tr.get('global_step', '?')} optimiser steps ({tr.get('epoch', '?')} epochs), "
        f"EMA weights: {tr.get('ema', '?')}, lr {hp.get('lr', '?')}, warm-up {hp.get('warmup_steps', '?')} steps; "
        f"training time: {_duration(tr)}.",
        "",
        f"![{r['name']} samples](priors/{r['name']}_samples.png)",
        "",
        f"Left: {s['num_samples']} unconditional samples (EDM Heun sampler, {s['steps']} noise levels = "
        f"{s['nfe']} network evaluations, seeds {s['seeds']}); middle: the training example nearest to each "
        f"sample; right: real held-out images of the same size and domain. Pixel statistics (mean / std / "
        f"fraction below -0.9): samples "
        f"{sm['sample_stats']['mean']:.3f} / {sm['sample_stats']['std']:.3f} / "
        f"{sm['sample_stats']['background']:.2f}, held-out {sm['real_stats']['mean']:.3f} / "
        f"{sm['real_stats']['std']:.3f} / {sm['real_stats']['background']:.2f}.",
        *(_memorisation(nt) if (nt := sm.get("nearest_training")) else []),
        "",
    ]
    for st in r["denoising"]["sets"]:
        ok = all(x["mse_prior"] < x["mse_identity"] for x in st["rows"])
        lines += [f"**Denoising, {st['set']}** (n = {st['rows'][0]['n']}): D better than the identity at every "
                  f"sigma: **{'yes' if ok else 'no'}**.", "", _table(st["rows"])]
    lines += [
        f"![{r['name']} denoising](priors/{r['name']}_denoise.png)",
        "",
        f"Run {r['date']} on {r['machine']}: samples {r['seconds']['samples']:.0f} s, denoising "
        f"{r['seconds']['denoising']:.0f} s, total {r['seconds']['total']:.0f} s. Held-out set built from "
        f"{held['source']}.",
        "",
    ]
    return "\n".join(lines)


def render_markdown(results: list[dict[str, Any]], missing: Sequence[str]) -> str:
    sig = ", ".join(f"{s:g}" for s in SIGMAS)
    parts = [
        "# Shipped priors: samples and held-out denoising",
        "",
        "Generated by `benchmarks/prior_quality.py`; do not edit by hand. Reproduce with",
        "",
        f"    {COMMAND}",
        "",
        "Two checks per prior. **Samples:** unconditional EDM samples next to the training example nearest to "
        "each (a copying check) and to real held-out images (same size, same [-1, 1] gray scale). "
        "**Denoising:** the held-out set is rebuilt exactly as the training "
        "run's validation split (the data module of the training config stored in the checkpoint, `setup()`, "
        "its validation dataset: fixed views, no flips). Each held-out image x gets fixed noise `x + sigma n` "
        "(n ~ N(0, I), seeded per example, the same n at every sigma) for sigma in "
        f"[{sig}] (prior units: the [-1, 1] image domain, so sigma = 0.1 is 5% of the range). "
        "The identity (the noisy input itself) is compared with the prior's `D(x + sigma n, sigma)`: MSE is the "
        "mean over examples of the per-example MSE; PSNR is the mean over examples of `10 log10(2^2 / MSE)` "
        "(data range 2). 'D better' means a lower mean MSE than the identity, and the gain is "
        "`10 log10(mean MSE identity / mean MSE D)` (positive exactly when D is better; the mean PSNRs can "
        "disagree with it when a few easy examples, e.g. patches of pure air, have very high PSNR). "
        "The CT prior is a patch prior: "
        "it is evaluated on its 64 x 64 validation patches and on the whole held-out slice through "
        "`sciprior.priors.wrappers.PatchPrior` (roi 64, overlap 0.25, Gaussian blending). "
        "`tests/priors/test_shipped_priors.py` asserts the same property on a few held-out examples.",
        "",
        "## Summary",
        "",
        "| prior | held-out set | n | D better than identity at every sigma | gain range (dB) |",
        "|---|---|---:|:---:|---|",
    ]
    for r in results:
        for st in r["denoising"]["sets"]:
            gains = [_gain(x) for x in st["rows"]]
            ok = all(x["mse_prior"] < x["mse_identity"] for x in st["rows"])
            parts.append(f"| {r['name']} | {st['set']} | {st['rows'][0]['n']} | {'yes' if ok else '**no**'} | "
                         f"{min(gains):+.2f} .. {max(gains):+.2f} |")
    for name in missing:
        parts.append(f"| {name} | not evaluated yet (no `{shipped_prior_dir(name).relative_to(ROOT)}` when last run: "
                     f"train it with `sciprior train {train_config(name).relative_to(ROOT)}`, then rerun the command "
                     "above) | | | |")
    parts.append("")
    parts += [render_section(r) for r in results]
    return "\n".join(parts).rstrip() + "\n"


def _write(path: Path, text: str) -> None:
    """Atomic write, then the usual 0644 mode (mkstemp creates 0600 files)."""
    write_atomic(path, text)
    os.chmod(path, 0o644)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="all", choices=[*PRIOR_NAMES, "all"])
    p.add_argument("--out", default="docs", help="writes OUT/priors.md and OUT/priors/<name>_*.png|json")
    p.add_argument("--checkpoint", default=None,
                   help="evaluate this checkpoint directory instead of the shipped one (one --prior only)")
    p.add_argument("--config", default=None,
                   help="training YAML whose `data` section defines the held-out set (default: the one "
                        "stored in the checkpoint, else configs/<name>/train.yaml)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--render-only", action="store_true",
                   help="only re-render OUT/priors.md from the OUT/priors/<name>.json of earlier runs")
    args = p.parse_args(argv)
    names = list(PRIOR_NAMES) if args.prior == "all" else [args.prior]
    if args.checkpoint and len(names) != 1:
        p.error("--checkpoint needs a single --prior")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    status = 0
    for name in [] if args.render_only else names:
        prior_dir = Path(args.checkpoint) if args.checkpoint else shipped_prior_dir(name)
        if not (prior_dir / "model.safetensors").is_file():
            print(f"[{name}] no prior at {prior_dir} (train it: sciprior train {train_config(name).relative_to(ROOT)})",
                  file=sys.stderr)
            status = 1
            continue
        res = evaluate_prior(name, prior_dir, out, args.config)
        _write(out / "priors" / f"{name}.json", json.dumps(res, indent=1, default=str) + "\n")
    results, missing = [], []
    for name in PRIOR_NAMES:
        f = out / "priors" / f"{name}.json"
        if f.is_file():
            results.append(json.loads(f.read_text()))
        else:
            missing.append(name)
    _write(out / "priors.md", render_markdown(results, missing))
    print(f"wrote {out / 'priors.md'}" + (f" (no results yet for: {', '.join(missing)})" if missing else ""))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
