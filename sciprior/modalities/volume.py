"""3D volumes measured slice by slice, the z-difference operator, and NIfTI volume I/O.

- :class:`SliceStackOperator`: a 2D operator applied to every slice of a ``(B, C, D, H, W)`` volume
  (a stack of CT slices each measured by the 2D projector, per-slice 2D SENSE MRI, ...). It is
  block-diagonal over slices, so its adjoint, normal operator and closed forms are the 2D ones slice
  by slice. Measurements are ``(B, D, *out2d)``: slice ``d`` of item ``b`` is ``y[b, d]``.
- :class:`SliceDifference` (``D_z``): forward differences between neighbouring slices,
  ``(B, C, D, H, W) -> (B, C, D - 1, H, W)``, the operator of the TV-along-z coupling of
  DiffusionMBIR (Chung, Ryu, McCann, Klasky, Ye, CVPR 2023) and DDS-3D (Chung, Lee, Ye, ICLR 2024).
- NIfTI: :func:`read_nifti_volume` / :func:`write_nifti_volume` keep the voxel grid, affine and header
  (orientation codes, zooms); :func:`reconstruct_volume_nifti` runs a volume solver from a NIfTI file
  to a NIfTI file with the same affine.

Volume layout: the NIfTI voxel array ``(I, J, K)`` becomes ``(D, H, W)`` with ``D`` the ``slice_axis``
(default 2, the third voxel axis: axial slices for RAS/LPS-ordered scans) and ``(H, W)`` the other two
axes in their order. Nothing is resampled or reoriented, so the affine stays valid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciprior.io import atomic_write
from sciprior.modalities.base import (
    Identity,
    LinearOperator,
    Mask,
    Measurement,
    StackedOperator,
    register_operator,
    tmap,
)
from sciprior.modalities.noise import Problem

__all__ = [
    "NiftiVolume",
    "SliceDifference",
    "SliceStackOperator",
    "from_slices",
    "read_nifti_volume",
    "reconstruct_volume_nifti",
    "slice_diff",
    "slice_diff_adjoint",
    "to_slices",
    "write_nifti_volume",
]


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def to_slices(x: Tensor) -> Tensor:
    """``(B, C, D, H, W) -> (B * D, C, H, W)``, item-major (all slices of item 0 first)."""
    if x.dim() != 5:
        raise ValueError(f"to_slices: expected a (B, C, D, H, W) volume, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    return x.transpose(1, 2).reshape(b * d, c, h, w)


def from_slices(xs: Tensor, depth: int) -> Tensor:
    """Inverse of :func:`to_slices`: ``(B * D, C, H, W) -> (B, C, D, H, W)``."""
    if xs.dim() != 4 or xs.shape[0] % depth:
        raise ValueError(f"from_slices: expected (B * {depth}, C, H, W) slices, got shape {tuple(xs.shape)}")
    n, c, h, w = xs.shape
    return xs.reshape(n // depth, depth, c, h, w).transpose(1, 2).contiguous()


def _measurement_to_slices(y: Measurement, depth: int, who: str) -> Measurement:
    """``(B, D, *out2d) -> (B * D, *out2d)`` (tensors or tuples of tensors)."""

    def cut(t: Tensor) -> Tensor:
        if t.dim() < 2 or t.shape[1] != depth:
            raise ValueError(f"{who}: expected a measurement of shape (B, {depth}, ...), "
                             f"got {tuple(t.shape)}")
        return t.reshape(t.shape[0] * depth, *t.shape[2:])

    return tmap(cut, y)


def _measurement_from_slices(ys: Measurement, depth: int) -> Measurement:
    return tmap(lambda t: t.reshape(t.shape[0] // depth, depth, *t.shape[1:]), ys)


def _cat_measurements(parts: list[Measurement]) -> Measurement:
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p, 0) for p in zip(*parts))
    return torch.cat(parts, 0)


# --------------------------------------------------------------------------------------------
# SliceStackOperator
# --------------------------------------------------------------------------------------------


class SliceStackOperator(LinearOperator):
    """A 2D linear operator applied to every slice ``x[:, :, d]`` of ``(B, C, D, H, W)`` volumes.

    Args:
        op2d: the 2D operator on ``(N, C, H, W)`` images (needs ``in_shape``); e.g. a CT projector or a
            :class:`~sciprior.modalities.mri.MultiCoilMRI`.
        depth: number of slices ``D``.
        chunk_size: apply ``op2d`` to at most this many slices per call (over the whole batch), which
            bounds the operator's transient memory; ``None`` applies it to all ``B * D`` slices at once.
            The result does not depend on it.

    Shapes: image ``(B, C, D, H, W)`` with ``(C, H, W) = op2d.in_shape``; measurement
    ``(B, D, *op2d.out_shape)`` (a tuple of such tensors when ``op2d`` returns a tuple). Units and noise
    convention are those of ``op2d`` (e.g. line integrals for CT, k-space for MRI), slice by slice.
    Closed forms: ``pinv`` and ``prox_l2`` exist exactly when ``op2d`` has them (block-diagonal).
    """

    def __init__(self, op2d: LinearOperator, depth: int, chunk_size: int | None = None):
        if not isinstance(op2d, LinearOperator):
            raise TypeError(f"SliceStackOperator: op2d must be a LinearOperator, got {type(op2d).__name__}")
        if op2d.in_shape is None or len(op2d.in_shape) != 3:
            raise ValueError(f"SliceStackOperator: {op2d.name} must have a 2D image shape (C, H, W), "
                             f"got in_shape={op2d.in_shape}")
        if isinstance(depth, bool) or int(depth) != depth or depth < 1:
            raise ValueError(f"SliceStackOperator: depth must be a positive int, got {depth!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"SliceStackOperator: chunk_size must be None or >= 1, got {chunk_size!r}")
        c, h, w = op2d.in_shape
        depth = int(depth)
        out = (depth, *op2d.out_shape) if op2d.out_shape is not None else None
        super().__init__((c, depth, h, w), out)
        self.op2d = op2d
        self.depth = depth
        self.chunk_size = int(chunk_size) if chunk_size is not None else None

    @property
    def name(self) -> str:
        return f"SliceStack[{self.op2d.name} x {self.depth}]"

    def measured_support(self):
        """The 2D operator's support, shared by every slice (when it broadcasts over ``(B, D)``)."""
        s = self.op2d.measured_support()
        if isinstance(s, Tensor) and self.op2d.out_shape is not None and s.dim() <= len(self.op2d.out_shape):
            return s
        return None  # tuple-valued or batch-shaped supports: every entry counts as measured

    # --- per-slice application ------------------------------------------------------------------
    def _chunked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` over leading-dim chunks of the (B * D)-row arguments, results concatenated."""
        n = args[0][0].shape[0] if isinstance(args[0], tuple) else args[0].shape[0]
        k = self.chunk_size
        if k is None or n <= k:
            return fn(*args)

        def part(a: Any, i: int) -> Any:
            if isinstance(a, tuple):
                return tuple(t[i:i + k] for t in a)
            if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n:
                return a[i:i + k]
            return a

        return _cat_measurements([fn(*(part(a, i) for a in args)) for i in range(0, n, k)])

    def slices_of(self, y: Measurement) -> Measurement:
        """A measurement ``(B, D, ...)`` as ``(B * D, ...)`` rows of ``op2d``'s measurements."""
        return _measurement_to_slices(y, self.depth, self.name)

    def stack(self, ys: Measurement) -> Measurement:
        """Inverse of :meth:`slices_of`: ``(B * D, ...) -> (B, D, ...)``."""
        return _measurement_from_slices(ys, self.depth)

    def forward(self, x: Tensor) -> Measurement:
        self.check_input(x)
        return self.stack(self._chunked(self.op2d, to_slices(x)))

    def adjoint(self, y: Measurement) -> Tensor:
        self.check_measurement(y)
        return from_slices(self._chunked(self.op2d.adjoint, self.slices_of(y)), self.depth)

    def normal(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return from_slices(self._chunked(self.op2d.normal, to_slices(x)), self.depth)

    # --- closed forms (block-diagonal) ---------------------------------------------------------
    @property
    def has_pinv(self) -> bool:
        return self.op2d.has_pinv

    @property
    def has_prox_l2(self) -> bool:
        return self.op2d.has_prox_l2

    def pinv(self, y: Measurement) -> Tensor:
        if not self.has_pinv:
            raise NotImplementedError(f"{self.name}: {self.op2d.name} has no closed-form pseudo-inverse")
        return from_slices(self._chunked(self.op2d.pinv, self.slices_of(y)), self.depth)

    def prox_l2(self, z: Tensor, y: Measurement, gamma: float | Tensor) -> Tensor:
        """Slice-wise ``op2d.prox_l2``; a per-item ``gamma`` of shape (B,) applies to all of its slices."""
        if not self.has_prox_l2:
            raise NotImplementedError(f"{self.name}: {self.op2d.name} has no closed-form proximal operator")
        self.check_input(z)
        g = gamma
        if isinstance(g, Tensor) and g.dim() == 1:
            g = g.repeat_interleave(self.depth)
        return from_slices(self._chunked(self.op2d.prox_l2, to_slices(z), self.slices_of(y), g), self.depth)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, chunk_size={self.chunk_size}"


# --------------------------------------------------------------------------------------------
# Differences along the slice axis
# --------------------------------------------------------------------------------------------


def slice_diff(x: Tensor) -> Tensor:
    """``D_z x = x[:, :, 1:] - x[:, :, :-1]``: ``(B, C, D, H, W) -> (B, C, D - 1, H, W)`` (image units)."""
    if x.dim() != 5:
        raise ValueError(f"slice_diff: expected a (B, C, D, H, W) volume, got shape {tuple(x.shape)}")
    return x[:, :, 1:] - x[:, :, :-1]


def slice_diff_adjoint(v: Tensor) -> Tensor:
    """``D_z^T v``: ``(B, C, D - 1, H, W) -> (B, C, D, H, W)``; ``(D_z^T v)_d = v_{d-1} - v_d`` with
    ``v_{-1} = v_{D-1} = 0``."""
    if v.dim() != 5:
        raise ValueError(f"slice_diff_adjoint: expected (B, C, D - 1, H, W), got shape {tuple(v.shape)}")
    zero = torch.zeros_like(v[:, :, :1])
    padded = torch.cat([zero, v, zero], dim=2)
    return padded[:, :, :-1] - padded[:, :, 1:]


class SliceDifference(LinearOperator):
    """:func:`slice_diff` as a linear operator, ``(C, D, H, W) -> (C, D - 1, H, W)``, ``D >= 2``."""

    def __init__(self, in_shape: Sequence[int]):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 4 or in_shape[1] < 2:
            raise ValueError(f"SliceDifference: in_shape must be (C, D, H, W) with D >= 2, got {in_shape}")
        c, d, h, w = in_shape
        super().__init__(in_shape, (c, d - 1, h, w))

    def forward(self, x):
        self.check_input(x)
        return slice_diff(x)

    def adjoint(self, y):
        self.check_measurement(y)
        return slice_diff_adjoint(y)


# --------------------------------------------------------------------------------------------
# NIfTI volumes
# --------------------------------------------------------------------------------------------


@dataclass
class NiftiVolume:
    """A 3D NIfTI volume in the solver layout.

    Attributes:
        data: ``(D, H, W)`` float tensor in the file's units (scl_slope/inter applied).
        affine: 4x4 voxel-to-world matrix (mm) of the file.
        header: the file's NIfTI header (orientation codes, zooms, units, description).
        slice_axis: which voxel axis (0, 1, 2) became ``D``.
        path: where it was read from.
    """

    data: Tensor
    affine: np.ndarray
    header: Any
    slice_axis: int = 2
    path: Path | None = None

    def voxel_array(self, volume: Tensor | np.ndarray | None = None) -> np.ndarray:
        """A ``(D, H, W)`` volume (default: ``data``) back in the file's voxel order ``(I, J, K)``."""
        v = self.data if volume is None else volume
        v = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
        if v.shape != tuple(self.data.shape):
            raise ValueError(f"NiftiVolume: volume of shape {v.shape} does not match the file's "
                             f"{tuple(self.data.shape)} (D, H, W)")
        return np.moveaxis(v, 0, self.slice_axis)


def _check_slice_axis(slice_axis: int, who: str) -> int:
    if slice_axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"{who}: slice_axis must be a voxel axis 0, 1 or 2, got {slice_axis}")
    return slice_axis % 3


def read_nifti_volume(path: str | os.PathLike, slice_axis: int = 2,
                      dtype: torch.dtype = torch.float32) -> NiftiVolume:
    """Read a 3D NIfTI file (``.nii`` / ``.nii.gz``) as a ``(D, H, W)`` tensor plus affine and header.

    A trailing singleton 4th dimension is dropped; other 4D files (time series, vectors) are refused.
    """
    import nibabel as nib

    path = Path(path)
    axis = _check_slice_axis(slice_axis, "read_nifti_volume")
    if not path.is_file():
        raise FileNotFoundError(f"read_nifti_volume: {path} does not exist")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for bad files
        raise ValueError(f"read_nifti_volume: {path} is not a readable NIfTI file ({err})") from err
    arr = np.asarray(img.dataobj, dtype=np.float64)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"read_nifti_volume: {path} holds an array of shape {arr.shape}; "
                         f"a 3D volume (I, J, K) is needed")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"read_nifti_volume: {path} contains {bad} NaN/Inf voxels")
    data = torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, axis, 0))).to(dtype)
    return NiftiVolume(data, np.asarray(img.affine, dtype=np.float64), img.header.copy(), axis, path)


def write_nifti_volume(path: str | os.PathLike, volume: Tensor | np.ndarray, like: NiftiVolume,
                       description: str | None = None) -> Path:
    """Write a ``(D, H, W)`` volume (layout of ``like``) as float32 NIfTI with ``like``'s affine and
    header, atomically (temporary file in the same folder, then rename)."""
    import nibabel as nib

    path = Path(path)
    name = path.name
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"write_nifti_volume: {path} must end in .nii or .nii.gz")
    arr = like.voxel_array(volume).astype(np.float32)
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    cls = nib.Nifti2Image if isinstance(like.header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(arr, like.affine, header=header)
    # keep the input's orientation codes (the affine is written to both sform and qform)
    sform_code = int(like.header["sform_code"]) if "sform_code" in like.header else 1
    qform_code = int(like.header["qform_code"]) if "qform_code" in like.header else 1
    img.set_sform(like.affine, code=sform_code or 1)
    img.set_qform(like.affine, code=qform_code or 1)
    img.header["scl_slope"] = np.nan  # data are stored unscaled
    img.header["scl_inter"] = np.nan
    if description is not None:
        img.header["descrip"] = description.encode()[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: nib.save(img, tmp))
    return path


def robust_scale(volume: Tensor, quantile: float = 0.999) -> float:
    """The ``quantile`` of ``|volume|`` (a robust maximum; 1.0 for an all-zero volume)."""
    flat = volume.detach().abs().reshape(-1).double()
    if flat.numel() > 2**24:  # torch.quantile's size limit: subsample deterministically
        flat = flat[:: math.ceil(flat.numel() / 2**24)]
    q = float(torch.quantile(flat, quantile))
    return q if q > 0 else (float(flat.max()) or 1.0)


def reconstruct_volume_nifti(in_path: str | os.PathLike, out_path: str | os.PathLike, denoiser2d,
                             make_problem: Callable[[Tensor], Problem], *, slice_axis: int = 2,
                             scale: float | None = None, offset: float = 0.0,
                             solver: Callable[..., Any] | str | None = None,
                             **solver_kwargs: Any):
    """NIfTI volume in, NIfTI volume out on the same voxel grid, affine and header.

    1. read ``in_path`` as ``(D, H, W)`` (``slice_axis`` becomes D) and map it to the prior's units,
       ``v = (volume - offset) / scale`` (``scale`` default: the 99.9th percentile of ``|volume - offset|``,
       so the volume lies in about [-1, 1]);
    2. ``problem = make_problem(v[None, None])``: the caller's measurement model on the ``(1, 1, D, H, W)``
       volume (e.g. simulate per-slice sparse-view CT with a :class:`SliceStackOperator`, or per-slice
       SENSE with 2-channel complex images); its ``image_shape`` must be ``(C, D, H, W)`` with C = 1, or
       C = 2 for complex images (real, imag), whose magnitude is written;
    3. ``result = solver(denoiser2d, problem, **solver_kwargs)`` (default
       :func:`sciprior.solvers.volume.dds_volume`; a string is looked up with
       ``sciprior.solvers.get_solver``);
    4. write ``result.mean * scale + offset`` to ``out_path`` (float32, atomically) with the input's
       affine and header.

    Returns the solver's :class:`~sciprior.solvers.common.Result` (in prior units), with
    ``info["nifti"] = {"scale", "offset", "slice_axis", "out_path"}``.
    """
    vol = read_nifti_volume(in_path, slice_axis=slice_axis)
    if scale is None:
        scale = robust_scale(vol.data - offset)
    if not scale > 0:
        raise ValueError(f"reconstruct_volume_nifti: scale must be > 0, got {scale}")
    v = ((vol.data - offset) / scale)[None, None]
    problem = make_problem(v)
    if not isinstance(problem, Problem):
        raise TypeError(f"reconstruct_volume_nifti: make_problem must return a Problem, got "
                        f"{type(problem).__name__}")
    d, h, w = vol.data.shape
    shape = tuple(problem.image_shape)
    if len(shape) != 4 or shape[1:] != (d, h, w) or shape[0] not in (1, 2):
        raise ValueError(f"reconstruct_volume_nifti: the problem's image_shape {shape} must be (1 or 2, {d}, "
                         f"{h}, {w}) for the volume read from {vol.path}")
    if solver is None:
        from sciprior.solvers.volume import dds_volume as solver
    elif isinstance(solver, str):
        from sciprior.solvers import get_solver

        solver = get_solver(solver)
    result = solver(denoiser2d, problem, **solver_kwargs)
    mean = result.mean[0].detach().to(torch.float64).cpu()
    out = mean[0] if shape[0] == 1 else mean.square().sum(0).sqrt()
    out = out * scale + offset
    write_nifti_volume(out_path, out, vol, description="sciprior reconstruction")
    result.info["nifti"] = {"scale": float(scale), "offset": float(offset), "slice_axis": vol.slice_axis,
                            "out_path": str(out_path)}
    return result


# --------------------------------------------------------------------------------------------
# Small examples for the shared adjointness test
# --------------------------------------------------------------------------------------------


def _example_mask_stack() -> SliceStackOperator:
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand((1, 6, 5), generator=g) > 0.5).float()
    return SliceStackOperator(Mask(mask, (1, 6, 5)), depth=3, chunk_size=2)


def _example_mri_stack() -> SliceStackOperator:
    from sciprior.modalities.mri import MultiCoilMRI, birdcage_maps, random_mask

    op2d = MultiCoilMRI(birdcage_maps(3, (8, 6)), random_mask(6, 2, 0.34, seed=2))
    return SliceStackOperator(op2d, depth=4)


def _example_ct_stack() -> SliceStackOperator:
    from sciprior.modalities.ct.projector import ParallelBeamProjector

    return SliceStackOperator(ParallelBeamProjector((8, 8), angles=torch.linspace(0, 3.0, 7)), depth=3,
                              chunk_size=2)


register_operator("slice_stack_mask")(_example_mask_stack)
register_operator("slice_stack_tuple")(
    lambda: SliceStackOperator(StackedOperator([Identity((2, 4, 3)), 0.5 * Identity((2, 4, 3))]), depth=3,
                               chunk_size=4))
register_operator("slice_stack_mri")(_example_mri_stack)
register_operator("slice_stack_ct")(_example_ct_stack)
register_operator("slice_difference")(lambda: SliceDifference((1, 6, 5, 4)))
