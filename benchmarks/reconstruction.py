"""Reconstruction benchmark on real held-out slices: CT sparse view and MRI 4x, classical baselines, the
sciprior diffusion solvers and deepinv's DPS and DiffPIR driven by the same prior, side by side.

Problems are built by the modality adapters with the settings of the shipped demo configs
(``configs/ct/sparse_view.yaml``, ``configs/mri/accel_4x.yaml``), so the benchmark measures what
``sciprior reconstruct`` runs; the prior is loaded and wrapped exactly as ``sciprior reconstruct`` does
(:func:`sciprior.app.reconstruct.load_prior`: patch-wise for the 64 x 64 CT prior, full image for MRI), and
solvers are called as the runner calls them (one posterior sample, per-problem seed).

Held-out data (never trained on; see ``configs/ct/train.yaml`` and ``configs/mri/train.yaml``):

- CT: the real head slice ``sample:head_ct`` (pydicom-data ``693_UNCR.dcm``, the CT prior's validation
  slice), resampled to 0.957 mm pixels (256 x 256) as in the demo config. Default problems are
  128 x 128 crops of it at fixed positions (same pixel size, written as NIfTI and read back through the
  adapter), each with its own simulated-noise seed: DPS at 500 NFE on the full 256 x 256 slice costs a
  patch-prior gradient over 25 windows per step (measured ~2-4 s per step on one shared core), too
  much for a multi-problem run; a 128 x 128 crop needs 9 windows. ``--ct-size 256`` runs the demo
  problem itself (full slice, several noise seeds). Other real CT files installed with pydicom /
  pydicom-data that are not in the training list were checked and not used: ``693_UNCI``, ``693_J2KI``
  and ``693_J2KR`` are copies of the same slice; ``eCT_Supplemental.dcm`` is a derived perfusion map
  (rCBF), not an attenuation image; ``bad_sequence.dcm`` (neck) is JPEG-lossless and needs
  pylibjpeg/gdcm, which the project does not install.
- MRI: axial MNI152 slices from the held-out slab 74..90 (default 78, 82, 86, 90), 64 x 64 as in the demo
  config, each with its own simulated mask-and-noise seed; slice 74 is used only to tune the baselines.
- MRI at native resolution (``mri-native-4x``, ``mri-native-8x``; ``configs/mri/own_kspace.yaml`` with the 1 mm
  patch prior ``builtin:mri/native``): the same slices at their own 1 mm, 256 x 256, written as fully sampled
  12-coil fastMRI files and read back through the adapter exactly as a user's file (ESPIRiT, noise from the
  corners, intensity from the data), undersampled retrospectively; baselines add CG-SENSE (the complex image,
  unregularised, stopped at its best iteration on the tuning slice).

Baselines: the adapter's own (FBP, ramp filter / zero-filled SENSE), CGLS stopped at the iteration that
was best on the tuning problem, TV (Chambolle-Pock) with ``lam`` tuned on the tuning problem (a
different crop and noise seed for CT, slice 74 for MRI) and kept fixed.

Metrics: PSNR and SSIM in the prior's domain ([-1, 1]; data range 2, i.e. the HU window
[-1024, 3071] for CT and the volume's 0.5..99.5 percentile range for MRI), computed with
:meth:`sciprior.modalities.adapter.ModalityAdapter.metrics`, the function behind ``report.json``.

deepinv (only when importable, e.g. ``.venv-bench/bin/python``): our EDM denoiser wrapped as a
``deepinv.models.Denoiser`` on deepinv's [0, 1] data convention (``D01(x, s) = (D(2x - 1, 2s) + 1) / 2``),
our operator as a ``deepinv.physics.LinearPhysics`` on [0, 1] images (``A01 x = 2 A x``, ``y01 = y + A 1``),
whitened by the relative weights of the noise model's weighted-least-squares view (exact for MRI's
Gaussian noise; the post-log approximation for CT counts, as our solvers use), complex data as real
pairs, ``GaussianNoise(sigma)`` with the matching sigma. deepinv's ``DPS`` and ``DiffPIR`` run with
their defaults except the number of steps; ``deepinv-dps-annealed`` is DPS with ``guidance="annealed"``,
the guidance form deepinv documents for weight ~ 1 (the default residual-norm guidance at weight 1 is
nearly unguided with this prior).

Tuned rows: a method given as ``NAME:NFE+tuned`` (any solver in ``SOLVER_GRIDS``) runs with the settings that
scored best on the tuning problem over ``SOLVER_GRIDS`` (mean PSNR of a few posterior samples, at the same
NFE), chosen before any test problem runs and kept fixed, as TV's ``lam`` is; grid and scores go into the
markdown. The full run adds DDS (50), DDS (50) x 4, DPS (500), DiffPIR (100), RED-diff (100) and DAPS (100)
tuned rows on MRI (``FULL_TUNED``; on CT DPS's grid is too costly).

Deadlines: ``--budget-minutes`` stops starting runs that would not finish in time (estimated from the
measured cost per denoiser call); what is left is listed in the markdown. ``--only-problems`` and
``--reuse-tuning`` split a task over processes; ``--render`` merges their JSON results into one table.

Run (writes docs/benchmarks/reconstruction.md and reconstruction_{ct,mri}.png)::

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --quick          # smoke, minutes
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py                  # full
    # the two tasks in parallel on two cores, then one table:
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --tasks ct --json /tmp/ct.json &
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --tasks mri --json /tmp/mri.json
    .venv/bin/python benchmarks/reconstruction.py --render /tmp/ct.json /tmp/mri.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import machine_info, mean_std, table_path, write_atomic  # noqa: E402
from sciprior.modalities.adapter import Context, ModalityAdapter  # noqa: E402
from sciprior.physics.problem import Problem  # noqa: E402
from sciprior.priors.base import CountingDenoiser, Denoiser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "reconstruction.md"

#: CT settings of configs/ct/sparse_view_30.yaml (--ct-views 60: configs/ct/sparse_view.yaml)
CT_SETTINGS = dict(geometry="parallel", n_views=30, angular_range=180.0, i0=1.0e5, sigma=0.0,
                   hu_window=(-1024.0, 3071.0), fbp_filter="ram-lak")
#: MRI settings of configs/mri/accel_4x.yaml
MRI_SETTINGS = dict(acceleration=4.0, center_fraction=0.08, mask_type="random", num_coils=8, sigma=0.005,
                    image_model="magnitude", image_size=64, percentiles=(0.5, 99.5))
#: (top, left) of the 128 x 128 CT crops in the 256 x 256 slice (rows anterior -> posterior)
CT_CROPS = [(16, 64), (96, 64), (56, 40), (56, 88)]
CT_TUNE_CROP = (56, 64)
CT_TUNE_SEED = 100
MRI_SLICES = [78, 82, 86, 90]
MRI_TUNE_SLICE = 74
#: native-resolution MRI tasks (configs/mri/own_kspace.yaml with the 1 mm patch prior builtin:mri/native): the
#: same held-out MNI152 slices at their own 1 mm, 256 x 256, as fully sampled 12-coil fastMRI files
#: (sciprior.modalities.mri.samples.write_mni152_kspace), undersampled retrospectively
NATIVE_TASKS = {"mri-native-4x": 4, "mri-native-8x": 8}
NATIVE_SIZE, NATIVE_COILS = 256, 12
#: the image model of configs/mri/own_kspace.yaml (the 2-channel prior builtin:mri/native_complex); scored on the
#: magnitude mapped as the magnitude model maps it (2 |x| - 1, data range 2), so the numbers read like the others
NATIVE_IMAGE_MODEL = "complex"

#: method label syntax on the command line: NAME:NFE (NFE ignored for baselines)
#: run order = priority (what the goals need first); the tables sort by method family and NFE
FULL_METHODS = ["baseline", "cgls", "tv", "dds:50", "dps:500", "dds:20", "dds:50x4", "diffpir:100", "reddiff:100",
                "daps:100", "deepinv-dps:100", "deepinv-dps-annealed:100", "deepinv-diffpir:100", "dps:100"]
#: rows tuned on the tuning problem, added to the full run per task: on MRI (seconds per DDS run) by default;
#: on CT one DPS (500) run costs ~5.5 min on a 128 x 128 crop, so its zeta grid alone would add ~45 min
#: (ask for them with --methods ... dds:50+tuned dps:500+tuned)
FULL_TUNED = {"ct": [], "mri": ["dds:50+tuned", "dps:500+tuned", "dds:50x4+tuned", "diffpir:100+tuned",
                                "reddiff:100+tuned", "daps:100+tuned"]}
QUICK_METHODS = ["baseline", "cgls", "tv", "dds:20", "dps:50", "diffpir:20", "deepinv-dps:20",
                 "deepinv-diffpir:20"]
#: the native MRI tasks: a 256 x 256 slice costs 25 windows per denoiser call, so no DPS rows
NATIVE_METHODS = ["baseline", "cgsense", "cgls", "tv", "dds:50", "dds:50+tuned", "deepinv-diffpir:100",
                  "dds:50x4+tuned"]
QUICK_NATIVE = ["baseline", "cgsense", "tv", "dds:20", "deepinv-diffpir:20"]
BASELINES = ("baseline", "cgls", "cgsense", "tv")
SOLVERS = ("dps", "dds", "diffpir", "reddiff", "daps", "pigdm", "ddnm", "pnpdm")
DEEPINV = ("deepinv-dps", "deepinv-dps-annealed", "deepinv-diffpir")
DAPS_ODE_STEPS = 4
TV_LAMS = [10.0 ** (k / 2) for k in range(-10, 0)]  # 1e-5 .. 0.03, half decades (then refined)
TV_ITERS = 1000
#: Chambolle-Pock tau / sigma per task, checked on the tuning problems: MRI (||A|| = 1 << ||grad||) needs a
#: larger primal step (ratio 1 was still 5 dB from convergence after 300 iterations); CT is converged with 1
TV_STEP_RATIO = {"ct": 1.0, "mri": 10.0, "mri-native-4x": 10.0, "mri-native-8x": 10.0}
CGLS_MAX_ITERS = 100
#: methods that backpropagate through the denoiser: cost per NFE relative to a plain call (deadline estimates)
GRADIENT_METHODS = ("dps", "deepinv-dps", "deepinv-dps-annealed")
GRAD_COST = 2.2
#: solver settings searched on the tuning problem for methods given as ``NAME:NFE+tuned`` (every combination,
#: at the method's NFE; the documented defaults are in every grid). None of them changes the NFE.
#: DDS: eta (fresh-noise fraction of the re-noising), CG steps per level, top of the noise sampling_sigmas;
#: DPS: the per-step guidance weight zeta.
SOLVER_GRIDS: dict[str, dict[str, list[Any]]] = {
    "dds": {"eta": [0.5, 0.85, 1.0], "cg_iters": [5, 10, 20], "sigma_max": [None, 10.0, 3.0]},
    "dps": {"zeta": [0.5, 1.0, 2.0, 4.0]},
    "diffpir": {"lam": [0.3, 1.0, 3.0, 10.0], "zeta": [0.1, 0.3, 0.6]},
    "reddiff": {"lam": [0.25, 1.0, 4.0], "lr": [0.05, 0.1, 0.2]},
    "daps": {"mcmc": ["langevin", "exact"], "sigma_max": [None, 10.0, 3.0]},
}
#: the smaller grids of the native tasks (one DDS (50) run on a 256 x 256 slice costs ~45 s on one thread), one
#: posterior sample per point; DDS's defaults (eta 0.85, 5 CG steps, the prior's sigma_max) are in the grid
NATIVE_GRIDS: dict[str, dict[str, list[Any]]] = {
    "dds": {"eta": [0.85, 1.0], "cg_iters": [5, 20], "sigma_max": [None, 3.0]},
    "diffpir": {"lam": [1.0, 3.0], "zeta": [0.3, 0.6]},
}
NATIVE_TUNE_REPEATS = 1
#: posterior samples (seeds 0..K-1) per grid point on the tuning problem; the score is their mean PSNR
TUNE_REPEATS = {"dds": 4, "dps": 2, "diffpir": 2, "reddiff": 2, "daps": 2}
#: Goal 1's margin over TV per task (issue 16: >= 2 dB at native resolution, 4x)
GOAL1_DB = {"mri-native-4x": 2.0}


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One benchmark problem: the adapter's Problem and Context, and where it came from."""

    name: str
    problem: Problem
    context: Context
    adapter: ModalityAdapter
    seed: int


