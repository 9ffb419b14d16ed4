"""The modality adapter contract: raw file -> :class:`~sciprior.physics.problem.Problem` in the prior's domain
-> output file, plus what the report shows of it.

A :class:`ModalityAdapter` is a plain class whose ``__init__`` signature is its config schema (the ``modality``
section of a reconstruction config, checked by jsonargparse before any compute). It

- ``check_input(input)``: cheap validation of the input (the file exists, is of a kind it reads), naming it;
- ``image_shape(input)``: the ``(C, H, W)`` / ``(C, D, H, W)`` image the problem will have, from file headers
  only (so a prior of the wrong size fails before any compute); ``axes(shape)`` names those axes (``slice``
  axes are covered slice by slice by a 2D prior, ``row``/``column`` and other spatial axes whole or in patches);
- ``load(input) -> (Problem, Context)``: reads the raw file or sample, normalises it into the prior's domain,
  simulates the measurement when the input is an image (then ``problem.reference`` is the ground truth in the
  prior's domain), and keeps the file's metadata in the context;
- ``baseline(problem, context)``: the classical reconstruction (FBP, zero-filled) in the prior's domain;
- ``to_physical(x, context)``: prior domain -> physical units (HU, MR magnitude in file units);
- ``write(result, context, out_dir) -> list[Path]``: the reconstruction in the modality's own format with the
  metadata kept, written atomically;
- ``metrics(x, reference)`` / ``preview(x)`` / ``measurement_image(problem, context)``: what report.json scores
  and report.png shows (defaults: PSNR/SSIM/NMSE on ``scored(x)`` with ``data_range``; 1 channel as grey, 2 as a
  magnitude, 3 or more as a false-colour RGB of the first, middle and last channel; middle slice of a stack);
- ``check_trained_domain(trained)``: a message if the prior was trained on data normalised another way.

Intensity mapping. The prior's domain is an affine image of the physical one. Each adapter states
``physical = offset + scale * x`` (:class:`IntensityMap`) and the *measured* quantity ``u`` (attenuation in 1/mm
for CT, the normalised complex image for MRI) as ``u = alpha * x + beta`` (``beta`` a constant image). The
problem handed to solvers is then linear in ``x``: operator ``alpha * A`` and data ``y - A(beta)``;
``problem.metadata["measurement_offset"]`` keeps ``A(beta)`` so the data-consistency residual can be reported
relative to the measured data (:func:`~sciprior.physics.problem.data_consistency`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciprior.io.grid import ImageStack, stack_to_file_order
from sciprior.io.nifti import write_nifti
from sciprior.io.paths import InputError, resolve_input
from sciprior.io.plain import finite_float
from sciprior.metrics import nmse, psnr, ssim
from sciprior.physics.operator import LinearOperator, Measurement
from sciprior.physics.problem import Problem
from sciprior.physics.stack import stack_operator

#: the config section an adapter's settings live in (adapter messages name ``modality.<key>``)
SECTION = "modality"


def key(name: str) -> str:
    """The config key of adapter setting ``name``, e.g. ``modality.image_size``."""
    return f"{SECTION}.{name}"


# ---------------------------------------------------------------------------------------------
# Intensity mapping
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntensityMap:
    """``physical = offset + scale * x`` between the prior's domain ``x`` and physical units.

    ``description`` states the domain in words (it goes into report.json).
    """

    scale: float
    offset: float
    units: str
    description: str

    def to_physical(self, x: Tensor) -> Tensor:
        return self.offset + self.scale * x

    def to_prior(self, v: Tensor) -> Tensor:
        return (v - self.offset) / self.scale

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset, "units": self.units, "description": self.description}


def window_map(low: float, high: float, units: str, what: str) -> IntensityMap:
    """The map of ``[low, high]`` (physical) onto ``[-1, 1]`` (prior)."""
    if not high > low:
        raise ValueError(f"{what}: the intensity window needs high > low, got ({low}, {high})")
    return IntensityMap((high - low) / 2.0, (high + low) / 2.0, units,
                        f"{what}: [{low:g}, {high:g}] {units} -> [-1, 1]")


def percentile_window(data: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The ``percentiles`` of an array's values as a window ``(low, high)`` for :func:`window_map` (``high = low + 1``
    when they are equal, e.g. a constant image)."""
    lo, hi = (float(v) for v in np.percentile(data, percentiles))
    return lo, (hi if hi > lo else lo + 1.0)


