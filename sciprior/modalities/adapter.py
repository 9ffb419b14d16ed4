"""The modality adapter contract: raw file -> :class:`Problem` in the prior's domain -> output file.

A :class:`ModalityAdapter` is a plain class whose ``__init__`` signature is its config schema (read by
jsonargparse in ``sciprior reconstruct``; see :mod:`sciprior.reconstruct`). It

- ``check_input(input)``: cheap validation of the input (the file exists, is of a known kind), naming it;
- ``image_shape(input)``: the ``(C, H, W)`` / ``(C, D, H, W)`` image the problem will have, from file
  headers only (so a prior of the wrong size fails before any compute);
- ``load(input) -> (Problem, Context)``: reads the raw file or sample, normalises it into the prior's
  domain, simulates the measurement when the input is an image (then ``problem.reference`` is the
  ground truth in the prior's domain), and keeps the file's metadata in the context;
- ``baseline(problem, context)``: the classical reconstruction (FBP, zero-filled) in the prior's domain;
- ``to_physical(x, context)``: prior domain -> physical units (HU, MR magnitude in file units);
- ``write(result, context, out_dir) -> list[Path]``: the reconstruction in the modality's own format
  with the metadata kept, written atomically (temp file in the target directory, then rename).

Intensity mapping. The prior's domain is an affine image of the physical one. Each adapter states
``physical = offset + scale * x`` (:class:`IntensityMap`) and the *measured* quantity ``u`` (attenuation
in 1/mm for CT, the normalised complex image for MRI) as ``u = alpha * x + beta`` (``beta`` a constant
image). The problem handed to solvers is then linear in ``x``: operator ``alpha * A`` and data
``y - A(beta)``; ``problem.metadata["measurement_offset"]`` keeps ``A(beta)`` so the data-consistency
residual can be reported relative to the measured data (:func:`data_consistency`).

Volumes and orientation. Image files are read with nibabel (NIfTI) or pydicom (DICOM), brought to
LPS voxel axes (DICOM patient axes) and cut into axial slices whose rows run anterior -> posterior and
columns patient right -> left, as :class:`sciprior.datasets.training_sets.SliceReader` does for the
training data. :class:`VolumeGrid` keeps the voxel-to-world affine through slicing, padding and
resizing, and writes results back in the file's own voxel orientation, so an output NIfTI overlays
the input in any viewer.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sciprior.io import atomic_write, default_mode  # noqa: F401  (re-exported)
from sciprior.modalities.base import (
    BlockMean,
    Convolution,
    LinearOperator,
    Measurement,
    gaussian_kernel,
    norm_sq,
    register_operator,
    tmap,
)
from sciprior.modalities.noise import Problem

#: ``sample:NAME`` inputs -> (module, function returning the path(s)); a fixed table, configs never
#: name code. The files ship inside installed packages (nothing is downloaded).
SAMPLES: dict[str, tuple[str, str]] = {
    "mni152": ("sciprior.datasets.sample_mri", "mni152_t1_path"),
    "head_ct": ("sciprior.datasets.sample_ct", "ct_head_paths"),
}
SAMPLE_ALIASES = {"mni152_t1": "mni152", "ct_head": "head_ct"}

Slices = Literal["middle", "all"] | int | tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Errors and small helpers
# ---------------------------------------------------------------------------------------------


class InputError(ValueError):
    """A problem with the input file or sample (message names the file and the config key)."""


def sample_paths(name: str, key: str = "input") -> list[Path]:
    """Paths of the bundled sample ``name`` (``sample:NAME``); FileNotFoundError naming ``key`` if unknown."""
    name = SAMPLE_ALIASES.get(name, name)
    if name not in SAMPLES:
        known = ", ".join(f"sample:{k}" for k in sorted(SAMPLES))
        raise FileNotFoundError(f"{key}: unknown sample 'sample:{name}'; known samples: {known}")
    module, fn = SAMPLES[name]
    try:
        out = getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{key}: sample 'sample:{name}' is not available ({module}.{fn}: {e})") from e
    paths = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    return [Path(p) for p in paths]


def resolve_input(spec: str, key: str = "input") -> tuple[str, list[Path]]:
    """``(kind, paths)`` for an input: ``sample:NAME``, a file, or a directory (of DICOM files).

    ``kind`` is ``"nifti"``, ``"dicom"``, ``"fastmri"`` (HDF5) or ``"npy"``. Raises FileNotFoundError
    naming ``key`` and the path when it does not exist, InputError when the kind is unknown.
    """
    s = os.path.expanduser(str(spec))
    if s.startswith("sample:"):
        paths = sample_paths(s[len("sample:"):], key)
    else:
        p = Path(s)
        if not p.exists():
            raise FileNotFoundError(f"{key}: no such file or directory: {str(p)!r}")
        if p.is_dir():
            paths = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not paths:
                raise InputError(f"{key}: directory {str(p)!r} contains no files")
        else:
            paths = [p]
    return file_kind(paths, key), paths


def file_kind(paths: Sequence[Path], key: str = "input") -> str:
    first = Path(paths[0])
    name = first.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        if len(paths) > 1:
            raise InputError(f"{key}: expected one NIfTI file, got {len(paths)} files")
        return "nifti"
    if name.endswith((".h5", ".hdf5")):
        if len(paths) > 1:
            raise InputError(f"{key}: expected one HDF5 file, got {len(paths)} files")
        return "fastmri"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".dcm") or _is_dicom(first):
        return "dicom"
    raise InputError(f"{key}: cannot tell the file type of {str(first)!r}; expected NIfTI (.nii, .nii.gz), "
                     "DICOM (.dcm or a directory of DICOM files) or fastMRI HDF5 (.h5)")


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
                header: Any | None = None, description: str = "") -> Path:
    """Write ``data`` as NIfTI-1 (float32) with ``affine`` (sform and qform, scanner coordinates), atomically."""
    import nibabel as nib

    arr = np.asarray(data, dtype=np.float32)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(np.float32)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    if description:
        img.header["descrip"] = description[:79].encode("ascii", "replace")
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


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
        return {"scale": self.scale, "offset": self.offset, "units": self.units,
                "description": self.description}


def window_map(low: float, high: float, units: str, what: str) -> IntensityMap:
    """The map of ``[low, high]`` (physical) onto ``[-1, 1]`` (prior)."""
    if not high > low:
        raise ValueError(f"{what}: the intensity window needs high > low, got ({low}, {high})")
    return IntensityMap((high - low) / 2.0, (high + low) / 2.0, units,
                        f"{what}: [{low:g}, {high:g}] {units} -> [-1, 1]")


# ---------------------------------------------------------------------------------------------
# Volumes: orientation, slices, resizing and the affine that follows them
# ---------------------------------------------------------------------------------------------


@dataclass
class VolumeGrid:
    """A 3D volume in LPS voxel axes with its voxel-to-world affine (RAS+ mm, the NIfTI convention).

    Attributes:
        data: ``(X, Y, Z)`` float32 array, voxel axes pointing to patient Left, Posterior, Superior.
        affine: 4x4 voxel (LPS order) -> world (RAS+, mm).
        to_lps: nibabel orientation transform from the file's voxel axes to LPS (``None``: already LPS).
        file_shape: shape of the volume in the file's own voxel order.
        file_affine: the file's own affine.
        header: the file's NIfTI header, if any (kept for the output).
        meta: plain metadata (spacing, DICOM attributes, ...).
    """

    data: np.ndarray
    affine: np.ndarray
    to_lps: np.ndarray | None
    file_shape: tuple[int, ...]
    file_affine: np.ndarray
    header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_array(cls, data: np.ndarray, affine: np.ndarray, header: Any = None,
                   meta: dict[str, Any] | None = None) -> VolumeGrid:
        """Reorient a volume (any voxel orientation given by ``affine``) to LPS."""
        import nibabel.orientations as nio

        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim != 3:
            raise InputError(f"VolumeGrid: expected a 2D or 3D image, got shape {data.shape}")
        affine = np.asarray(affine, dtype=np.float64)
        ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("LPS"))
        lps = nio.apply_orientation(data, ornt)
        lps_affine = affine @ nio.inv_ornt_aff(ornt, data.shape)
        return cls(np.ascontiguousarray(lps, dtype=np.float32), lps_affine, ornt, tuple(data.shape), affine,
                   header, dict(meta or {}))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes (mm) along the LPS voxel axes."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def num_slices(self) -> int:
        return int(self.data.shape[2])

    def slice_range(self, slices: Slices, key: str) -> tuple[int, int, bool]:
        """``(start, stop, stack)`` of the axial slices selected by ``slices`` (see :func:`select_slices`)."""
        return select_slices(slices, self.num_slices, key, "a volume with {n} axial slices")

    def planes(self, start: int, stop: int) -> np.ndarray:
        """Axial slices ``start..stop-1`` as ``(D, H, W)``: rows anterior -> posterior, columns R -> L."""
        return np.ascontiguousarray(self.data[:, :, start:stop].transpose(2, 1, 0))


@dataclass(frozen=True)
class PlaneGrid:
    """How the reconstructed ``(D, H, W)`` stack sits in a :class:`VolumeGrid` (LPS voxel indices).

    Column ``c`` of the stack is LPS voxel ``x = scale[0] * c + shift[0]``, row ``r`` is
    ``y = scale[1] * r + shift[1]``, slice ``d`` is ``z = start + d`` (continuous indices).
    """

    scale: tuple[float, float]
    shift: tuple[float, float]
    start: int
    depth: int
    size: tuple[int, int]  # (H, W) of the stack

    def lps_affine(self, grid: VolumeGrid) -> np.ndarray:
        m = np.eye(4)
        m[0, 0], m[1, 1] = self.scale
        m[0, 3], m[1, 3], m[2, 3] = self.shift[0], self.shift[1], float(self.start)
        return grid.affine @ m

    def pixel_spacing(self, grid: VolumeGrid) -> tuple[float, float]:
        """(row, column) spacing in mm of the stack."""
        sp = grid.spacing
        return sp[1] * self.scale[1], sp[0] * self.scale[0]


def target_size(image_size: int | tuple[int, int] | None, plane: tuple[int, int]) -> tuple[int, int]:
    """The reconstruction grid ``(H, W)`` for ``image_size`` (None keeps ``plane``; an int is a square)."""
    if image_size is None:
        return plane
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


def fit_planes(planes: np.ndarray, image_size: int | tuple[int, int] | None, pad_to_square: bool,
               pad_value: float) -> tuple[Tensor, tuple[float, float], tuple[float, float]]:
    """Pad (to the aspect ratio of ``image_size``, with ``pad_value``) and resize ``(D, H, W)`` planes.

    The same steps as the training data (:func:`sciprior.datasets.training_sets.resize_example`): pad
    symmetrically to the target's aspect ratio (a square for an int size), then bilinear resizing with
    antialiasing (``align_corners=False``: output pixel ``i`` covers input continuous index
    ``(i + 0.5) f - 0.5``). Returns the float64 stack and, per axis (column, row), the ``scale`` and
    ``shift`` that map output indices to input indices (see :class:`PlaneGrid`).
    """
    img = torch.from_numpy(np.asarray(planes, dtype=np.float64))
    d, h, w = img.shape
    th, tw = target_size(image_size, (h, w))
    pad = [0, 0, 0, 0]  # left, right, top, bottom
    if pad_to_square and image_size is not None and (h, w) != (th, tw):
        target_w = max(w, round(h * tw / th))
        target_h = max(h, round(target_w * th / tw))
        target_w = max(target_w, round(target_h * tw / th))
        ph, pw = target_h - h, target_w - w
        pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
        if ph or pw:
            img = torch.nn.functional.pad(img[None], pad, value=float(pad_value))[0]
    hp, wp = img.shape[-2:]
    if (th, tw) != (hp, wp):
        img = torch.nn.functional.interpolate(img[:, None], size=(th, tw), mode="bilinear",
                                              align_corners=False, antialias=True)[:, 0]
    fc, fr = wp / tw, hp / th
    return img, (fc, fr), (0.5 * fc - 0.5 - pad[0], 0.5 * fr - 0.5 - pad[2])


@dataclass
class ImageStack:
    """Slices cut from a volume and fitted to the reconstruction grid.

    ``data`` is ``(D, H, W)`` float64 in the file's units; ``stack`` says whether the problem is 3D
    (``(C, D, H, W)``) or one 2D slice (``D == 1``).
    """

    data: Tensor
    grid: VolumeGrid
    plane_grid: PlaneGrid
    stack: bool

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        return self.plane_grid.pixel_spacing(self.grid)


def select_slices(slices: Slices, n: int, key: str, what: str = "a volume with {n} slices") -> tuple[int, int, bool]:
    """``(start, stop, stack)`` of the slices selected by ``slices`` (see :data:`Slices`) out of ``n``;
    ``stack`` is True for a 3D block, False for one 2D slice. Negative indices count from the end.
    Out-of-range selections raise :class:`InputError` naming ``key`` and ``what`` (formatted with ``n``)."""
    where = what.format(n=n)
    if slices == "middle":
        return n // 2, n // 2 + 1, False
    if slices == "all":
        return 0, n, True
    if isinstance(slices, int) and not isinstance(slices, bool):
        k = slices + n if slices < 0 else slices
        if not 0 <= k < n:
            raise InputError(f"{key}: slice {slices} is out of range for {where}")
        return k, k + 1, False
    start, stop = (int(v) for v in slices)
    start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
    if not 0 <= start < stop <= n:
        raise InputError(f"{key}: slice range {tuple(slices)} is empty or out of range for {where}")
    return start, stop, True


def cut_stack(grid: VolumeGrid, slices: Slices, image_size: int | tuple[int, int] | None, pad_to_square: bool,
              pad_value: float, key: str) -> ImageStack:
    """Select ``slices`` of ``grid`` and pad/resize them to ``image_size`` (see :func:`fit_planes`)."""
    start, stop, stack = grid.slice_range(slices, key)
    data, scale, shift = fit_planes(grid.planes(start, stop), image_size, pad_to_square, pad_value)
    pg = PlaneGrid(scale, shift, start, stop - start, tuple(data.shape[-2:]))
    return ImageStack(data, grid, pg, stack)


def planned_size(plane: tuple[int, int], image_size: int | tuple[int, int] | None,
                 pad_to_square: bool) -> tuple[int, int]:
    """``(H, W)`` that :func:`fit_planes` produces for an input plane of size ``plane``."""
    return target_size(image_size, plane)


def planned_depth(num_slices: int, slices: Slices) -> int | None:
    """Depth of the problem for ``slices`` of a volume with ``num_slices`` slices (None: one 2D slice)."""
    if slices == "middle" or (isinstance(slices, int) and not isinstance(slices, bool)):
        return None
    if slices == "all":
        return num_slices
    start, stop = (int(v) for v in slices)
    start, stop = (start + num_slices if start < 0 else start), (stop + num_slices if stop < 0 else stop)
    return max(stop - start, 0)


def stack_to_file_order(stack: np.ndarray, plane_grid: PlaneGrid, grid: VolumeGrid) -> tuple[np.ndarray, np.ndarray]:
    """A ``(D, H, W)`` stack on ``plane_grid`` -> ``(data, affine)`` in the input file's voxel orientation."""
    import nibabel.orientations as nio

    lps = np.ascontiguousarray(np.asarray(stack).transpose(2, 1, 0))  # (W, H, D) = LPS voxel order
    aff = plane_grid.lps_affine(grid)
    if grid.to_lps is None:
        return lps, aff
    back = nio.ornt_transform(nio.axcodes2ornt("LPS"), nio.io_orientation(grid.file_affine))
    data = nio.apply_orientation(lps, back)
    return np.ascontiguousarray(data), aff @ nio.inv_ornt_aff(back, lps.shape)


