"""Forward / adjoint speed of sciprior's MRI and CT operators against peers, side by side, on CPU.

Peers (each optional: a missing one becomes a row saying so):
  MRI  deepinv ``physics.MultiCoilMRI`` and sigpy ``mri.linop.Sense`` (Cartesian, mask as weights).
  CT   deepinv ``physics.Tomography`` (grid_sample rotations; exact adjoint through autograd, the
       default ``adjoint_via_backprop=True``, and its cheaper unmatched back-projection,
       ``adjoint_via_backprop=False``) and ASTRA's CPU projectors (``linear`` = Joseph, ``strip`` =
       area weights; ``line_fanflat`` / ``strip_fanflat`` for the fan-beam case), driven through
       persistent ASTRA data objects and ``FP`` / ``BP`` algorithms.

Fairness: same image size, coils / views / detector elements, float32 / complex64, batch 1 (sigpy and
ASTRA take a single unbatched image), same thread count: every (case, thread count) runs in a fresh
subprocess whose OpenMP / MKL / OpenBLAS / numba variables are set to the thread count, with
``torch.set_num_threads`` and threadpoolctl limits on top. Timing: ``--warmup`` untimed calls, then
``--repeats`` calls per operator, round robin across operators so that load changes on a shared
machine hit every candidate alike; torch operators run under ``torch.no_grad()``. Each operator is
called through its public API in its own data layout (deepinv MRI returns real ``(B, 2, C, H, W)``,
ours complex ``(B, C, H, W)``; deepinv CT sinograms are ``(B, 1, n_det, V)``, ours ``(B, 1, V, n_det)``);
forward+adjoint is ``adjoint(forward(x))``. Construction is timed separately (with the resident
memory it keeps and its peak), as is the first adjoint call (deepinv builds its autograd adjoint
lazily then). Before timing, every operator is checked to compute the same thing as ours (see
the agreement tables: relative differences, dot-product adjoint tests, sinogram scale against the
analytic Shepp-Logan line integrals).

Run in the benchmark venv (peers are not part of the core install):

    .venv-bench/bin/python benchmarks/operators.py                      # all cases, 1 thread
    .venv-bench/bin/python benchmarks/operators.py --threads 1 2 --repeats 15
    .venv-bench/bin/python benchmarks/operators.py --cases mri256 ct256x180 --repeats 5 --out /tmp/o.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks._timing` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import (  # noqa: E402
    cpu_model,
    interleaved,
    limit_threads,
    load_average,
    measure_build,
    summarize,
    thread_env,
    time_once,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "operators.md"

#: name -> (modality, image size, coils or views)
CASES: dict[str, tuple[str, int, int]] = {
    "mri256": ("mri", 256, 8),
    "mri512": ("mri", 512, 8),
    "ct256x180": ("ct", 256, 180),
    "ct512x180": ("ct", 512, 180),
    "ct512x360": ("ct", 512, 360),
    "fan256x360": ("fan", 256, 360),
}
OURS = "sciprior"
MRI_ACCEL, MRI_CENTER, SEED = 4, 0.08, 0
OPS = ("forward", "adjoint", "fwd+adj")


def n_det_for(size: int) -> int:
    """Detector elements of the parallel-beam cases: deepinv's fixed ``ceil(sqrt(2) * N)`` (the padded
    image width its rotations sample), used by every implementation."""
    return int(math.ceil(math.sqrt(2) * size))


# --------------------------------------------------------------------------------------------
# Implementations: a uniform wrapper around each library's operator
# --------------------------------------------------------------------------------------------


@dataclass
class Impl:
    """One operator under test, in its native data layout.

    ``forward(x)``/``adjoint(y)`` take and return the library's own arrays; ``x_in``/``y_in`` are
    inputs in that layout; ``to_image``/``to_meas`` convert outputs (and ``from_image``/``from_meas``
    inputs) to/from a canonical numpy layout: MRI image complex ``(H, W)``, k-space complex
    ``(C, H, W)``; CT image ``(H, W)``, sinogram ``(V, n_det)`` in sciprior's angle/detector order.
    """

    name: str
    forward: Callable
    adjoint: Callable
    from_image: Callable
    from_meas: Callable
    to_image: Callable
    to_meas: Callable
    note: str = ""
    memory_mib: float | None = None
    extra: dict = field(default_factory=dict)


def _np(t):
    import numpy as np
    import torch

    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def build_mri(name: str, size: int, coils: int) -> Callable[[], Impl]:
    """A builder (timed by the caller) of one MRI implementation, sharing maps and mask."""
    import torch

    from sciprior.modalities.mri.coils import birdcage_maps
    from sciprior.modalities.mri.masks import random_mask

    maps = birdcage_maps(coils, (size, size), dtype=torch.complex64)
    mask = random_mask(size, MRI_ACCEL, MRI_CENTER, seed=SEED).to(torch.float32)   # (W,)
    mask2d = mask[None, :].expand(size, size).contiguous()

    def to_tensor_image(z):   # canonical complex (H, W) -> (1, 2, H, W) float32
        z = torch.as_tensor(z)
        return torch.stack((z.real, z.imag))[None].to(torch.float32).contiguous()

    if name == OURS:
        def build():
            from sciprior.modalities.mri.operator import MultiCoilMRI

            op = MultiCoilMRI(maps, mask)
            return Impl(OURS, op.forward, op.adjoint, to_tensor_image,
                        lambda k: torch.as_tensor(k)[None].to(torch.complex64),
                        lambda x: _np(torch.complex(x[0, 0], x[0, 1])), lambda y: _np(y[0]),
                        note="complex (B, C, H, W) k-space; column mask (1, W)",
                        memory_mib=sum(b.numel() * b.element_size() for b in op.buffers()) / 2**20)
        return build
    if name == "deepinv":
        def build():
            import deepinv.physics as dp

            op = dp.MultiCoilMRI(mask=mask2d, coil_maps=maps, img_size=(size, size))

            def from_meas(k):
                k = torch.as_tensor(k)
                return torch.stack((k.real, k.imag))[None].to(torch.float32).contiguous()  # (1, 2, C, H, W)

            return Impl("deepinv", op.A, op.A_adjoint, to_tensor_image, from_meas,
                        lambda x: _np(torch.complex(x[0, 0], x[0, 1])),
                        lambda y: _np(torch.complex(y[0, 0], y[0, 1])),
                        note="real (B, 2, C, H, W) k-space; mask (H, W)",
                        memory_mib=sum(b.numel() * b.element_size() for b in op.buffers()) / 2**20)
        return build
    if name == "sigpy":
        def build():
            import numpy as np
            import sigpy.mri.linop as sml

            op = sml.Sense(maps.numpy(), weights=mask2d.numpy())
            return Impl("sigpy", op, op.H, lambda z: np.ascontiguousarray(z, dtype=np.complex64),
                        lambda k: np.ascontiguousarray(k, dtype=np.complex64), np.asarray, np.asarray,
                        note="numpy, unbatched (H, W) -> (C, H, W); weights = mask (H, W)")
        return build
    raise ValueError(f"operators: unknown MRI implementation {name!r}")


def _ct_geometry(size: int, views: int, fan: bool) -> dict:
    import numpy as np

    if not fan:
        return {"angles": np.arange(views) * (math.pi / views), "n_det": n_det_for(size)}
    # Fan beam, flat detector: sciprior's defaults (source at twice the image half-diagonal, detector
    # as far again, one pixel per element at the axis).
    r_img = 0.5 * math.hypot(size, size)
    src = 2 * r_img
    det = 2 * src
    spacing = det / src
    half = math.tan(math.asin(r_img / src)) * det / spacing
    return {"angles": np.arange(views) * (2 * math.pi / views), "n_det": 2 * int(math.ceil(half)) + 2,
            "source_to_center": src, "source_to_detector": det, "det_spacing": spacing}


def build_ct(name: str, size: int, views: int, fan: bool) -> Callable[[], Impl]:
    """A builder of one CT implementation (parallel beam, or flat-detector fan beam)."""
    import numpy as np
    import torch

    geo = _ct_geometry(size, views, fan)
    angles, n_det = geo["angles"], geo["n_det"]

    def t_img(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)[None, None]

    if name == OURS:
        def build():
            from sciprior.modalities.ct.projector import FanBeamProjector, ParallelBeamProjector

            if fan:
                op = FanBeamProjector((size, size), 1.0, torch.from_numpy(angles), detector="flat",
                                      source_to_center=geo["source_to_center"],
                                      source_to_detector=geo["source_to_detector"], n_det=n_det,
                                      det_spacing=geo["det_spacing"])
            else:
                op = ParallelBeamProjector((size, size), 1.0, torch.from_numpy(angles), n_det=n_det)
            return Impl(OURS, op.forward, op.adjoint, t_img, t_img, lambda x: _np(x[0, 0]),
                        lambda y: _np(y[0, 0]),
                        note=f"Joseph, sparse CSR (nnz {op.matrix.nnz:,}, {op.n_canon} canonical views x "
                             f"{op.n_groups} symmetries)",
                        memory_mib=op.memory_bytes() / 2**20, extra={"op": op})
        return build
    if name.startswith("deepinv"):
        exact = name == "deepinv"

        def build():
            import deepinv.physics as dp

            deg = torch.from_numpy(np.rad2deg(angles)).to(torch.float32)
            if fan:   # deepinv's source starts a quarter turn from sciprior's (checked on the phantom)
                deg = deg + 90.0
                fp = {"pixel_spacing": 1.0, "source_radius": geo["source_to_center"],
                      "detector_radius": geo["source_to_detector"] - geo["source_to_center"],
                      "n_detector_pixels": n_det, "detector_spacing": geo["det_spacing"]}
                op = dp.Tomography(deg, size, normalize=False, fan_beam=True, fan_parameters=fp)
            else:
                op = dp.Tomography(deg, size, normalize=False, adjoint_via_backprop=exact)

            def from_meas(s):
                return t_img(np.asarray(s).T)   # (V, K) -> (1, 1, K, V)

            return Impl(name, op.A, op.A_adjoint, t_img, from_meas, lambda x: _np(x[0, 0]),
                        lambda y: _np(y[0, 0]).T,
                        note=("exact adjoint (autograd vjp of grid_sample)" if exact or fan else
                              "adjoint = unfiltered IRadon back-projection (not matched)"),
                        memory_mib=sum(b.numel() * b.element_size() for b in op.buffers()) / 2**20,
                        extra={"op": op})
        return build
    if name.startswith("astra"):
        kind = name.split("-", 1)[1]

        def build():
            import astra

            vg = astra.create_vol_geom(size, size)
            if fan:
                pg = astra.create_proj_geom("fanflat", geo["det_spacing"], n_det, angles, geo["source_to_center"],
                                            geo["source_to_detector"] - geo["source_to_center"])
            else:
                pg = astra.create_proj_geom("parallel", 1.0, n_det, angles)
            pid = astra.create_projector(kind, pg, vg)
            vid = astra.data2d.create("-vol", vg, 0)
            sid = astra.data2d.create("-sino", pg, 0)
            cfg = astra.astra_dict("FP")
            cfg.update(ProjectorId=pid, ProjectionDataId=sid, VolumeDataId=vid)
            fp_id = astra.algorithm.create(cfg)
            cfg = astra.astra_dict("BP")
            cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=vid)
            bp_id = astra.algorithm.create(cfg)

            def forward(x):
                astra.data2d.store(vid, x)
                astra.algorithm.run(fp_id)
                return astra.data2d.get(sid)

            def adjoint(y):
                astra.data2d.store(sid, y)
                astra.algorithm.run(bp_id)
                return astra.data2d.get(vid)

            f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
            return Impl(name, forward, adjoint, f32, f32, np.asarray, np.asarray,
                        note=f"CPU projector '{kind}', FP/BP algorithms on persistent data objects "
                             "(numpy in/out, unbatched)",
                        extra={"ids": (pid, vid, sid, fp_id, bp_id)})
        return build
    raise ValueError(f"operators: unknown CT implementation {name!r}")


def deepinv_unmatched_from(base: Impl) -> Impl:
    """deepinv's ``adjoint_via_backprop=False`` variant as a shallow copy of an already built
    ``Tomography``: the same ``Radon``/``IRadon`` modules (it builds both either way), so the large
    sampling grids are not held twice."""
    op = copy.copy(base.extra["op"])
    op.adjoint_via_backprop = False
    return Impl("deepinv-approx-adjoint", op.A, op.A_adjoint, base.from_image, base.from_meas,
                base.to_image, base.to_meas,
                note="adjoint = unfiltered IRadon back-projection (not matched); shares deepinv's "
                     "object (same construction)", memory_mib=base.memory_mib, extra={"op": op})


def impl_names(modality: str) -> list[str]:
    if modality == "mri":
        return [OURS, "deepinv", "sigpy"]
    if modality == "ct":
        return [OURS, "deepinv", "deepinv-approx-adjoint", "astra-linear", "astra-strip"]
    return [OURS, "deepinv", "astra-line_fanflat", "astra-strip_fanflat"]


def peer_package(name: str) -> str:
    return {"deepinv": "deepinv", "sigpy": "sigpy", "astra": "astra"}.get(name.split("-")[0], name)


# --------------------------------------------------------------------------------------------
# Agreement checks (untimed)
# --------------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-300))


def _dot_test(impl: Impl, x_c, y_c) -> float:
    """``|<A x, y> - <x, A^H y>| / |<A x, y>|`` in float64 from canonical-layout inputs (chosen by the
    callers so that ``<A x, y>`` is far from zero: positive vectors for CT, ``y`` near ``A x`` for MRI)."""
    import numpy as np

    ax = np.asarray(impl.to_meas(impl.forward(impl.from_image(x_c))), dtype=np.complex128)
    aty = np.asarray(impl.to_image(impl.adjoint(impl.from_meas(y_c))), dtype=np.complex128)
    lhs = np.vdot(y_c.astype(np.complex128), ax)
    rhs = np.vdot(aty, x_c.astype(np.complex128))
    return float(abs(lhs - rhs) / abs(lhs))


def agreement_mri(impls: dict[str, Impl], size: int, coils: int) -> dict[str, dict]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))).astype(np.complex64)
    y = (rng.standard_normal((coils, size, size)) + 1j * rng.standard_normal((coils, size, size))).astype(
        np.complex64)
    ref = impls[OURS]
    ref_f = ref.to_meas(ref.forward(ref.from_image(x)))
    ref_a = ref.to_image(ref.adjoint(ref.from_meas(y)))
    y_dot = (ref_f + 0.5 * y * float(np.abs(ref_f).std() / np.abs(y).std())).astype(np.complex64)
    out = {}
    for k, im in impls.items():
        out[k] = {"fwd_vs_ours": _rel(im.to_meas(im.forward(im.from_image(x))), ref_f),
                  "adj_vs_ours": _rel(im.to_image(im.adjoint(im.from_meas(y))), ref_a),
                  "dot_test": _dot_test(im, x, y_dot)}
    return out


_MAPPINGS = ("as is", "detector reversed", "angles reversed", "both reversed")


def _map_sino(s, how: str):
    import numpy as np

    s = np.asarray(s)
    if how in ("angles reversed", "both reversed"):
        s = np.concatenate([s[:1], s[1:][::-1]])   # theta -> -theta (mod the scan period)
    if how in ("detector reversed", "both reversed"):
        s = s[:, ::-1]
    return np.ascontiguousarray(s)


def agreement_ct(impls: dict[str, Impl], size: int) -> dict[str, dict]:
    """Each implementation against the exact line integrals of a Shepp-Logan phantom and against ours.

    Conventions (rotation sense, detector direction) differ between libraries: the sinogram is compared
    after the one of four orderings that best matches the analytic sinogram (reported), and that
    ordering is then used for the adjoint comparison and dot test too.
    """
    import numpy as np

    from sciprior.modalities.ct.phantom import ellipse_ray_integrals, rasterize, shepp_logan

    op = impls[OURS].extra["op"]
    phantom = shepp_logan(radius=0.45 * size)
    img = rasterize(phantom, (size, size), 1.0)[0, 0].numpy()
    origin, direction = op.rays()
    exact = ellipse_ray_integrals(phantom, origin, direction)              # (V, K), line integrals
    ref = impls[OURS]
    ref_s = ref.to_meas(ref.forward(ref.from_image(img)))
    ref_bp = ref.to_image(ref.adjoint(ref.from_meas(exact.astype(np.float32))))
    rng = np.random.default_rng(SEED)
    xr = rng.random(img.shape).astype(np.float32)       # positive: <Ax, y> is far from zero
    yr = rng.random(exact.shape).astype(np.float32)
    out = {}
    for k, im in impls.items():
        raw = im.to_meas(im.forward(im.from_image(img)))
        errs = {h: _rel(_map_sino(raw, h), exact) for h in _MAPPINGS}
        how = min(errs, key=errs.get)
        s = _map_sino(raw, how)
        wrapped = Impl(im.name, im.forward, im.adjoint, im.from_image,
                       lambda m, im=im, how=how: im.from_meas(_map_sino(m, how)),   # involutions
                       im.to_image, lambda y, im=im, how=how: _map_sino(im.to_meas(y), how))
        row = {"mapping": how, "vs_exact": errs[how], "fwd_vs_ours": _rel(s, ref_s),
               "adj_vs_ours": _rel(wrapped.to_image(wrapped.adjoint(wrapped.from_meas(exact.astype(np.float32)))),
                                   ref_bp),
               "dot_test": _dot_test(wrapped, xr, yr)}
        row["scale"] = float((s * exact).sum() / (exact * exact).sum())   # least-squares gain onto exact
        out[k] = row
    return out


# --------------------------------------------------------------------------------------------
# Worker: one case at one thread count, in its own process
# --------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "numpy", "scipy", "deepinv", "sigpy", "astra-toolbox", "threadpoolctl"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_case(case: str, threads: int, repeats: int, warmup: int, budget: float) -> dict:
    import numpy as np
    import torch

    thread_info = limit_threads(threads)
    modality, size, count = CASES[case]
    res: dict = {"case": case, "modality": modality, "size": size, "count": count, "threads": threads,
                 "thread_info": thread_info, "load_start": load_average(), "impls": {}}
    impls: dict[str, Impl] = {}
    for name in impl_names(modality):
        row: dict = {}
        res["impls"][name] = row
        try:
            if name != OURS:
                __import__(peer_package(name))
        except Exception as e:   # noqa: BLE001 - any import failure is reported as a row
            row["error"] = f"not installed ({type(e).__name__}: {e})"
            continue
        try:
            if name == "deepinv-approx-adjoint" and "deepinv" in impls:
                base = impls["deepinv"]
                builder = lambda base=base: deepinv_unmatched_from(base)  # noqa: E731
            else:
                builder = (build_mri(name, size, count) if modality == "mri"
                           else build_ct(name, size, count, fan=modality == "fan"))
            impl, secs, retained, peak = measure_build(builder)
        except Exception as e:   # noqa: BLE001
            row["error"] = f"construction failed: {type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc(limit=3)
            continue
        row.update(build_s=secs, retained_mib=retained, build_peak_mib=peak, memory_mib=impl.memory_mib,
                   note=impl.note)
        impls[name] = impl

    with torch.no_grad():
        # Inputs in each native layout, from one canonical draw.
        rng = np.random.default_rng(SEED + 1)
        if modality == "mri":
            xc = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))).astype(np.complex64)
        else:
            xc = rng.random((size, size)).astype(np.float32)
        xs = {k: im.from_image(xc) for k, im in impls.items()}
        ys = {}
        for k, im in list(impls.items()):
            try:
                ys[k] = im.forward(xs[k])
                t_first = time_once(lambda im=im, k=k: im.adjoint(ys[k]))
                res["impls"][k]["first_adjoint_ms"] = 1e3 * t_first
            except Exception as e:   # noqa: BLE001
                res["impls"][k]["error"] = f"failed on first call: {type(e).__name__}: {e}"
                impls.pop(k)
        if OURS in impls:
            try:
                res["agreement"] = (agreement_mri(impls, size, count) if modality == "mri"
                                    else agreement_ct(impls, size))
            except Exception as e:   # noqa: BLE001
                res["agreement_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        calls = {
            "forward": {k: (lambda im=im, k=k: im.forward(xs[k])) for k, im in impls.items()},
            "adjoint": {k: (lambda im=im, k=k: im.adjoint(ys[k])) for k, im in impls.items()},
            "fwd+adj": {k: (lambda im=im, k=k: im.adjoint(im.forward(xs[k]))) for k, im in impls.items()},
        }
        for op_name in OPS:
            fns = calls[op_name]
            # Slow peers get fewer repeats: at most `budget` seconds each (at least 3 repeats).
            est = {k: time_once(fn) for k, fn in fns.items()}
            n_rep = {k: max(3, min(repeats, int(budget / max(t, 1e-9)))) for k, t in est.items()}
            times: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(max(n_rep.values(), default=0)):
                active = {k: fn for k, fn in fns.items() if r < n_rep[k]}
                got = interleaved(active, 1, warmup if r == 0 else 0)
                for k, v in got.items():
                    times[k].extend(v)
            for k, v in times.items():
                res["impls"][k][op_name] = summarize(v).as_dict()
    res["load_end"] = load_average()
    return res


# --------------------------------------------------------------------------------------------
# Driver: subprocesses, report
# --------------------------------------------------------------------------------------------


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions()}


def spawn(case: str, threads: int, args) -> dict:
    env = thread_env(threads)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--threads", str(threads),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--budget", str(args.budget),
               "--json-out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            return {"case": case, "threads": threads, "failed": True,
                    "error": f"worker exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
        return json.loads(out.read_text())


def _ms(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{st['median']:.2f} ({st['q1']:.2f}-{st['q3']:.2f})" if st["median"] < 100 else \
        f"{st['median']:.0f} ({st['q1']:.0f}-{st['q3']:.0f})"


def _ratio(peer: dict | None, ours: dict | None) -> str:
    if not peer or not ours:
        return "-"
    return f"{peer['median'] / ours['median']:.2f}x"


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def case_title(case: str) -> str:
    modality, size, count = CASES[case]
    if modality == "mri":
        return f"MRI {size}x{size}, {count} coils, {MRI_ACCEL}x column mask"
    geo = "parallel beam" if modality == "ct" else "fan beam (flat detector)"
    return f"CT {geo} {size}x{size}, {count} views, {_ct_geometry(size, count, modality == 'fan')['n_det']} detectors"


def render(results: list[dict], args, meta: dict) -> str:
    lines: list[str] = []
    add = lines.append
    v = meta["machine"]["versions"]
    add("# Operator speed on CPU: sciprior vs deepinv, ASTRA, sigpy")
    add("")
    add(f"Generated by `{meta['command']}` on {meta['date']}.")
    add(f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['os']}, "
        f"Python {meta['machine']['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    la = meta["load_start"]
    policy = getattr(args, "omp_wait_policy", None)
    add(f"Threads: {', '.join(str(t) for t in args.threads)} (torch intra-op, OpenMP/MKL/OpenBLAS/numba "
        "variables and threadpoolctl, in a fresh process per case); `OMP_WAIT_POLICY` "
        + (f"= {policy}" if policy else "unset (library default)") + ". Load average at start (1/5/15 min): "
        + ("unavailable" if la is None else " / ".join(f"{x:.2f}" for x in la))
        + " - the machine is shared, so absolute times are noisy; the operators of a table were timed "
        "interleaved (round robin), so their ratios are the robust numbers.")
    add(f"Protocol: {args.warmup} warm-up calls, then up to {args.repeats} timed calls per operator "
        f"(fewer for operators slower than {args.budget:g} s per series, at least 3), batch 1, float32 / "
        "complex64, `torch.no_grad()`. Cells: median ms (interquartile range). *Speedup* = peer median / "
        "sciprior median (> 1: sciprior faster), for forward / adjoint / forward+adjoint.")
    add("")
    goals = _goals(results)
    if goals:
        add("## Goals (issue 3)")
        add("")
        lines.extend(goals)
        add("")
    by_case: dict[str, list[dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], []).append(r)
    for case, runs in by_case.items():
        add(f"## {case_title(case)}")
        add("")
        for r in sorted(runs, key=lambda r: r["threads"]):
            if r.get("failed"):
                add(f"Threads {r['threads']}: run failed - {r['error']}")
                add("")
                continue
            load = r.get("load_start")
            add(f"Threads {r['threads']} (load average at case start "
                f"{'-' if load is None else f'{load[0]:.2f}'}):")
            add("")
            add("| operator | forward ms | adjoint ms | fwd+adj ms | speedup of sciprior (fwd / adj / fwd+adj) |")
            add("|---|---|---|---|---|")
            ours = r["impls"].get(OURS, {})
            for name, row in r["impls"].items():
                if "error" in row:
                    add(f"| {name} | {row['error']} | | | |")
                    continue
                sp = "-" if name == OURS else " / ".join(_ratio(row.get(o), ours.get(o)) for o in OPS)
                add(f"| {name} | {_ms(row.get('forward'))} | {_ms(row.get('adjoint'))} | "
                    f"{_ms(row.get('fwd+adj'))} | {sp} |")
            add("")
        first = min((r for r in runs if not r.get("failed")), key=lambda r: r["threads"], default=None)
        if first is None:
            continue
        add(f"Construction (threads {first['threads']}): time, resident memory kept after construction, "
            "peak extra memory during it (RSS high-water mark minus RSS before), memory of the operator's own "
            "buffers where it exposes them, and the first adjoint call (lazy set-up included):")
        add("")
        add("| operator | build s | kept MiB | peak MiB | buffers MiB | first adjoint ms | notes |")
        add("|---|---|---|---|---|---|---|")
        for name, row in first["impls"].items():
            if "error" in row:
                add(f"| {name} | - | - | - | - | - | {row['error']} |")
                continue
            add(f"| {name} | {row['build_s']:.3f} | {_fmt(row.get('retained_mib'))} | "
                f"{_fmt(row.get('build_peak_mib'))} | {_fmt(row.get('memory_mib'))} | "
                f"{_fmt(row.get('first_adjoint_ms'), '.1f')} | {row.get('note', '')} |")
        add("")
        agr = first.get("agreement")
        if agr:
            add(_agreement_table(first["modality"], agr))
            add("")
        elif first.get("agreement_error"):
            add(f"Agreement check failed: {first['agreement_error']}")
            add("")
    add("## Notes")
    add("")
    lines.extend(_thread_notes(results, meta))
    if meta.get("args", {}).get("omp_wait_policy") == "PASSIVE":
        add("- `OMP_WAIT_POLICY=PASSIVE` for every worker (all libraries alike): with the default active "
            "policy, idle OpenMP threads spin, and on this machine, with more runnable processes than cores, "
            "that made 2-thread torch runs several times slower than 1-thread runs in a trial (not shown).")
    lines.extend(NOTES)
    add("")
    return "\n".join(lines)


def _agreement_table(modality: str, agr: dict) -> str:
    if modality == "mri":
        out = ["Agreement (random complex image and k-space, canonical layout): relative L2 difference of "
               "forward and adjoint outputs from sciprior's, and the dot-product test "
               "`|<Ax, y> - <x, A^H y>| / |<Ax, y>|` (x random, y = A x + noise):", "",
               "| operator | forward vs sciprior | adjoint vs sciprior | dot test |", "|---|---|---|---|"]
        for k, a in agr.items():
            out.append(f"| {k} | {a['fwd_vs_ours']:.1e} | {a['adj_vs_ours']:.1e} | {a['dot_test']:.1e} |")
        return "\n".join(out)
    out = ["Agreement on a modified Shepp-Logan phantom (rasterized, 8x8 supersampling, radius 0.45 N): "
           "relative L2 error of the sinogram against the exact line integrals of the ellipses (the "
           "discretisation error of each projector), difference from sciprior's sinogram and from "
           "sciprior's back-projection of the exact sinogram, the ordering that maps the library's "
           "sinogram onto sciprior's (angle sense, detector direction), the dot-product adjoint test "
           "`|<Ax, y> - <x, A^T y>| / |<Ax, y>|` on uniform random x, y in [0, 1), and the sinogram scale "
           "(least-squares gain from the exact line integrals to the sinogram; 1 = line integrals in "
           "pixel units):", "",
           "| operator | vs exact | fwd vs sciprior | adjoint vs sciprior | ordering | dot test | scale |",
           "|---|---|---|---|---|---|---|"]
    for k, a in agr.items():
        out.append(f"| {k} | {a['vs_exact']:.2e} | {a['fwd_vs_ours']:.2e} | {a['adj_vs_ours']:.2e} | "
                   f"{a['mapping']} | {a['dot_test']:.1e} | {_fmt(a.get('scale'), '.4f')} |")
    return "\n".join(out)


def _goals(results: list[dict]) -> list[str]:
    out = []
    for r in sorted(results, key=lambda r: (r["threads"], r["case"])):
        if r.get("failed") or r["modality"] == "fan":
            continue
        ours = r["impls"].get(OURS, {})
        peer = r["impls"].get("deepinv", {})
        if "fwd+adj" not in ours or "fwd+adj" not in peer:
            continue
        ratio = peer["fwd+adj"]["median"] / ours["fwd+adj"]["median"]
        want = "no slower than" if r["modality"] == "mri" else "faster than"
        met = ratio >= 1.0 if r["modality"] == "mri" else ratio > 1.0
        out.append(f"- {case_title(r['case'])}, {r['threads']} thread(s): sciprior {want} deepinv? "
                   f"**{'met' if met else 'MISSED'}** - forward+adjoint {ours['fwd+adj']['median']:.2f} ms vs "
                   f"{peer['fwd+adj']['median']:.2f} ms ({ratio:.2f}x).")
    return out


def _thread_notes(results: list[dict], meta: dict) -> list[str]:
    """Flag cases where more threads made sciprior slower (a sign of an oversubscribed machine)."""
    runs: dict[str, dict[int, dict]] = {}
    for r in results:
        if not r.get("failed"):
            runs.setdefault(r["case"], {})[r["threads"]] = r
    slower = []
    for case, by_t in runs.items():
        ts = sorted(by_t)
        if len(ts) < 2:
            continue
        med = {t: by_t[t]["impls"].get(OURS, {}).get("fwd+adj", {}).get("median") for t in ts}
        if med[ts[0]] and med[ts[-1]] and med[ts[-1]] > med[ts[0]]:
            slower.append(f"{case} ({med[ts[0]]:.0f} -> {med[ts[-1]]:.0f} ms)")
    if not slower:
        return []
    most = max(t for by_t in runs.values() for t in by_t)
    la = meta.get("load_start")
    load = "" if not la else f" (load average {la[0]:.1f} on {meta['machine']['cores']} cores at the start)"
    return [f"- More threads made the torch operators slower here: sciprior forward+adjoint {', '.join(slower)}. "
            f"The machine was oversubscribed{load}: an OpenMP team of {most} threads waits at every "
            "barrier for its slowest member, and with other processes competing for the cores some member is "
            "often descheduled. The multi-thread tables therefore measure contention, not scaling; the "
            "1-thread tables are the comparison to use on this machine. sigpy and ASTRA are single-threaded "
            "either way."
            + ("" if meta.get("args", {}).get("omp_wait_policy") == "PASSIVE" else
               " `--omp-wait-policy PASSIVE` (idle OpenMP threads sleep instead of spinning) reduces this.")]


NOTES = [
    "- deepinv `Tomography` (0.5): by default (`adjoint_via_backprop=True`) `A_adjoint` is the exact "
    "adjoint, the vector-Jacobian product of the `grid_sample` forward (built lazily with `torch.func.vjp` "
    "on the first call, which then holds the forward's saved tensors). With `adjoint_via_backprop=False` "
    "it is `IRadon` without filter, a pixel-driven back-projection that is cheaper but *not* the adjoint: "
    "its dot test is off by about 1e-5 on positive vectors (1e-9 for the matched pairs, agreement tables), "
    "and in a separate check at 256 x 256, 180 views it differed from the exact adjoint by 6.8% (relative "
    "L2) on a white-noise sinogram and 0.6% on a uniform positive one. Its detector has `ceil(sqrt(2) N)` elements "
    "of one pixel (all implementations here use that count), and it pads the image so that the image "
    "centre sits half a pixel off its rotation axis (part of its difference from sciprior/ASTRA).",
    "- deepinv `Tomography` keeps a sampling grid per view for both `Radon` and `IRadon` "
    "(2 x V x (sqrt(2) N)^2 x 2 floats), hence its memory; sciprior keeps a sparse Joseph matrix for "
    "the canonical views only (about V/4 + 1 views; the other views are exact pixel permutations).",
    "- ASTRA (PyPI `astra-toolbox` wheel, which also pulls the CUDA runtime and cuFFT wheels but runs on "
    "CPU without a GPU): CPU `FP`/`BP` are single-threaded (the library does not link OpenMP), so "
    "thread counts above 1 do not help it. CPU `linear` is Joseph's kernel like sciprior's, so the two "
    "agree to float rounding; `strip` uses area weights. ASTRA CPU `BP` is the exact transpose of `FP` "
    "for the same projector (dot test). Inputs are numpy arrays; a CPU torch tensor converts without copy.",
    "- sigpy `Sense` runs on numpy (pocketfft, single-threaded) and takes one unbatched image; `weights` "
    "multiplies by `sqrt(weights)`, which is the mask for a 0/1 mask. Same centred orthonormal FFT as "
    "sciprior and deepinv, so outputs agree to float rounding.",
    "- Fan beam: deepinv's `fan_beam=True` geometry was mapped onto sciprior's flat detector "
    "(`pixel_spacing=1`, `source_radius=R`, `detector_radius=D-R`, same element count and pitch); its source "
    "starts a quarter turn from sciprior's, so it gets the angles + 90 degrees (found by matching the phantom "
    "sinogram). It samples every ray at equal steps of its projection on the central ray and sums them "
    "without the 1 / cos(gamma) path-length factor, hence its larger error against the exact line "
    "integrals. Its fan-beam adjoint is always the autograd one.",
    "- deepinv `MultiCoilMRI` uses the same centred orthonormal FFT (`ifftshift -> fft2 -> fftshift`); its "
    "k-space is real `(B, 2, C, H, W)`, so each call also converts layouts. sciprior folds the centring "
    "shifts into the coil maps (one `ifftshift` of the image instead of shifts of the C-coil array).",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--repeats", type=int, default=15, help="timed calls per operator and op (median/IQR)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds per timed series; slower operators get fewer repeats (min 3)")
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default=None,
                   help="set OMP_WAIT_POLICY in the workers (PASSIVE: idle OpenMP threads sleep instead of "
                        "spinning, which avoids large slowdowns of multi-thread runs on a busy machine)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--render-json", type=Path, default=None,
                   help="only re-render the report from a --json file of an earlier run (no timing)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or any(t < 1 for t in args.threads):
        p.error("--repeats >= 1, --warmup >= 0 and --threads >= 1 required")

    if args.worker:
        if args.worker not in CASES:
            p.error(f"unknown case {args.worker!r}")
        res = run_case(args.worker, args.threads[0], args.repeats, args.warmup, args.budget)
        args.json_out.write_text(json.dumps(res, default=float))
        return 0

    from benchmarks._common import write_atomic

    if args.render_json:
        saved = json.loads(args.render_json.read_text())
        meta, results = saved["meta"], saved["results"]
        args.threads = sorted({r["threads"] for r in results})
        for k in ("repeats", "warmup", "budget", "omp_wait_policy"):
            setattr(args, k, meta.get("args", {}).get(k, getattr(args, k)))
        write_atomic(args.out, render(results, args, meta))
        print(f"[operators] wrote {args.out} from {args.render_json}", file=sys.stderr)
        return 0
    meta = {"command": "python benchmarks/operators.py " + " ".join(shlex.quote(a) for a in
                                                                   (sys.argv[1:] if argv is None else argv)),
            "date": datetime.date.today().isoformat(), "machine": machine(), "load_start": load_average(),
            "args": {"repeats": args.repeats, "warmup": args.warmup, "budget": args.budget,
                     "omp_wait_policy": args.omp_wait_policy}}
    meta["command"] = meta["command"].strip()
    results = []
    for threads in args.threads:
        for case in args.cases:
            print(f"[operators] {case}, {threads} thread(s) ...", file=sys.stderr, flush=True)
            r = spawn(case, threads, args)
            if r.get("failed"):
                print(f"[operators]   FAILED: {r['error'][-400:]}", file=sys.stderr, flush=True)
            else:
                for name, row in r["impls"].items():
                    fa = row.get("fwd+adj")
                    print(f"[operators]   {name:24s} "
                          + (f"fwd+adj {fa['median']:.2f} ms" if fa else row.get("error", "?")),
                          file=sys.stderr, flush=True)
            results.append(r)
    if args.json:
        write_atomic(args.json, json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    write_atomic(args.out, render(results, args, meta))
    print(f"[operators] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