# ---------------------------------------------------------------------------------------------
# Context and the adapter base class
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What an adapter remembers between ``load`` and ``write``.

    Attributes:
        input: the input as given in the config; kind: ``nifti``/``dicom``/``hdf5``/``sample``...
        paths: resolved file paths.
        intensity: the prior <-> physical map.
        meta: plain, JSON-able metadata (spacing, affine, header fields, normalisation, geometry); it is
            echoed in report.json.
        extra: anything else the adapter needs to write its output (volume grid, headers, arrays).
    """

    input: str
    kind: str
    paths: list[Path]
    intensity: IntensityMap
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def magnitude(x: Tensor) -> Tensor:
    """``|x|`` over the channels of ``(B, C, ...)`` (the magnitude of 2-channel complex images), keeping the axis."""
    return x.square().sum(1, keepdim=True).sqrt()


class ModalityAdapter:
    """Base class of the per-modality adapters (see the module docstring for the contract).

    Subclasses set ``name`` (the registry name), ``input_kinds`` (file kinds of :mod:`sciprior.io.paths` they
    read), ``channels`` (image channels the prior must have) and implement ``image_shape``, ``load``,
    ``baseline`` and ``write``. Their ``__init__`` arguments are plain typed values: the config schema.
    ``device``/``dtype`` are set by ``sciprior reconstruct`` before ``load`` (:meth:`to`).
    """

    name: str = ""
    #: short description of the physical units of :meth:`to_physical`
    physical_units: str = ""
    input_kinds: tuple[str, ...] = ()
    baseline_name: str = "baseline"
    #: the config key that decides :attr:`channels` (named in mismatch errors)
    channels_key: str = SECTION

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    @property
    def channels(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ModalityAdapter:
        self.device, self.dtype = torch.device(device), dtype
        return self

    # -- inputs ----------------------------------------------------------------------------------
    def resolve(self, input: str, key: str = "input") -> tuple[str, list[Path]]:
        """``(kind, paths)`` of ``input`` (a file, a DICOM directory or ``sample:NAME`` of any modality)."""
        from sciprior.modalities import sample_table

        return resolve_input(input, key, sample_table)

    def check_input(self, input: str, key: str = "input") -> None:
        """Raise (naming ``key`` and the file) if ``input`` cannot be read by this adapter. Cheap."""
        kind, paths = self.resolve(input, key)
        if kind not in self.input_kinds:
            raise InputError(f"{key}: the {self.name} modality cannot read {kind} input {str(paths[0])!r}; it "
                             f"reads {', '.join(self.input_kinds)}")

    def image_shape(self, input: str) -> tuple[int, ...]:  # pragma: no cover - abstract
        """``(C, H, W)`` (one slice) or ``(C, D, H, W)`` (a stack) of the problem, from headers only."""
        raise NotImplementedError

    def axes(self, image_shape: tuple[int, ...]) -> tuple[str, ...]:
        """Names of the axes of ``image_shape``: ``channel`` first; ``slice`` axes are covered slice by slice by a
        2D prior; the others (``row``, ``column``, ...) whole or in patches. Default: slices, rows, columns."""
        return ("channel", "row", "column") if len(image_shape) == 3 else ("channel", "slice", "row", "column")

    def memory_estimate(self, image_shape: tuple[int, ...]) -> tuple[int, str]:
        """``(bytes, what)``: roughly the largest memory the problem of ``image_shape`` needs (checked against
        the machine before any compute). Default: 64 float32 images (solver state, samples, the operator's
        work arrays); modalities with large operators (a CT system matrix) say more."""
        return 64 * 4 * int(np.prod(image_shape)), f"a {'x'.join(map(str, image_shape))} image problem"

    # -- the reconstruction ----------------------------------------------------------------------
    def load(self, input: str) -> tuple[Problem, Context]:  # pragma: no cover - abstract
        raise NotImplementedError

    def baseline(self, problem: Problem, context: Context) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_physical(self, x: Tensor, context: Context) -> Tensor:
        """Prior domain -> physical units (``context.intensity``)."""
        return context.intensity.to_physical(x)

    def write(self, result: Any, context: Context, out_dir: Path) -> list[Path]:  # pragma: no cover
        raise NotImplementedError

    # -- the report ------------------------------------------------------------------------------
    def scored(self, x: Tensor) -> Tensor:
        """What the metrics and previews compare of an image ``(B, C, ...)`` (default: the image itself)."""
        return x

    def data_range(self, reference: Tensor) -> float:
        """The PSNR/SSIM data range of :meth:`scored` images (default 2: priors on [-1, 1])."""
        return 2.0

    def metrics(self, x: Tensor, reference: Tensor) -> dict[str, float | None]:
        """PSNR (dB), SSIM and NMSE of ``x`` against ``reference`` (first item), in the prior's domain."""
        x = self.scored(x[:1].detach().double().cpu())
        ref = self.scored(reference[:1].detach().double().cpu())
        rng = self.data_range(ref)
        h, w = x.shape[-2:]
        win = min(7, h - (1 - h % 2), w - (1 - w % 2))
        out = {"psnr": finite_float(psnr(x, ref, rng)[0]), "nmse": finite_float(nmse(x, ref)[0])}
        out["ssim"] = finite_float(ssim(x, ref, rng, win_size=win)[0]) if win >= 3 else None
        return out

    def extra_metrics(self, mean: Tensor, context: Context) -> dict[str, Any] | None:
        """Metrics in the modality's own conventions, added to report.json ``metrics`` (e.g. fastMRI's on the
        magnitude volume against the file's reference); None (the default) for none."""
        return None

    def metrics_domain(self, context: Context) -> dict[str, Any]:
        """How the metrics were computed (report.json ``metrics.domain``)."""
        return {"description": f"prior-normalised domain: {context.intensity.description}",
                "physical = offset + scale * x": {"scale": context.intensity.scale, "offset": context.intensity.offset},
                "physical_units": context.intensity.units, "data_range": 2.0}

    #: display range of :meth:`preview` images of the prior's domain (None: the image's own range)
    preview_range: tuple[float | None, float | None] = (-1.0, 1.0)

    def preview(self, x: Tensor) -> np.ndarray:
        """A 2D (or ``H x W x 3`` false-colour) array of the first item of ``x`` for report.png: the middle slice
        of a stack; 1 channel as is, 2 as a magnitude, 3 or more as the first, middle and last channel."""
        a = self.scored(x[:1].detach().double().cpu())[0]  # (C, [D,] H, W)
        if a.dim() == 4:
            a = a[:, a.shape[1] // 2]
        c = a.shape[0]
        if c == 1:
            return a[0].numpy()
        if c == 2:
            return magnitude(a[None])[0, 0].numpy()
        rgb = a[[0, c // 2, c - 1]].permute(1, 2, 0)
        lo, hi = float(rgb.min()), float(rgb.max())
        return ((rgb - lo) / (hi - lo if hi > lo else 1.0)).clamp(0, 1).numpy()

    def measurement_image(self, problem: Problem, context: Context) -> tuple[np.ndarray, str] | None:
        """A 2D array showing the measurement (sinogram, log k-space) and its title, for report.png."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"modality": self.name, "adapter": type(self).__name__, "channels": self.channels}

    def check_trained_domain(self, trained: Any) -> str | None:
        """A message naming the config key if the prior's training data (a
        :class:`~sciprior.modalities.TrainedReader`, from its checkpoint metadata) contradict this adapter's
        normalisation; else None. The default only checks the modality."""
        if trained is not None and trained.modality != self.name:
            return (f"the prior was trained on {trained.modality} data (reader {trained.reader!r}), not {self.name}; "
                    f"use a prior trained for the {self.name} modality")
        return None


# ---------------------------------------------------------------------------------------------
# Helpers the slice-stack adapters share (CT, MRI)
# ---------------------------------------------------------------------------------------------


def stack_problem(ops: LinearOperator | list[LinearOperator], y: Measurement, reference: Tensor | None,
                  offset: Tensor | None, depth: int, stack: bool) -> tuple[LinearOperator, Measurement,
                                                                            Tensor | None, Tensor | None]:
    """Operator, data, reference and measurement offset of ``depth`` slices measured one by one: for a 3D
    problem (``stack``) the slice axis becomes the depth of one volume item, else the single 2D slice.

    ``y`` and ``offset`` are ``(D, ...)`` per slice (``offset`` may be ``(1, ...)``, shared), ``reference``
    ``(D, C, H, W)``; ``ops`` one operator shared by the slices or one per slice.
    """
    if offset is not None:
        offset = offset.expand(depth, *offset.shape[1:])
    if not stack:
        return (ops if isinstance(ops, LinearOperator) else ops[0]), y, reference, offset
    ref = reference.transpose(0, 1)[None] if reference is not None else None
    return stack_operator(ops, depth), y[None], ref, (offset[None] if offset is not None else None)


def _as_stack(x: Tensor) -> np.ndarray:
    """``(1, [D,] H, W)`` -> ``(D, H, W)`` numpy float64."""
    a = x.detach().cpu().double()[0]
    return (a[None] if a.dim() == 2 else a).numpy()


def write_stack_nifti(out_dir: Path, stack: ImageStack, mean: Tensor, std: Tensor | None,
                      descriptions: tuple[str, str]) -> list[Path]:
    """``reconstruction.nii.gz`` (and ``std.nii.gz``) of a reconstructed slice stack in physical units, in the
    input file's voxel orientation with its affine adjusted for the slices and any resizing.

    ``mean``/``std``: ``(1, [D,] H, W)`` (one channel, physical units); ``descriptions``: the NIfTI ``descrip`` of
    the two files.
    """
    out_dir = Path(out_dir)
    data, aff = stack_to_file_order(_as_stack(mean), stack.plane_grid, stack.grid)
    written = [write_nifti(out_dir / "reconstruction.nii.gz", data, aff, stack.grid.header, descriptions[0])]
    if std is not None:
        data, aff = stack_to_file_order(_as_stack(std), stack.plane_grid, stack.grid)
        written.append(write_nifti(out_dir / "std.nii.gz", data, aff, stack.grid.header, descriptions[1]))
    return written


__all__ = ["Context", "IntensityMap", "ModalityAdapter", "SECTION", "key", "magnitude", "percentile_window",
           "stack_problem", "window_map", "write_stack_nifti"]