def read_nifti(path: Path, key: str = "input") -> VolumeGrid:
    """A NIfTI image (2D or 3D; a 4D file must have one volume) as an LPS :class:`VolumeGrid`."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises several types; name the file
        raise InputError(f"{key}: cannot read NIfTI file {str(path)!r}: {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{key}: {str(path)!r} has shape {data.shape}; expected a 2D or 3D image")
    if not np.isfinite(data).all():
        raise InputError(f"{key}: {str(path)!r} contains {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    affine = img.affine if img.affine is not None else np.eye(4)
    return VolumeGrid.from_array(data, affine, header=img.header,
                                 meta={"source": "nifti", "file": str(path),
                                       "file_axcodes": "".join(nib.aff2axcodes(affine))})


def nifti_shape(path: Path, key: str = "input") -> tuple[int, ...]:
    """Spatial shape of a NIfTI file from its header only, in LPS voxel order."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:
        raise InputError(f"{key}: cannot read NIfTI file {str(path)!r}: {e}") from e
    shape = tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    return lps_shape_from_file(shape, img.affine if img.affine is not None else np.eye(4))


def lps_shape_from_file(shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """Shape of a volume after reorientation to LPS."""
    import nibabel.orientations as nio

    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("LPS"))
    out = [0, 0, 0]
    for i, (ax, _) in enumerate(ornt):
        out[int(ax)] = int(shape[i])
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Operators the adapters compose
# ---------------------------------------------------------------------------------------------