@dataclass
class Task:
    name: str  # "ct" | "mri" | a NATIVE_TASKS name
    title: str
    adapter_for: Callable[[int, Any], ModalityAdapter]  # (sim_seed, where) -> adapter
    input_for: Callable[[Any], str]
    wheres: list[Any]
    tune_where: Any
    tune_seed: int
    describe: str
    baseline_label: str
    tmp: tempfile.TemporaryDirectory | None = None


def _ct_crop_inputs(crops: Sequence[tuple[int, int]], size: int, tmp: Path) -> dict[tuple[int, int], str]:
    """Write the ``size`` x ``size`` crops (at 0.957 mm) of sample:head_ct as NIfTI files in ``tmp``."""
    import nibabel as nib

    from sciprior.io.grid import cut_stack
    from sciprior.modalities.ct.adapter import CTAdapter

    ct = CTAdapter(image_size=256, hu_window=CT_SETTINGS["hu_window"])
    _, _, grid = ct.read("sample:head_ct")
    st = cut_stack(grid, "middle", 256, True, -1000.0, "slices")
    hu = st.data[0].numpy().astype(np.float32)
    px = float(st.pixel_spacing[0])
    out = {}
    for top, left in crops:
        crop = hu[top:top + size, left:left + size]
        if crop.shape != (size, size):
            raise ValueError(f"CT crop at {(top, left)} of size {size} leaves the 256 x 256 slice")
        path = tmp / f"head_ct_crop_{top}_{left}.nii.gz"
        # NIfTI (i, j) = (column, row) with this affine reads back through the adapter as exactly ``crop``
        nib.save(nib.Nifti1Image(np.ascontiguousarray(crop.T)[:, :, None], np.diag([-px, -px, 5.0, 1.0])), path)
        out[(top, left)] = str(path)
    return out


