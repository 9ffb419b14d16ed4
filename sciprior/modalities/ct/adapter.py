"""CT adapter: NIfTI / DICOM images (in HU) -> simulated 2D parallel- or fan-beam scan -> NIfTI in HU.

Prior domain: the HU window ``hu_window = (low, high)`` maps linearly onto [-1, 1]
(:class:`~sciprior.modalities.ct.units.CTNormalization`, the map the training reader uses too); the default
[-1024, 3071] is the shipped prior's. Keep it wide so the domain stays linear in attenuation.

Physics. Linear attenuation ``mu = mu_water (1 + HU / 1000)`` (1/mm; ``mu_water`` = 0.0192 /mm, water at
about 70 keV), so ``mu = alpha x + beta`` with ``alpha = mu_water (high - low) / 2000`` and
``beta = mu_water (1 + (low + high) / 2000)``. Line integrals ``p = P mu`` (dimensionless; ``P`` the
Joseph projector of :mod:`sciprior.modalities.ct.projector`, entries in mm). The problem handed to the
solvers is linear in ``x``: operator ``alpha * P`` and data relative to the offset ``c = P(beta)``:

- ``i0`` set (low dose / realistic): photon counts ``I ~ Poisson(i0 exp(-p))`` per detector element;
  the noise model is :class:`~sciprior.physics.noise.TransmissionPoisson` with the per-ray blank scan
  ``i0 exp(-c)``, so its
  weighted-least-squares view gives ``log(i0 / I) - c`` with weights ``I`` (the usual post-log WLS).
- ``i0: null``: Gaussian noise of std ``sigma`` on the line integrals ``p`` (dimensionless units).

Geometry: ``parallel`` (default 180 degree span) or ``fan`` (default 360 degrees; ``detector`` curved
``equiangular`` or ``flat``), ``n_views`` views evenly spaced over ``angular_range`` degrees from
``start_angle``: sparse view = few views over the full span, limited angle = a span below 180/360
degrees. Pixel size: the input's spacing after resizing (override with ``pixel_size``); pixels must be
square. Inputs: NIfTI (``.nii``/``.nii.gz``), a DICOM file or series directory, or ``sample:head_ct``.
HU below -1000 (padding values such as -2048 outside the scan circle) are clipped to -1000 (air)
before simulating. The FBP baseline assumes a full scan for fan beam (no Parker weights).

Output: ``reconstruction.nii.gz`` in HU on the reconstruction grid, with the input's affine (NIfTI) or
the affine built from the DICOM position, orientation and spacing, adjusted for the slices and any
resizing; ``std.nii.gz`` (HU) with several posterior samples.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sciprior.io.dicom import dicom_shape
from sciprior.io.grid import ImageStack, Slices, VolumeGrid, cut_stack, planned_depth, target_size
from sciprior.io.nifti import nifti_shape, read_nifti
from sciprior.io.paths import InputError
from sciprior.modalities.adapter import Context, ModalityAdapter, key, stack_problem, write_stack_nifti
from sciprior.modalities.ct.fbp import fbp
from sciprior.modalities.ct.geometry import uniform_angles
from sciprior.modalities.ct.io import read_ct_grid
from sciprior.modalities.ct.projector import FanBeamProjector, ParallelBeamProjector
from sciprior.modalities.ct.simulate import simulate_scan
from sciprior.modalities.ct.units import MU_WATER, CTNormalization
from sciprior.physics.noise import Gaussian, TransmissionPoisson
from sciprior.physics.operator import LinearOperator
from sciprior.physics.problem import Problem
from sciprior.ranges import FiniteFloat, ImageSize, NonNegativeFloat, PositiveFloat, PositiveInt, checked


class CTAdapter(ModalityAdapter):
    """2D CT of axial slices: simulated sparse-view, limited-angle or low-dose scans of HU images.

    Args:
        geometry: ``parallel`` or ``fan``.
        n_views: number of projection angles.
        angular_range: span of the views in degrees (default 180 parallel / 360 fan); smaller spans are
            limited-angle scans.
        start_angle: first view angle, degrees.
        n_det: detector elements (default: cover the image); det_spacing: detector pitch in mm
            (default: one pixel at the rotation axis).
        source_to_center, source_to_detector: fan-beam distances in mm (defaults: see
            :class:`~sciprior.modalities.ct.projector.FanBeamProjector`); detector: ``equiangular`` / ``flat``.
        i0: incident photons per detector element (Poisson counts; e.g. 1e4 low dose, 1e5-1e6 normal);
            ``None``: Gaussian noise on the line integrals instead.
        sigma: std of the Gaussian line-integral noise (dimensionless) when ``i0`` is None.
        hu_window: (low, high) HU mapped to [-1, 1] (must match the prior's training window).
        mu_water: linear attenuation of water, 1/mm.
        image_size: reconstruction grid (int: square); ``None`` keeps the input's size.
        pad_to_square: pad slices (with air) to the aspect ratio of ``image_size`` before resizing, so pixels stay
            square (as the training data are prepared).
        pixel_size: pixel size in mm of the reconstruction grid (default: from the file).
        slices: ``"middle"``, an index, ``"all"`` or a ``[start, stop)`` range of axial slices.
        fbp_filter, fbp_cutoff: FBP baseline filter (``ram-lak``, ``shepp-logan``, ``cosine``,
            ``hamming``, ``hann``) and its relative cutoff.
        sim_seed: seed of the simulated noise.
    """

    name = "ct"
    input_kinds = ("nifti", "dicom")
    physical_units = "HU"
    baseline_name = "FBP"

    @checked
    def __init__(self, geometry: Literal["parallel", "fan"] = "parallel", n_views: PositiveInt = 60,
                 angular_range: PositiveFloat | None = None, start_angle: FiniteFloat = 0.0,
                 n_det: PositiveInt | None = None, det_spacing: PositiveFloat | None = None,
                 source_to_center: PositiveFloat | None = None, source_to_detector: PositiveFloat | None = None,
                 detector: Literal["equiangular", "flat"] = "equiangular", i0: PositiveFloat | None = 1.0e5,
                 sigma: NonNegativeFloat = 0.0, hu_window: tuple[FiniteFloat, FiniteFloat] = (-1024.0, 3071.0),
                 mu_water: PositiveFloat = MU_WATER, image_size: ImageSize | tuple[ImageSize, ImageSize] | None = None,
                 pad_to_square: bool = True, pixel_size: PositiveFloat | None = None, slices: Slices = "middle",
                 fbp_filter: Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann"] = "ram-lak",
                 fbp_cutoff: PositiveFloat = 1.0, sim_seed: int = 0):
        super().__init__()
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        full = 180.0 if geometry == "parallel" else 360.0
        rng = full if angular_range is None else float(angular_range)
        if not 0 < rng <= 360:
            raise ValueError(f"angular_range must be in (0, 360] degrees, got {angular_range}")
        if i0 is not None and not i0 > 0:
            raise ValueError(f"i0 must be > 0 (photons per detector element) or null, got {i0}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        lo, hi = (float(v) for v in hu_window)
        if not hi > lo:
            raise ValueError(f"hu_window needs high > low, got {hu_window}")
        if not mu_water > 0:
            raise ValueError(f"mu_water must be > 0 (1/mm), got {mu_water}")
        if pixel_size is not None and not pixel_size > 0:
            raise ValueError(f"pixel_size must be > 0 mm, got {pixel_size}")
        if not 0 < fbp_cutoff <= 1:
            raise ValueError(f"fbp_cutoff must be in (0, 1], got {fbp_cutoff}")
        self.geometry, self.n_views, self.angular_range = geometry, int(n_views), rng
        self.start_angle = float(start_angle)
        self.n_det, self.det_spacing = n_det, det_spacing
        self.source_to_center, self.source_to_detector, self.detector = source_to_center, source_to_detector, detector
        self.i0 = None if i0 is None else float(i0)
        self.sigma = float(sigma)
        self.hu_window = (lo, hi)
        self.mu_water = float(mu_water)
        self.units = CTNormalization(lo, hi, self.mu_water)
        self.image_size, self.pad_to_square, self.pixel_size = image_size, bool(pad_to_square), pixel_size
        self.slices = slices
        self.fbp_filter, self.fbp_cutoff = fbp_filter, float(fbp_cutoff)
        self.sim_seed = int(sim_seed)

    # -- prior compatibility ------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1

    channels_key = "modality.name (CT images have 1 channel)"

    @property
    def alpha(self) -> float:
        """Attenuation (1/mm) per unit of the prior's domain."""
        return self.units.mu_affine[0]

    @property
    def beta(self) -> float:
        """Attenuation (1/mm) at x = 0."""
        return self.units.mu_affine[1]

    def check_trained_domain(self, trained: Any) -> str | None:
        """A message if the prior was trained on another modality or another HU window (checkpoint metadata)."""
        msg = super().check_trained_domain(trained)
        if msg or trained is None or trained.args.get("window") is None:
            return msg
        w = tuple(float(v) for v in trained.args["window"])
        if any(abs(a - b) > 1e-6 for a, b in zip(w, self.hu_window)):
            return (f"{key('hu_window')}={list(self.hu_window)} but the prior was trained with the HU window "
                    f"{list(w)}; set hu_window to {list(w)}")
        return None

    def image_shape(self, input: str) -> tuple[int, ...]:
        kind, paths = self.resolve(input)
        x, y, n = nifti_shape(paths[0]) if kind == "nifti" else dicom_shape(paths, modality="CT")
        h, w = target_size(self.image_size, (y, x))
        d = planned_depth(n, self.slices, key("slices"))
        return (1, h, w) if d is None else (1, d, h, w)

    def memory_estimate(self, image_shape: tuple[int, ...]) -> tuple[int, str]:
        """The images plus the projector's sparse system matrix and its transpose: about 0.35 x views x detector
        elements x image side non-zeros (measured 0.32-0.33 for parallel beam), 12 bytes each (int64 index,
        float32 value), twice."""
        h, w = image_shape[-2:]
        n_det = self.n_det or math.ceil(math.hypot(h, w)) + 1
        matrix = int(0.35 * self.n_views * n_det * max(h, w)) * 24
        base, _ = super().memory_estimate(image_shape)
        return base + matrix, (f"a {h}x{w} CT problem with {self.n_views} views and {n_det} detector elements "
                               f"(its system matrix)")

    # -- geometry ----------------------------------------------------------------------------------
    def angles(self) -> Tensor:
        """View angles in radians (float64)."""
        return uniform_angles(self.n_views, math.radians(self.angular_range), math.radians(self.start_angle))

    def projector(self, size: tuple[int, int], pixel_size: float) -> LinearOperator:
        """The 2D projector ``P`` (line integrals in (image units) x mm) for a ``size`` grid."""
        if self.geometry == "parallel":
            return ParallelBeamProjector(size, pixel_size, self.angles(), n_det=self.n_det,
                                         det_spacing=self.det_spacing)
        return FanBeamProjector(size, pixel_size, self.angles(), source_to_center=self.source_to_center,
                                source_to_detector=self.source_to_detector, detector=self.detector,
                                n_det=self.n_det, det_spacing=self.det_spacing)

    # -- load ---------------------------------------------------------------------------------------
    def read(self, input: str) -> tuple[str, list[Path], VolumeGrid]:
        kind, paths = self.resolve(input)
        if kind == "nifti":
            return kind, paths, read_nifti(paths[0])
        if kind == "dicom":
            return kind, paths, read_ct_grid(paths)
        raise InputError(f"input: the CT adapter reads NIfTI and DICOM images (in HU), not {kind} ({input!r})")

    def load(self, input: str) -> tuple[Problem, Context]:
        kind, paths, grid = self.read(input)
        imap = self.units.intensity_map()
        st: ImageStack = cut_stack(grid, self.slices, self.image_size, self.pad_to_square, -1000.0, key("slices"))
        d, h, w = st.data.shape
        px = self.pixel_size if self.pixel_size is not None else square_pixel_size(st.pixel_spacing,
                                                                                   key("image_size"))
        hu = st.data.clamp_min(-1000.0)
        xr = imap.to_prior(hu).to(self.dtype)[:, None].to(self.device)  # (D, 1, H, W)
        proj = self.projector((h, w), px).to(self.device)
        op2d = self.alpha * proj
        with torch.no_grad():
            offset = proj(torch.full((1, 1, h, w), self.beta, dtype=self.dtype, device=self.device))  # (1, 1, V, K)
            p = op2d(xr) + offset  # (D, 1, V, K) true line integrals
        gen = torch.Generator().manual_seed(self.sim_seed)
        meas = simulate_scan(p, self.i0, self.sigma, gen).to(self.device, self.dtype)
        if self.i0 is not None:
            noise = TransmissionPoisson(self.i0 * torch.exp(-offset[0]))  # (1, V, K) blank scan
            y, meas_log = meas, torch.log(self.i0 / meas.clamp_min(1.0))
        else:
            noise = Gaussian(self.sigma)
            y, meas_log = meas - offset, meas
        op, y, ref, off = stack_problem(op2d, y, xr, offset, d, st.stack)
        problem = Problem(op, y, noise, tuple(ref.shape[1:]), reference=ref,
                          metadata={"modality": self.name, "measurement_offset": off,
                                    "sigma_units": ("photon counts per detector element (Poisson, blank scan "
                                                    "i0 exp(-P beta))" if self.i0 is not None else
                                                    "line integrals (dimensionless), Gaussian")})
        ps = st.pixel_spacing
        ctx = Context(input, "sample" if input.startswith("sample:") else kind, paths, imap, meta={
            "source": kind, "file": str(paths[0]), "num_files": len(paths), "geometry": self.geometry,
            "n_views": self.n_views, "angular_range_deg": self.angular_range, "n_det": int(proj.n_det),
            "pixel_size_mm": px, "pixel_spacing_mm": list(ps), "image_size": [h, w],
            "slices": [st.plane_grid.start, st.plane_grid.start + d], "i0": self.i0,
            "sigma": self.sigma if self.i0 is None else None, "mu_water_per_mm": self.mu_water,
            "alpha_per_mm": self.alpha, "beta_per_mm": self.beta, "simulated": True,
            "normalisation": imap.as_dict(), "file_axcodes": grid.meta.get("file_axcodes"),
            **{k: v for k, v in grid.meta.items() if k.startswith("dicom_")},
        }, extra={"stack": st, "projector": proj, "post_log": meas_log})
        return problem, ctx

    # -- baseline, physical units, output ----------------------------------------------------------------
    def baseline(self, problem: Problem, context: Context) -> Tensor:
        """FBP of the post-log line integrals (offset removed), in the prior's domain."""
        proj = context.extra["projector"]
        y_eff, _ = problem.noise.wls(problem.y)
        sino = y_eff.reshape(-1, *y_eff.shape[-3:])  # (D, 1, V, K)
        x = fbp(proj, sino.to(self.dtype), filter=self.fbp_filter, cutoff=self.fbp_cutoff) / self.alpha
        if len(problem.image_shape) == 4:
            x = x.transpose(0, 1)[None]
        return x

    def write(self, result: Any, context: Context, out_dir: Path) -> list[Path]:
        hu = self.to_physical(result.mean, context)[0]  # (1, [D,] H, W)
        std = context.intensity.scale * result.std[0] if result.std is not None else None
        return write_stack_nifti(out_dir, context.extra["stack"], hu, std,
                                 ("sciprior CT reconstruction (HU)", "sciprior posterior std (HU)"))

    def measurement_image(self, problem: Problem, context: Context) -> tuple[np.ndarray, str] | None:
        p = context.extra["post_log"]
        p = p.reshape(-1, *p.shape[-2:])
        return p[p.shape[0] // 2].detach().cpu().numpy(), (
            f"sinogram ({self.n_views} views x {p.shape[-1]} det, post-log)")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "geometry": self.geometry, "n_views": self.n_views,
                "angular_range_deg": self.angular_range, "i0": self.i0, "hu_window": list(self.hu_window)}


def square_pixel_size(spacing: tuple[float, float], where: str, tol: float = 1e-3) -> float:
    """The pixel size of a grid with (row, column) ``spacing`` that must be square (the CT projectors)."""
    a, b = spacing
    if not math.isclose(a, b, rel_tol=tol):
        raise InputError(f"{where}: the reconstruction grid has non-square pixels ({a:.4g} x {b:.4g} mm); "
                         "set image_size to a square size with pad_to_square: true, or resample the input")
    return 0.5 * (a + b)


__all__ = ["CTAdapter", "square_pixel_size"]