class PerSliceOperator(LinearOperator):
    """One 2D operator per slice of a ``(B, C, D, H, W)`` stack (block-diagonal over depth).

    For slices measured with different operators (e.g. per-slice ESPIRiT coil maps of a fastMRI
    volume); slices sharing one operator use :class:`sciprior.modalities.volume.SliceStackOperator`.
    The measurement is ``(B, D, *out2d)``; the adjoint is the per-slice adjoints.
    """

    def __init__(self, ops: Sequence[LinearOperator]):
        ops = list(ops)
        if not ops:
            raise ValueError("PerSliceOperator: needs at least one operator")
        in2d, out2d = ops[0].in_shape, ops[0].out_shape
        for op in ops[1:]:
            if op.in_shape != in2d or op.out_shape != out2d:
                raise ValueError(f"PerSliceOperator: slice operators disagree on shapes "
                                 f"({op.in_shape} -> {op.out_shape} vs {in2d} -> {out2d})")
        if in2d is None or len(in2d) != 3 or out2d is None:
            raise ValueError(f"PerSliceOperator: slice operators need a (C, H, W) in_shape and an "
                             f"out_shape, got {in2d} -> {out2d}")
        super().__init__((in2d[0], len(ops), *in2d[1:]), (len(ops), *out2d))
        self.ops = torch.nn.ModuleList(ops)
        self.depth = len(ops)

    @property
    def name(self) -> str:
        return f"PerSlice[{self.depth} x {self.ops[0].name}]"

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return torch.stack([op(x[:, :, k]) for k, op in enumerate(self.ops)], dim=1)

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return torch.stack([op.adjoint(y[:, k]) for k, op in enumerate(self.ops)], dim=2)