def make_task(name: str, quick: bool, ct_size: int, problems: int | None, ct_views: int | None = None) -> Task:
    if name == "ct":
        views = int(ct_views or CT_SETTINGS["n_views"])
        ct_settings = {**CT_SETTINGS, "n_views": views}
        ct_title = f"CT sparse view ({views} parallel views over 180 degrees, i0 = 1e5)"
        from sciprior.modalities.ct.adapter import CTAdapter

        if ct_size == 256:
            n = problems or (1 if quick else 3)
            wheres = list(range(n))

            def adapter_for(seed, where):
                return CTAdapter(**ct_settings, image_size=256, slices="middle", sim_seed=seed)

            def input_for(where):
                return "sample:head_ct"

            return Task("ct", ct_title, adapter_for,
                        input_for, wheres, None, CT_TUNE_SEED,
                        "sample:head_ct, full 256 x 256 slice at 0.957 mm (the demo problem), noise seeds "
                        f"0..{n - 1}; TV/CGLS tuned on noise seed {CT_TUNE_SEED}", "FBP")
        if ct_size != 128:
            raise SystemExit("--ct-size must be 128 (crops) or 256 (the full slice)")
        n = problems or (1 if quick else 2)
        if n > len(CT_CROPS):
            raise SystemExit(f"--problems: at most {len(CT_CROPS)} CT crops are defined")
        tmp = tempfile.TemporaryDirectory(prefix="sciprior_bench_ct_")
        paths = _ct_crop_inputs(CT_CROPS[:n] + [CT_TUNE_CROP], 128, Path(tmp.name))

        def adapter_for(seed, where):
            return CTAdapter(**ct_settings, image_size=None, slices="middle", sim_seed=seed)

        def input_for(where):
            return paths[where]

        crops = ", ".join(f"({t}, {c})" for t, c in CT_CROPS[:n])
        task = Task("ct", ct_title, adapter_for, input_for,
                    CT_CROPS[:n], CT_TUNE_CROP, CT_TUNE_SEED,
                    f"sample:head_ct at 0.957 mm (256 x 256 as in the demo config), 128 x 128 crops with "
                    f"top-left (row, column) {crops}, noise seed = problem index; TV/CGLS tuned on the crop "
                    f"at {CT_TUNE_CROP} with noise seed {CT_TUNE_SEED}", "FBP", tmp)
        return task
    if name == "mri":
        from sciprior.modalities.mri.adapter import MRIAdapter

        n = problems or (1 if quick else len(MRI_SLICES))
        slices = [82] if n == 1 else MRI_SLICES[:n]
        if n > len(MRI_SLICES):
            raise SystemExit(f"--problems: at most {len(MRI_SLICES)} MRI slices are defined")

        def adapter_for(seed, where):
            return MRIAdapter(**MRI_SETTINGS, slices=int(where), sim_seed=seed)

        def input_for(where):
            return "sample:mni152"

        return Task("mri", "MRI 4x (8 coils, random column mask, centre 0.08, sigma 0.005)", adapter_for,
                    input_for, slices, MRI_TUNE_SLICE, 100,
                    f"sample:mni152 axial slices {', '.join(map(str, slices))} (held-out slab 74..90), "
                    f"64 x 64 as in the demo config, mask/noise seed = problem index; TV/CGLS tuned on slice "
                    f"{MRI_TUNE_SLICE} (seed 100)", "zero-filled")
    if name in NATIVE_TASKS:
        from sciprior.modalities.mri.adapter import MRIAdapter
        from sciprior.modalities.mri.samples import write_mni152_kspace

        accel = NATIVE_TASKS[name]
        n = problems or (1 if quick else len(MRI_SLICES))
        if n > len(MRI_SLICES):
            raise SystemExit(f"--problems: at most {len(MRI_SLICES)} MRI slices are defined")
        slices = [82] if n == 1 else MRI_SLICES[:n]
        tmp = tempfile.TemporaryDirectory(prefix="sciprior_bench_mri_native_")
        files = {z: str(write_mni152_kspace(Path(tmp.name) / f"mni152_slice{z}.h5", z, size=NATIVE_SIZE,
                                            coils=NATIVE_COILS, oversample=False))
                 for z in [*slices, MRI_TUNE_SLICE]}

        def adapter_for(seed, where):
            return MRIAdapter(acceleration=float(accel), center_fraction=0.32 / accel, mask_type="random",
                              sigma=None, image_model=NATIVE_IMAGE_MODEL, image_size=None, slices="middle",
                              espirit_crop=0.0, sim_seed=seed)

        def input_for(where):
            return files[where]

        return Task(name, f"MRI {accel}x at native resolution (1 mm, {NATIVE_SIZE} x {NATIVE_SIZE}, {NATIVE_COILS} "
                    f"coils, random column mask, centre {0.32 / accel:.2f}, fastMRI-layout k-space)", adapter_for,
                    input_for, slices, MRI_TUNE_SLICE, 100,
                    f"MNI152 axial slices {', '.join(map(str, slices))} (held-out slab 74..90) at 1 mm, zero-padded "
                    f"to {NATIVE_SIZE} x {NATIVE_SIZE}, written as fully sampled fastMRI files "
                    f"(`write_mni152_kspace`: {NATIVE_COILS} unnormalised birdcage coils, smooth object phase, "
                    "noise 0.4 % of the peak coil signal), read through `MRIAdapter` as a user's file is (ESPIRiT "
                    "maps, noise from the k-space corners, intensity from the CG-SENSE foreground percentile), "
                    f"undersampled retrospectively, mask seed = problem index; TV/CGLS/CG-SENSE tuned on slice "
                    f"{MRI_TUNE_SLICE} (seed 100)", "zero-filled", tmp)
    raise SystemExit(f"unknown task {name!r} (ct, mri, {', '.join(NATIVE_TASKS)})")


def load_case(task: Task, where: Any, seed: int, label: str) -> Case:
    adapter = task.adapter_for(seed, where).to("cpu")
    inp = task.input_for(where)
    problem, context = adapter.load(inp)
    return Case(label, problem, context, adapter, seed)


def load_denoiser(task: Task, case: Case, checkpoint: str) -> tuple[Denoiser, dict[str, Any]]:
    """The prior as ``sciprior reconstruct`` loads and wraps it for this problem (validated the same way)."""
    from sciprior.app.config import Job, PriorSpec, validate
    from sciprior.app.reconstruct import load_prior

    job = Job(case.adapter, task.input_for(task.wheres[0]), PriorSpec(checkpoint=checkpoint), "dds", {},
              device="cpu", output_dir=None, progress=False)
    validate(job)
    den = load_prior(job.plan, job.prior, torch.device("cpu"))
    info = {"checkpoint": str(job.plan.path), "wrap": job.plan.wrap, "roi": job.plan.roi,
            "overlap": job.prior.overlap, "image_shape": list(job.plan.image_shape)}
    return den, info


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def parse_method(spec: str) -> tuple[str, int | None, int, bool]:
    """``NAME[:NFE[xK]][+tuned]`` -> (name, NFE per posterior sample, K samples averaged into the estimate,
    settings tuned on the tuning problem over ``SOLVER_GRIDS[name]``)."""
    spec, plus, flag = spec.partition("+")
    if plus and flag.strip().lower() != "tuned":
        raise SystemExit(f"--methods {spec}+{flag}: the only suffix is +tuned")
    tuned = bool(plus)
    name, _, nfe = spec.partition(":")
    name = name.strip().lower()
    nfe, _, k = nfe.partition("x")
    if not (nfe.isdigit() or nfe == "") or not (k.isdigit() or k == ""):
        raise SystemExit(f"--methods {spec}: expected NAME[:NFE[xK]] with integers NFE and K, e.g. dds:50x4")
    samples = int(k) if k else 1
    if samples < 1 or (samples > 1 and name not in SOLVERS):
        raise SystemExit(f"--methods {spec}: xK (K posterior samples averaged) is for sciprior solvers, K >= 1")
    if name not in BASELINES + SOLVERS + DEEPINV:
        raise SystemExit(f"--methods: unknown method {name!r}; choose from {', '.join(BASELINES + SOLVERS + DEEPINV)}")
    if tuned and name not in SOLVER_GRIDS:
        raise SystemExit(f"--methods {spec}+tuned: tuning grids exist for {', '.join(SOLVER_GRIDS)} only")
    if name in BASELINES:
        return name, None, 1, False
    if not nfe:
        raise SystemExit(f"--methods: {name} needs an NFE budget, e.g. {name}:50")
    return name, int(nfe), samples, tuned