def stack_operator(ops: LinearOperator | Sequence[LinearOperator], depth: int) -> LinearOperator:
    """The operator of a ``depth``-slice stack: shared (one operator) or per slice (a list)."""
    if isinstance(ops, LinearOperator):
        from sciprior.modalities.volume import SliceStackOperator

        return SliceStackOperator(ops, depth)
    if len(ops) != depth:
        raise ValueError(f"stack_operator: {len(ops)} operators for {depth} slices")
    return PerSliceOperator(ops)


def _example_per_slice() -> PerSliceOperator:
    return PerSliceOperator([BlockMean(2, (1, 8, 6)), 0.5 * BlockMean(2, (1, 8, 6)),
                             BlockMean(2, (1, 8, 6)) @ Convolution(gaussian_kernel(3, 1.0), (1, 8, 6))])


register_operator("per_slice_operator")(_example_per_slice)


# ---------------------------------------------------------------------------------------------
# Context and the adapter base class
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What an adapter remembers between ``load`` and ``write``.

    Attributes:
        input: the input as given in the config; kind: ``nifti``/``dicom``/``fastmri``/``sample``...
        paths: resolved file paths.
        intensity: the prior <-> physical map.
        meta: plain, JSON-able metadata (spacing, affine, header fields, normalisation, geometry);
            it is echoed in report.json.
        extra: anything else the adapter needs to write its output (volume grid, headers, arrays).
    """

    input: str
    kind: str
    paths: list[Path]
    intensity: IntensityMap
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class ModalityAdapter:
    """Base class of the per-modality adapters (see the module docstring for the contract).

    Subclasses define ``modality`` (a short name), ``channels`` (image channels the prior must have)
    and implement the methods below. Their ``__init__`` arguments are plain typed values: the config
    schema. ``device`` is set by :mod:`sciprior.reconstruct` before ``load``.
    """

    modality: str = ""
    #: short description of the physical units of :meth:`to_physical`
    physical_units: str = ""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    # -- what the prior must match ---------------------------------------------------------------
    @property
    def channels(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def channels_key(self) -> str:
        """The config key that decides :attr:`channels` (named in mismatch errors)."""
        return f"modality ({type(self).__name__})"

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ModalityAdapter:
        self.device, self.dtype = torch.device(device), dtype
        return self

    # -- the contract ----------------------------------------------------------------------------
    def check_input(self, input: str, key: str = "input") -> None:
        """Raise (naming ``key`` and the file) if ``input`` cannot be read by this adapter. Cheap."""
        kind, _ = resolve_input(input, key)
        if kind not in self.input_kinds:
            raise InputError(f"{key}: {self.modality} cannot read {kind} input {input!r}; "
                             f"it reads {', '.join(self.input_kinds)}")

    input_kinds: tuple[str, ...] = ()

    def image_shape(self, input: str) -> tuple[int, ...]:  # pragma: no cover - abstract
        """``(C, H, W)`` (one slice) or ``(C, D, H, W)`` (a stack) of the problem, from headers only."""
        raise NotImplementedError

    def load(self, input: str) -> tuple[Problem, Context]:  # pragma: no cover - abstract
        raise NotImplementedError

    def baseline(self, problem: Problem, context: Context) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    baseline_name: str = "baseline"

    def to_physical(self, x: Tensor, context: Context) -> Tensor:
        """Prior domain -> physical units (``context.intensity``)."""
        return context.intensity.to_physical(x)

    def write(self, result: Any, context: Context, out_dir: Path) -> list[Path]:  # pragma: no cover
        raise NotImplementedError

    # -- display ---------------------------------------------------------------------------------
    def measurement_image(self, problem: Problem, context: Context) -> tuple[np.ndarray, str] | None:
        """A 2D array showing the measurement (sinogram, log k-space) and its title, for report.png."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "adapter": type(self).__name__, "channels": self.channels}

    def check_trained_domain(self, data: dict[str, Any] | None) -> str | None:
        """A message naming the config key if the prior's training normalisation (the ``data`` section of
        its checkpoint metadata, written by ``sciprior train``) contradicts this adapter's; else None."""
        return None