def solver_settings(name: str, nfe: int, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Keyword arguments that make solver ``name`` spend ``nfe`` denoiser evaluations; documented defaults
    otherwise, plus ``--set name.key=value`` overrides."""
    if name == "daps":
        ode = min(DAPS_ODE_STEPS, nfe)
        s = {"steps": max(1, nfe // ode), "ode_steps": ode}
    else:
        s = {"steps": nfe}
    s.update(overrides.get(name, {}))
    return s


def method_label(name: str, nfe: int | None, baseline_label: str, samples: int = 1, tuned: bool = False) -> str:
    if name == "baseline":
        return baseline_label
    if name == "cgls":
        return "CGLS"
    if name == "cgsense":
        return "CG-SENSE"
    if name == "tv":
        return "TV"
    pretty = {"dps": "DPS", "dds": "DDS", "diffpir": "DiffPIR", "reddiff": "RED-diff", "daps": "DAPS",
              "pigdm": "PiGDM", "ddnm": "DDNM", "pnpdm": "PnP-DM", "deepinv-dps": "deepinv DPS",
              "deepinv-dps-annealed": "deepinv DPS annealed",
              "deepinv-diffpir": "deepinv DiffPIR"}[name]
    label = f"{pretty} ({nfe})" if samples == 1 else f"{pretty} ({nfe}), mean of {samples} samples"
    return f"{label}, tuned" if tuned else label


def score(x: Tensor, ref: Tensor) -> dict[str, float]:
    """PSNR / SSIM in the prior's [-1, 1] domain (data range 2): the adapters' default metrics, as in report.json.
    Complex (2-channel) images are scored on their magnitude mapped as the magnitude model maps it, ``2 |x| - 1``."""
    x = x.reshape(ref.shape)
    if ref.dim() == 4 and ref.shape[1] == 2:
        x, ref = (2.0 * t.square().sum(1, keepdim=True).sqrt() - 1.0 for t in (x, ref))
    s = ModalityAdapter().metrics(x, ref)
    return {"psnr": float(s["psnr"]), "ssim": float(s["ssim"])}


def tune_baselines(case: Case, log: Callable[[str], None], step_ratio: float = 1.0) -> dict[str, Any]:
    """TV ``lam`` (best PSNR over ``TV_LAMS``) and CGLS iterations (best PSNR over the first
    ``CGLS_MAX_ITERS``) on the tuning problem."""
    from sciprior.solvers.classical import cgls, tv_pdhg

    ref = case.problem.reference
    tv_scores = {}
    for lam in TV_LAMS:
        r = tv_pdhg(case.problem, lam=lam, iters=TV_ITERS, step_ratio=step_ratio)
        tv_scores[lam] = score(r.mean, ref)["psnr"]
    best_lam = max(tv_scores, key=tv_scores.get)
    # refine by a quarter decade on each side
    for lam in (best_lam * 10 ** -0.25, best_lam * 10 ** 0.25):
        r = tv_pdhg(case.problem, lam=lam, iters=TV_ITERS, step_ratio=step_ratio)
        tv_scores[lam] = score(r.mean, ref)["psnr"]
    best_lam = max(tv_scores, key=tv_scores.get)
    trace: list[float] = []
    cgls(case.problem, iters=CGLS_MAX_ITERS, tol=0.0,
         callback=lambda i, x, x0, s: trace.append(score(x, ref)["psnr"]))
    best_it = int(np.argmax(trace)) + 1
    log(f"  tuned on {case.name}: TV lam = {best_lam:.3g} ({tv_scores[best_lam]:.2f} dB), "
        f"CGLS iters = {best_it} ({trace[best_it - 1]:.2f} dB)")
    out = {"tv_lam": best_lam, "tv_iters": TV_ITERS, "tv_step_ratio": step_ratio, "tv_psnr": tv_scores[best_lam],
           "tv_grid": {f"{k:.3g}": round(v, 3) for k, v in sorted(tv_scores.items())},
           "cgls_iters": best_it, "cgls_psnr": trace[best_it - 1]}
    if "bases" in case.context.extra:  # measured k-space: CG-SENSE on the complex image, stopped at its best
        cg = [score(cg_sense_image(case, it), ref)["psnr"] for it in range(1, CGLS_MAX_ITERS // 2 + 1)]
        out["cgsense_iters"] = int(np.argmax(cg)) + 1
        out["cgsense_psnr"] = cg[out["cgsense_iters"] - 1]
        log(f"  tuned on {case.name}: CG-SENSE iters = {out['cgsense_iters']} ({out['cgsense_psnr']:.2f} dB)")
    return out


def cg_sense_image(case: Case, iters: int) -> Tensor:
    """CG-SENSE (complex image, unregularised, ``iters`` iterations) of a k-space case in the prior's domain: the
    magnitude model's ``2 |m| / s - 1``, or the complex image ``m / s`` for the complex model."""
    from sciprior.modalities.mri.recon import cg_sense

    ctx = case.context
    bases, meas, scale = ctx.extra["bases"], ctx.extra["measured"], ctx.meta["scale"]
    with torch.no_grad():
        m = torch.cat([cg_sense(b, meas[i:i + 1], iters=iters, tol=0.0) for i, b in enumerate(bases)]) / scale
    if case.adapter.image_model == "complex":
        return m.to(case.problem.reference.dtype)
    return (2.0 * m.square().sum(1, keepdim=True).sqrt() - 1.0).to(case.problem.reference.dtype)


def tune_solver(name: str, nfe: int, den: Denoiser, case: Case, base: dict[str, Any],
                log: Callable[[str], None], grids: dict[str, dict[str, list[Any]]] | None = None,
                repeats: int | None = None) -> dict[str, Any]:
    """The ``SOLVER_GRIDS[name]`` point with the best mean PSNR over ``TUNE_REPEATS[name]`` posterior samples
    (seeds 0..K-1) on the tuning problem, at ``nfe`` NFE; ``base`` holds the settings that stay fixed."""
    import dataclasses
    import itertools

    grid = (grids or SOLVER_GRIDS)[name]
    repeats = repeats or TUNE_REPEATS[name]
    keys = list(grid)
    ref = case.problem.reference.to(torch.float64)
    scores: dict[str, float] = {}
    points: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        psnrs = []
        for seed in range(repeats):
            # run as the test problems are (run_solver), with this seed; a grid point overrides a --set value
            x, _ = run_solver(name, den, dataclasses.replace(case, seed=seed), {**base, **point})
            psnrs.append(score(x.detach().to(torch.float64), ref)["psnr"])
        key = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
        scores[key], points[key] = sum(psnrs) / len(psnrs), point
        log(f"  tuning {name}:{nfe} on {case.name}: {key}: {scores[key]:.2f} dB")
    best = max(scores, key=scores.get)
    log(f"  tuned {name}:{nfe} on {case.name}: {best} ({scores[best]:.2f} dB, {time.perf_counter() - t0:.0f} s)")
    return {"settings": points[best], "psnr": scores[best], "repeats": repeats,
            "grid": {k: round(v, 3) for k, v in scores.items()}}


def run_baseline(name: str, case: Case, tuned: dict[str, Any]) -> tuple[Tensor, int]:
    from sciprior.solvers.classical import cgls, tv_pdhg

    if name == "baseline":
        with torch.no_grad():
            return case.adapter.baseline(case.problem, case.context), 0
    if name == "cgls":
        return cgls(case.problem, iters=tuned["cgls_iters"], tol=0.0).mean, 0
    if name == "cgsense":
        if "cgsense_iters" not in tuned:
            raise ValueError("CG-SENSE is a baseline of the k-space tasks only")
        return cg_sense_image(case, tuned["cgsense_iters"]), 0
    return tv_pdhg(case.problem, lam=tuned["tv_lam"], iters=tuned["tv_iters"],
                   step_ratio=tuned.get("tv_step_ratio", 1.0)).mean, 0


def run_solver(name: str, den: Denoiser, case: Case, settings: dict[str, Any],
               samples: int = 1) -> tuple[Tensor, int]:
    """The solver's estimate (the mean of ``samples`` posterior samples) and the NFE it cost in total."""
    from sciprior.solvers import get_solver

    fn = get_solver(name)
    res = fn(den, case.problem, num_samples=samples, seeds=[case.seed] * case.problem.batch_size, progress=False,
             **settings)
    return res.mean, int(res.nfe) * samples


# --------------------------------------------------------------------------------------------
# deepinv side by side
# --------------------------------------------------------------------------------------------


def deepinv_version() -> str | None:
    try:
        import deepinv
    except ImportError:
        return None
    return getattr(deepinv, "__version__", "unknown")


def deepinv_denoiser(den: Denoiser):
    """Our ``D(x, sigma)`` on [-1, 1] images as a deepinv denoiser on [0, 1] images (deepinv's convention):
    ``D01(x, s) = (D(2 x - 1, 2 s) + 1) / 2``; ``sigma`` a float or a per-item tensor."""
    import deepinv as dinv

    class OurPrior01(dinv.models.Denoiser):
        def __init__(self):
            super().__init__()
            self.den = den

        def forward(self, x, sigma, *args, **kwargs):
            s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
            s = 2.0 * (s.expand(x.shape[0]) if s.numel() == 1 else s)
            return (self.den(2.0 * x - 1.0, s) + 1.0) / 2.0

    return OurPrior01()


def deepinv_physics(problem: Problem):
    """``(physics, y01, sigma)``: our operator and data on deepinv's [0, 1] images, whitened by the
    relative weights of the WLS view, complex measurements as real pairs."""
    import deepinv as dinv

    op = problem.operator
    y_eff, w = problem.noise.wls(problem.y)
    if isinstance(y_eff, tuple):
        raise TypeError("deepinv side by side: stacked measurements are not supported")
    w = w.to(torch.float64)
    wmean = float(w.mean())
    sw = (w / wmean).sqrt().to(torch.float32)
    sigma = 1.0 / math.sqrt(wmean)
    cplx = y_eff.is_complex()

    def to_real(t: Tensor) -> Tensor:
        return torch.view_as_real(t) if cplx else t

    def from_real(t: Tensor) -> Tensor:
        return torch.view_as_complex(t.contiguous()) if cplx else t

    def swb(t: Tensor) -> Tensor:
        return sw.to(t.real.dtype if t.is_complex() else t.dtype)

    def a01(x: Tensor) -> Tensor:
        return to_real(swb(x) * op(2.0 * x.to(torch.float32)))

    def a01_adj(r: Tensor) -> Tensor:
        t = from_real(r.to(torch.float32))
        return 2.0 * op.adjoint(swb(t) * t)

    with torch.no_grad():
        ones = op(torch.ones((1, *problem.image_shape), dtype=torch.float32))
        y01 = to_real(sw.to(y_eff.real.dtype) * (y_eff + ones)).to(torch.float32)
    physics = dinv.physics.LinearPhysics(A=a01, A_adjoint=a01_adj, noise_model=dinv.physics.GaussianNoise(sigma))
    return physics, y01, sigma


def run_deepinv(name: str, den: Denoiser, case: Case, nfe: int) -> tuple[Tensor, int]:
    """deepinv's DPS / DiffPIR (defaults except the step count) with our prior on our problem."""
    import deepinv as dinv

    counted = CountingDenoiser(den)
    model01 = deepinv_denoiser(counted)
    physics, y01, _ = deepinv_physics(case.problem)
    shape = (1, *case.problem.image_shape)
    torch.manual_seed(case.seed)
    if name in ("deepinv-dps", "deepinv-dps-annealed"):
        # the ancestral (DDPM) solver evaluates the denoiser at num_steps - 1 time points; "annealed" is the
        # guidance deepinv's docs recommend with weight ~ 1 (the default "norm" needs weights in the hundreds)
        kw = {"guidance": "annealed"} if name == "deepinv-dps-annealed" else {}
        model = dinv.sampling.DPS(model01, num_steps=nfe + 1, device="cpu", rng=torch.Generator(), **kw)
        with torch.no_grad():
            out = model(y01, physics, x_init=shape, seed=case.seed)
    else:
        model = dinv.sampling.DiffPIR(model01, data_fidelity=dinv.optim.data_fidelity.L2(), max_iter=nfe,
                                      device="cpu")
        with torch.no_grad():
            out = model(y01, physics, x_init=torch.full(shape, 0.5))
    return (2.0 * out.to(torch.float32) - 1.0).reshape(shape), counted.nfe


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class MethodResult:
    label: str
    name: str
    nfe_budget: int | None  # total: per-sample NFE x samples
    samples: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    tuned: bool = False  # settings from SOLVER_GRIDS, tuned on the tuning problem


def run_task(task: Task, methods: Sequence[tuple[str, int | None, int, bool]], checkpoint: str,
             overrides: dict[str, dict[str, Any]], json_out: Path | None, figure: Path | None,
             deadline: float | None, log: Callable[[str], None],
             only: Sequence[int] | None = None, reuse_tuning: Path | None = None,
             no_figure: bool = False) -> dict[str, Any]:
    dinv_ver = deepinv_version()
    tune_case = None
    if reuse_tuning is not None:
        tuned = json.loads(Path(reuse_tuning).read_text())["tuning"]
        log(f"[{task.name}] tuning reused from {reuse_tuning}: {tuned['tv_lam']:.3g}, {tuned['cgls_iters']}, "
            f"solvers {sorted(tuned.get('solvers', {}))}")
    else:
        log(f"[{task.name}] tuning problem")
        tune_case = load_case(task, task.tune_where, task.tune_seed, "tuning")
        tuned = tune_baselines(tune_case, log, TV_STEP_RATIO[task.name])
    tuned["solvers"] = dict(tuned.get("solvers", {}))
    den, prior_info = None, None
    for key in sorted({f"{n}:{nfe}" for n, nfe, _, t in methods if t} - set(tuned["solvers"])):
        n, nfe = key.split(":")[0], int(key.split(":")[1])
        if tune_case is None:
            tune_case = load_case(task, task.tune_where, task.tune_seed, "tuning")
        if den is None:
            den, prior_info = load_denoiser(task, tune_case, checkpoint)
        native = task.name in NATIVE_TASKS
        tuned["solvers"][key] = tune_solver(n, nfe, den, tune_case, solver_settings(n, nfe, overrides), log,
                                            NATIVE_GRIDS if native else None, NATIVE_TUNE_REPEATS if native else None)
    cases_meta = [(w, k) for k, w in enumerate(task.wheres) if only is None or k in only]
    results: dict[str, MethodResult] = {}
    for name, nfe, samples, tune in methods:
        label = method_label(name, nfe, task.baseline_label, samples, tune)
        mr = MethodResult(label, name, None if nfe is None else nfe * samples, samples, tuned=tune)
        if name in SOLVERS:
            mr.settings = solver_settings(name, nfe, overrides)
            if tune:
                mr.settings.update(tuned["solvers"][f"{name}:{nfe}"]["settings"])
            if samples > 1:
                mr.settings["num_samples"] = samples
        elif name == "tv":
            mr.settings = {"lam": tuned["tv_lam"], "iters": tuned["tv_iters"],
                           "step_ratio": tuned.get("tv_step_ratio", 1.0)}
        elif name == "cgls":
            mr.settings = {"iters": tuned["cgls_iters"]}
        elif name == "cgsense":
            mr.settings = {"iters": tuned.get("cgsense_iters")}
        elif name in DEEPINV:
            mr.settings = {"max_iter": nfe} if name == "deepinv-diffpir" else {"num_steps": nfe + 1}
            if name == "deepinv-dps-annealed":
                mr.settings["guidance"] = "annealed"
            if dinv_ver is None:
                mr.error = "deepinv not installed"
        results[label] = mr
    start = time.time()
    images: dict[str, np.ndarray] = {}
    titles: dict[str, str] = {"ground truth": "ground truth"}
    skipped: list[str] = []
    payload: dict[str, Any] = {}
    sec_per_nfe: float | None = None  # measured cost of one denoiser call inside a solver (deadline estimates)

    def save():
        payload.update({
            "task": task.name, "title": task.title, "problems": task.describe, "tuning": tuned,
            "prior": prior_info, "deepinv": dinv_ver, "methods": [vars(m) for m in results.values()],
            "skipped": skipped, "seconds": time.time() - start, "machine": machine_info(),
            "load_average": list(os.getloadavg()),
        })
        if json_out is not None:
            write_atomic(json_out, json.dumps(payload, indent=1))

    for where, k in cases_meta:
        if deadline is not None and time.time() > deadline:
            skipped.append(f"problem {where} (seed {k}): deadline reached before it started")
            log(f"[{task.name}] deadline reached: skipping problem {where}")
            continue
        case = load_case(task, where, k, f"{where}")
        ref = case.problem.reference
        if den is None:
            den, prior_info = load_denoiser(task, case, checkpoint)
            log(f"[{task.name}] prior {prior_info}")
        if k == 0:
            images["ground truth"] = shown(ref)
        for mr in results.values():
            if mr.error is not None:
                continue
            if deadline is not None:
                need = 0.0 if mr.name in BASELINES or sec_per_nfe is None else (
                    sec_per_nfe * (mr.nfe_budget or 0) * (GRAD_COST if mr.name in GRADIENT_METHODS else 1.0))
                if time.time() + need > deadline:
                    skipped.append(f"{mr.label} on problem {where}: time budget (needs ~{need:.0f} s)")
                    log(f"[{task.name}] skipping {mr.label} on {where}: needs ~{need:.0f} s, past the deadline")
                    continue
            t0 = time.perf_counter()
            try:
                if mr.name in BASELINES:
                    x, nfe = run_baseline(mr.name, case, tuned)
                elif mr.name in SOLVERS:
                    x, nfe = run_solver(mr.name, den, case,
                                        {k: v for k, v in mr.settings.items() if k != "num_samples"}, mr.samples)
                else:
                    x, nfe = run_deepinv(mr.name, den, case, mr.nfe_budget)
            except Exception as e:  # a failing method is reported, not fatal
                mr.error = f"{type(e).__name__}: {e}"
                log(f"[{task.name}] {mr.label} failed: {mr.error}")
                continue
            secs = time.perf_counter() - t0
            if mr.name in SOLVERS and mr.name not in GRADIENT_METHODS and nfe > 0:
                sec_per_nfe = secs / nfe
            s = score(x.detach().to(torch.float64), ref.to(torch.float64))
            mr.psnr.append(s["psnr"])
            mr.ssim.append(s["ssim"])
            mr.nfe.append(nfe)
            mr.seconds.append(secs)
            mr.problems.append(str(where))
            log(f"[{task.name}] problem {where}: {mr.label:22s} PSNR {s['psnr']:6.2f} SSIM {s['ssim']:.3f} "
                f"NFE {nfe:4d} {secs:7.1f} s")
            if k == 0:
                images[mr.label] = shown(x.detach().reshape(ref.shape))
                titles[mr.label] = f"{mr.label}\n{s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}"
            save()
    save()
    if figure is not None and len(images) > 1 and not no_figure:
        order = ["ground truth"] + [m.label for m in sorted(results.values(), key=_sort_key) if m.label in images]
        write_figure(task, {titles[k]: images[k] for k in order}, figure)
        payload["figure"] = str(figure)
        save()
    if task.tmp is not None:
        task.tmp.cleanup()
    return payload


def shown(x: Tensor) -> np.ndarray:
    """The first image of ``x`` for the figure: channel 0, or a complex image's magnitude as ``2 |x| - 1``."""
    x = x.detach().cpu()
    if x.shape[1] == 2:
        return (2.0 * x[0].square().sum(0).sqrt() - 1.0).numpy()
    return x[0, 0].numpy()


def write_figure(task: Task, images: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task.name == "ct":  # HU window [-160, 240] (brain-ish) in prior units
        lo, hi = ((np.array([-160.0, 240.0]) + 1024.0) / 4095.0 * 2.0 - 1.0).tolist()
    else:
        lo, hi = -1.0, 1.0
    n = len(images)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, images.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{task.title}: problem 0" + (" (display: HU -160..240)" if task.name == "ct" else ""),
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _pm(vals: list[float], digits: int) -> str:
    if not vals:
        return "-"
    m, s = mean_std(vals)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


FAMILY = list(BASELINES) + list(SOLVERS) + list(DEEPINV)


def _sort_key(m: MethodResult | dict[str, Any]) -> tuple[int, int]:
    d = m if isinstance(m, dict) else vars(m)
    return FAMILY.index(d["name"]), d["nfe_budget"] or 0


def _methods(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(payload["methods"], key=_sort_key)


def merge_payloads(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge results of the same task from several runs (e.g. problems split over processes): per-method
    lists are concatenated (problems already present are not duplicated)."""
    out: dict[str, dict[str, Any]] = {}
    for p in payloads:
        if p["task"] not in out:
            out[p["task"]] = json.loads(json.dumps(p))
            continue
        q = out[p["task"]]
        by_label = {m["label"]: m for m in q["methods"]}
        for m in p["methods"]:
            if m["label"] not in by_label:
                q["methods"].append(json.loads(json.dumps(m)))
                continue
            t = by_label[m["label"]]
            for i, prob in enumerate(m["problems"]):
                if prob in t["problems"]:
                    continue
                for key in ("psnr", "ssim", "nfe", "seconds", "problems"):
                    t[key].append(m[key][i])
            t["error"] = t["error"] or m["error"]
        solvers = q.setdefault("tuning", {}).setdefault("solvers", {})
        for key, tuned in ((p.get("tuning") or {}).get("solvers") or {}).items():
            solvers.setdefault(key, tuned)  # solvers tuned by a later run (e.g. new tuned rows)
        q["skipped"] = list(q.get("skipped", [])) + list(p.get("skipped", []))
        q["command"] = " ; ".join(c for c in (q.get("command"), p.get("command")) if c)
        q["seconds"] = max(q["seconds"], p["seconds"])
        q["figure"] = q.get("figure") or p.get("figure")
        q["load_average"] = p.get("load_average")
    for q in out.values():  # drop "not run" notes of runs that another process completed
        done = {(m["label"], pr) for m in q["methods"] for pr in m["problems"]}
        kept: dict[str, str] = {}
        for s in q.get("skipped", []):
            key = s.split(":", 1)[0]
            if key not in kept and not any(s.startswith(f"{lab} on problem {pr}:") for lab, pr in done):
                kept[key] = s
        q["skipped"] = list(kept.values())
    return sorted(out.values(), key=lambda p: ["ct", "mri", *NATIVE_TASKS].index(p["task"]))


def goals(payload: dict[str, Any]) -> list[str]:
    """Plain statements of the two goals for one task, from its numbers."""
    ms = [m for m in _methods(payload) if m["psnr"]]
    out = []
    tv = next((m for m in ms if m["name"] == "tv"), None)
    gains = []
    for m in (m for m in ms if m["name"] in SOLVERS) if tv else ():
        common = [p for p in m["problems"] if p in tv["problems"]]
        if common:
            mv = [v for p, v in zip(m["problems"], m["psnr"]) if p in common]
            tvv = [v for p, v in zip(tv["problems"], tv["psnr"]) if p in common]
            gains.append((sum(mv) / len(mv) - sum(tvv) / len(tvv), m, sum(mv) / len(mv), sum(tvv) / len(tvv),
                          len(common)))
    if gains:
        gain, best, mb, mt, n = max(gains, key=lambda g: g[0])
        margin = GOAL1_DB.get(payload.get("task"), 1.0)
        ok = gain >= margin
        out.append(f"- Goal 1 (best diffusion solver >= TV + {margin:g} dB): **{'holds' if ok else 'does not hold'}**: "
                   f"best is {best['label']} at {mb:.2f} dB vs TV {mt:.2f} dB ({gain:+.2f} dB, mean over the "
                   f"{n} problem(s) both ran on).")
    else:
        out.append("- Goal 1: not measured (TV or a diffusion solver missing).")
    classical = [m for m in ms if m["name"] in BASELINES]
    if gains and classical:
        best_c = max(classical, key=lambda m: mean_std(m["psnr"])[0])
        if best_c["name"] != "tv":
            common = [p for p in best["problems"] if p in best_c["problems"]]
            cv = [v for p, v in zip(best_c["problems"], best_c["psnr"]) if p in common]
            bv = [v for p, v in zip(best["problems"], best["psnr"]) if p in common]
            out.append(f"  For reference, the strongest classical baseline here is {best_c['label']} "
                       f"({mean_std(best_c['psnr'])[0]:.2f} dB over its problems), not TV; on the {len(common)} "
                       f"problem(s) {best['label']} also ran on it scores {sum(cv) / len(cv):.2f} dB vs "
                       f"{sum(bv) / len(bv):.2f} dB ({sum(bv) / len(bv) - sum(cv) / len(cv):+.2f} dB).")
    dds = [m for m in ms if m["name"] == "dds" and m["nfe_budget"] <= 50]
    dps = [m for m in ms if m["name"] == "dps" and m["nfe_budget"] >= 500]
    if dds and dps:
        for d in sorted(dds, key=lambda m: (m["nfe_budget"], m.get("tuned", False))):
            # DDS tuned on the tuning problem is compared with DPS tuned the same way (when it ran), and
            # DDS at its defaults with DPS at its defaults
            same = [m for m in dps if m.get("tuned", False) == d.get("tuned", False)] or dps
            ref = max(same, key=lambda m: m["nfe_budget"])
            common = [p for p in d["problems"] if p in ref["problems"]]
            if not common:
                continue
            dv = [v for p, v in zip(d["problems"], d["psnr"]) if p in common]
            rv = [v for p, v in zip(ref["problems"], ref["psnr"]) if p in common]
            dt = [v for p, v in zip(d["problems"], d["seconds"]) if p in common]
            rt = [v for p, v in zip(ref["problems"], ref["seconds"]) if p in common]
            diffdb = sum(dv) / len(dv) - sum(rv) / len(rv)
            speed = (sum(rt) / len(rt)) / (sum(dt) / len(dt))
            ok_q, ok_t = diffdb >= -0.5, speed >= 10.0
            out.append(f"- Goal 2 ({d['label']} within 0.5 dB of {ref['label']} and >= 10x faster): "
                       f"**{'holds' if ok_q and ok_t else 'does not hold'}**: PSNR difference "
                       f"{diffdb:+.2f} dB ({'ok' if ok_q else 'more than 0.5 dB below'}), speed-up "
                       f"{speed:.1f}x ({'ok' if ok_t else 'below 10x'}), on {len(common)} common problem(s).")
    else:
        out.append("- Goal 2: not measured (needs DDS at <= 50 NFE and DPS at >= 500 NFE).")
    return out


def render_markdown(payloads: Sequence[dict[str, Any]], command: str, date: str,
                    extra_notes: Sequence[str] = ()) -> str:
    lines = ["# Reconstruction benchmark: CT sparse view, MRI 4x, and MRI 4x / 8x at native resolution on held-out "
             "real slices", "",
             f"- command: `{command}`", f"- date: {date}"]
    machines = sorted({p.get("machine", "?") for p in payloads})
    lines += [f"- machine: {m}" for m in machines]
    lines += [f"- deepinv: {payloads[0].get('deepinv') or 'not installed'}",
              "- metrics: PSNR (dB) and SSIM (7 x 7 window) in the prior's domain [-1, 1] with data range 2 "
              "(`ModalityAdapter.metrics`, as in report.json): for CT the HU window [-1024, 3071] (4095 HU), "
              "for MRI the volume's 0.5..99.5 percentile range; mean ± std over the problems (population std).",
              "- NFE: denoiser evaluations counted per problem (one posterior sample); time: wall seconds per "
              "problem for the reconstruction alone (prior loaded once), 1 torch thread, on a machine shared "
              "with other jobs (load average in each task's header), so times are indicative.",
              "- one posterior sample per problem and solver (seed = problem index); solvers at their "
              "documented defaults except the step count (settings column), except rows marked `tuned`: "
              "their settings were chosen on the tuning problem (never a test problem) over a fixed grid, "
              "like TV's lam (grid and scores under the task).", ""]
    for p in payloads:
        lines += [f"## {p['title']}", "",
                  f"- problems: {p['problems']}",
                  f"- problems with results: {'; '.join(_ran(p)) or 'none'} (per method: the problems column; "
                  "means are over each method's own problems, the goals compare methods on common problems)",
                  f"- prior: `{(p.get('prior') or {}).get('checkpoint')}` (wrap {(p.get('prior') or {}).get('wrap')}"
                  f", roi {(p.get('prior') or {}).get('roi')}, overlap {(p.get('prior') or {}).get('overlap')})"
                  f"{_trained((p.get('prior') or {}).get('checkpoint'))}",
                  f"- tuned on the tuning problem: TV lam = {p['tuning']['tv_lam']:.3g} ({p['tuning']['tv_iters']} "
                  f"iterations, step ratio {p['tuning'].get('tv_step_ratio', 1.0):g}; grid {p['tuning']['tv_grid']}), "
                  f"CGLS stopped at {p['tuning']['cgls_iters']} "
                  "iterations" + _solver_tuning(p['tuning']),
                  f"- task wall time {p['seconds']:.0f} s; load average at the end {p.get('load_average')}", "",
                  "| method | PSNR [dB] | SSIM | NFE | time / problem [s] | problems (n: which) | settings |",
                  "|---|---|---|---|---|---|---|"]
        for m in _methods(p):
            sett = ", ".join(f"{k}={_short(v)}" for k, v in m["settings"].items()) or "-"
            if not m["psnr"]:
                why = m["error"] or "not run (time budget)"
                lines.append(f"| {m['label']} | {why} | - | - | - | - | {sett} |")
                continue
            nfe = sorted(set(m["nfe"]))
            nfe_s = "-" if not nfe else (str(nfe[0]) if len(nfe) == 1 else f"{nfe[0]}-{nfe[-1]}")
            t = f"{sum(m['seconds']) / len(m['seconds']):.1f}" if m["seconds"] else "-"
            err = f" (failed later: {m['error']})" if m["error"] else ""
            lines.append(f"| {m['label']} | {_pm(m['psnr'], 2)} | {_pm(m['ssim'], 3)} | {nfe_s} | {t} | "
                         f"{len(m['psnr'])}: {'; '.join(m['problems'])}{err} | {sett} |")
        if p.get("figure"):
            lines += ["", f"![{p['task']}]({Path(p['figure']).name})"]
        lines += ["", "Goals (computed from the table):", ""] + goals(p)
        if p.get("skipped"):
            lines += ["", "Not run (time budget):", ""] + [f"- {s}" for s in p["skipped"]]
        lines.append("")
    lines += ["## Notes", "", *NOTES, *(f"- {n}" for n in extra_notes), ""]
    return "\n".join(lines)


def _solver_tuning(tuning: dict[str, Any]) -> str:
    """``; dds:50 tuned to <settings> (<score>, ...; grid scores ...)`` for the solvers tuned on the tuning problem."""
    out = []
    for key, t in sorted(tuning.get("solvers", {}).items()):
        best = ", ".join(f"{k}={_short(v)}" for k, v in t["settings"].items())
        grid = "; ".join(f"{k}: {v:.2f}" for k, v in t["grid"].items())
        out.append(f"; {key} tuned to {best} ({t['psnr']:.2f} dB, mean of {t['repeats']} posterior samples; "
                   f"grid scores in dB: {grid})")
    return "".join(out)


def _trained(checkpoint: str | None) -> str:
    """``; trained N steps, training files: ...`` from the checkpoint's recorded metadata (best effort)."""
    try:
        cfg = yaml.safe_load((Path(checkpoint) / "config.yaml").read_text())
        meta = cfg["metadata"]
        files = [Path(f).name for f in meta["data"]["train_files"]]
        return (f"; trained {meta['training']['global_step']} optimizer steps (EMA weights: "
                f"{meta['training']['ema']}) on {', '.join(files)}")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return ""


def _ran(p: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for m in p["methods"]:
        for pr in m["problems"]:
            if pr not in seen:
                seen.append(pr)
    return seen


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


NOTES = [
    "- Held-out data: CT problems come from `sample:head_ct` (pydicom-data `693_UNCR.dcm`), the CT prior's "
    "validation slice, never trained on (the CT prior trains on `J2K_pixelrep_mismatch.dcm`, "
    "`explicit_VR-UN.dcm`, `CT_small.dcm`, `bad_sequence.dcm`). The other real CT files installed with "
    "pydicom/pydicom-data were checked and not used: `693_UNCI`/`693_J2KI`/`693_J2KR` are copies of the held-out "
    "slice and `eCT_Supplemental.dcm` is a derived perfusion (rCBF) map, not an attenuation image. MRI problems "
    "are MNI152 slices from the "
    "held-out slab 74..90 of `configs/mri/train.yaml` (the prior never saw 70..94).",
    "- CT deviation from the demo configs (when the problems are 128 x 128 crops): same physics (parallel "
    "views over 180 degrees, as many as the task title says, i0 = 1e5 photons, post-log WLS, HU window "
    "[-1024, 3071], 0.957 mm pixels, "
    "patch prior with 64 x 64 windows and overlap 0.25) on a 128 x 128 crop of the slice (9 windows per "
    "denoiser call instead of 25), so that DPS at 500 NFE (a backward pass through every window at every "
    "step) fits the CPU budget. Each crop is simulated as the whole object (no truncation).",
    "- DPS: `zeta` = 1 (its default) at every NFE; DDS: eta 0.85, 5 CG steps (defaults); DiffPIR: lam 1, "
    "zeta 0.3; RED-diff: lam 1, inv_sigma weighting, Adam; DAPS: `ode_steps` = 4 probability-flow Euler "
    "steps per annealing level and `steps` = NFE / 4 levels (NFE = ode_steps x steps), 100 Langevin steps "
    "per level (the paper's; they call only the likelihood).",
    "- deepinv: `deepinv.sampling.DPS` (VP sampling_sigmas, DDPM solver, weight 1, residual-norm guidance: its "
    "defaults) with `num_steps` = NFE + 1 time points, and `deepinv.sampling.DiffPIR` (lambda 7, zeta 0.1, "
    "its defaults) with `max_iter` = NFE; both get our EDM denoiser through the [0, 1] wrapper and our "
    "operator as a whitened `LinearPhysics` (module docstring). The NFE column counts the calls of our "
    "denoiser. With its default `guidance=\"norm\"` and weight 1, deepinv's DPS is barely guided (its own "
    "docstring: the norm form needs weights 'in the hundreds'); its unconditional run (weight 0) scored the "
    "same ~6-8 dB on MRI. The `deepinv DPS annealed` row uses `guidance=\"annealed\"`, the form deepinv "
    "documents for weight ~ 1 (still weight 1, no tuning).",
    "- Goal 2 reads 'within 0.5 dB' as: DDS's mean PSNR is at least DPS's minus 0.5 dB (better is within); "
    "the speed-up is the ratio of mean wall times on the same problems.",
]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for it in items:
        key, _, val = it.partition("=")
        name, _, k = key.partition(".")
        if not k or not val:
            raise SystemExit(f"--set expects SOLVER.KEY=VALUE, got {it!r}")
        out.setdefault(name.lower(), {})[k] = yaml.safe_load(val)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 problem per task, few solvers, small NFE")
    ap.add_argument("--tasks", nargs="*", default=["ct", "mri", *NATIVE_TASKS], choices=["ct", "mri", *NATIVE_TASKS])
    ap.add_argument("--methods", nargs="*", default=None,
                    help=f"NAME[:NFE[xK]][+tuned] list (default full: {' '.join(FULL_METHODS)}, plus on MRI "
                         f"{' '.join(FULL_TUNED['mri'])})")
    ap.add_argument("--problems", type=int, default=None, help="problems per task (default 2 CT crops, 4 MRI)")
    ap.add_argument("--only-problems", type=int, nargs="*", default=None,
                    help="run only these problem indices (0-based) of the task, e.g. to split a task over "
                         "processes (merge the JSON files with --render)")
    ap.add_argument("--ct-size", type=int, default=128, choices=[128, 256],
                    help="128: crops of the held-out slice; 256: the full slice (the demo problem)")
    ap.add_argument("--ct-views", type=int, default=None,
                    help=f"CT views over 180 degrees (default {CT_SETTINGS['n_views']})")
    ap.add_argument("--ct-prior", default="builtin:ct", help="CT prior checkpoint (default builtin:ct)")
    ap.add_argument("--mri-prior", default="builtin:mri", help="MRI prior checkpoint (default builtin:mri)")
    ap.add_argument("--native-prior", default="builtin:mri/native_complex",
                    help="prior of the native MRI tasks (default builtin:mri/native_complex)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SOLVER.KEY=VALUE", help="solver setting overrides")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="stop starting new runs after this many minutes (what is left is listed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results of this run (JSON)")
    ap.add_argument("--reuse-tuning", type=Path, default=None,
                    help="take TV lam / CGLS iterations from this earlier JSON result of the same task")
    ap.add_argument("--render", type=Path, nargs="*", default=None,
                    help="only render the markdown from these JSON results (e.g. of parallel runs)")
    ap.add_argument("--note", nargs="*", default=[], help="extra notes for the markdown (with --render)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown to write (atomically); default docs/benchmarks/reconstruction.md, with --quick a "
                         "scratch file (a quick check never overwrites the published table or figures)")
    ap.add_argument("--no-write", action="store_true", help="do not write the markdown (JSON / figures only)")
    ap.add_argument("--no-figure", action="store_true",
                    help="do not write reconstruction_<task>.png (e.g. for a partial run of problem 0)")
    args = ap.parse_args(argv)
    args.out = table_path(args.out, DEFAULT_OUT, args.quick)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/reconstruction.py", *(shlex.quote(a) for a in argv)])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    if args.render:
        found = [p for p in args.render if Path(p).is_file()]
        for p in args.render:
            if p not in found:
                print(f"--render: {p} does not exist, skipped", file=sys.stderr)
        if not found:
            raise SystemExit("--render: none of the JSON files exist")
        payloads = merge_payloads([json.loads(Path(p).read_text()) for p in found])
        cmds = sorted({p.get("command", "?") for p in payloads})
        text = render_markdown(payloads, " ; ".join(cmds), ", ".join(sorted({p.get("date", date) for p in payloads})),
                               args.note)
        write_atomic(args.out, text)
        print(text)
        return 0

    torch.set_num_threads(args.threads)
    def methods_for(task: str) -> list[tuple[str, int | None, int, bool]]:
        if task in NATIVE_TASKS:
            specs = args.methods or (QUICK_NATIVE if args.quick else NATIVE_METHODS)
        else:
            specs = args.methods or (QUICK_METHODS if args.quick else FULL_METHODS + FULL_TUNED[task])
        return [parse_method(m) for m in specs]

    for name in args.tasks:
        methods_for(name)  # a bad --methods entry fails before any compute
    overrides = parse_overrides(args.set)
    deadline = None if args.budget_minutes is None else time.time() + 60.0 * args.budget_minutes

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    payloads = []
    for name in args.tasks:
        task = make_task(name, args.quick, args.ct_size, args.problems, args.ct_views)
        ckpt = {"ct": args.ct_prior, "mri": args.mri_prior}.get(name, args.native_prior)
        out_dir = args.out.parent
        json_out = None
        if args.json is not None:
            json_out = args.json if len(args.tasks) == 1 else args.json.with_name(
                f"{args.json.stem}_{name}{args.json.suffix}")
        payload = run_task(task, methods_for(name), ckpt, overrides, json_out, out_dir / f"reconstruction_{name}.png",
                           deadline, log, only=args.only_problems, reuse_tuning=args.reuse_tuning,
                           no_figure=args.no_figure)
        payload["command"] = command
        payload["date"] = date
        if json_out is not None:
            write_atomic(json_out, json.dumps(payload, indent=1))
        payloads.append(payload)
    text = render_markdown(payloads, command, date)
    if not args.no_write:
        write_atomic(args.out, text)
        log(f"wrote {args.out}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