# ---------------------------------------------------------------------------------------------
# Data consistency
# ---------------------------------------------------------------------------------------------


def data_consistency(problem: Problem, x: Tensor) -> Tensor:
    """Relative data-consistency residual per item, ``||A x - y|| / ||y||`` (shape (B,)).

    ``y`` is the noise model's weighted-least-squares data (``y`` itself for Gaussian noise, the
    post-log line integrals for CT counts) with the measurement offset of the intensity map added back
    to both (``problem.metadata["measurement_offset"]``), so the ratio is relative to the data as
    measured. Rows of ``x`` beyond the problem's batch (posterior samples) are not accepted: pass the
    mean or one sample per item.
    """
    y_eff, _ = problem.noise.wls(problem.y)
    with torch.no_grad():
        ax = problem.operator(x.to(_real_dtype(y_eff)))
    r = tmap(torch.sub, ax, y_eff)
    off = problem.metadata.get("measurement_offset")
    full = tmap(torch.add, y_eff, off) if off is not None else y_eff
    num = norm_sq(r).clamp_min(0).sqrt()
    den = norm_sq(full).clamp_min(1e-300).sqrt()
    return (num / den).double()


def _real_dtype(y: Measurement) -> torch.dtype:
    t = y[0] if isinstance(y, tuple) else y
    return t.real.dtype if t.is_complex() else t.dtype


def square_pixel_size(spacing: tuple[float, float], key: str, tol: float = 1e-3) -> float:
    """The pixel size of a grid with (row, column) ``spacing`` that must be square (CT projectors)."""
    a, b = spacing
    if not math.isclose(a, b, rel_tol=tol):
        raise InputError(f"{key}: the reconstruction grid has non-square pixels ({a:.4g} x {b:.4g} mm); "
                         "set image_size to a square size with pad_to_square: true, or resample the input")
    return 0.5 * (a + b)


__all__ = [
    "Context", "ImageStack", "IntensityMap", "InputError", "ModalityAdapter", "PerSliceOperator", "PlaneGrid",
    "SAMPLES", "Slices", "VolumeGrid", "atomic_write", "cut_stack", "data_consistency", "file_kind", "fit_planes",
    "lps_shape_from_file", "nifti_shape", "planned_depth", "planned_size", "read_nifti", "resolve_input",
    "sample_paths", "square_pixel_size", "stack_operator", "stack_to_file_order", "target_size", "window_map",
    "write_nifti",
]
