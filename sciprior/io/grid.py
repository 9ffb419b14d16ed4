"""Volume geometry of images with patient axes (NIfTI, DICOM): orientation, slices, resizing, affines.

Image files are brought to LPS voxel axes (DICOM patient axes: Left, Posterior, Superior) and cut into axial
slices whose rows run anterior -> posterior and columns patient right -> left (:meth:`VolumeGrid.planes`),
for training (the slice readers) and reconstruction (the adapters) alike. :class:`VolumeGrid` keeps the
voxel-to-world affine through slicing, padding and resizing (:class:`PlaneGrid`), and
:func:`stack_to_file_order` writes results back in the file's own voxel orientation, so an output NIfTI
overlays the input in any viewer. Resizing (:func:`pad_to_aspect`, :func:`resize_planes`) is the one used
for training examples and reconstruction grids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from sciprior.io.paths import InputError

#: which slices of a volume a problem uses: the middle one, all (a 3D stack), one index, or ``[start, stop)``
Slices = Literal["middle", "all"] | int | tuple[int, int]


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

    def sections(self, axis: int = 2, data: np.ndarray | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Every slice across LPS voxel ``axis`` as ``(N, H, W)`` (axis 2: the axial :meth:`planes`; the two other
        axes swapped so that rows follow the later one) and the voxel size ``(across, row, column)`` in mm.
        ``data`` replaces :attr:`data` (an array of the same shape, e.g. normalised intensities)."""
        if axis not in (0, 1, 2):
            raise ValueError(f"VolumeGrid.sections: axis must be 0, 1 or 2, got {axis!r}")
        data = self.data if data is None else data
        if data.shape != self.data.shape:
            raise ValueError(f"VolumeGrid.sections: data of shape {data.shape} for a grid of {self.data.shape}")
        sp = self.spacing
        plane = [v for i, v in enumerate(sp) if i != axis]
        vol = np.moveaxis(data, axis, 0).swapaxes(-1, -2)
        return np.ascontiguousarray(vol), (float(sp[axis]), float(plane[1]), float(plane[0]))

    def training_slices(self, normalise: Callable[[np.ndarray], np.ndarray], axis: int = 2,
                        pixel_spacing: float | None = None,
                        where: str = "") -> tuple[np.ndarray, tuple[float, float, float]]:
        """Training examples of the slices across ``axis``: ``(N, 1, H, W)`` float32 of ``normalise(data)`` (the
        whole volume at once), resampled in-plane to ``pixel_spacing`` mm when given, and their voxel size
        ``(across, row, column)`` in mm."""
        planes, (across, row, col) = self.sections(axis, np.asarray(normalise(self.data), dtype=np.float32))
        if pixel_spacing is not None:
            planes = resample_planes(planes, (row, col), pixel_spacing, where)
            row = col = float(pixel_spacing)
        return np.ascontiguousarray(planes[:, None], dtype=np.float32), (across, row, col)


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


def aspect_padding(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding that brings an ``(H, W)`` image to the aspect ratio of ``target``
    (symmetric, never cropping; a square for a square target)."""
    h, w = size
    th, tw = target
    target_w = max(w, round(h * tw / th))
    target_h = max(h, round(target_w * th / tw))
    target_w = max(target_w, round(target_h * tw / th))
    ph, pw = target_h - h, target_w - w
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_to_aspect(x: Tensor, target: tuple[int, int], pad_value: float) -> tuple[Tensor, tuple[int, int, int, int]]:
    """``x`` (``(N, H, W)`` or ``(C, H, W)``) padded with ``pad_value`` to the aspect ratio of ``target`` on its last
    two axes (:func:`aspect_padding`), and the padding used."""
    pad = aspect_padding(tuple(x.shape[-2:]), target)
    if any(pad):
        x = F.pad(x[None], list(pad), value=float(pad_value))[0]
    return x, pad


def resize_planes(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize the last two axes of ``x`` ``(N, H, W)`` to ``size``: bilinear with antialiasing (area-like when
    downsampling), ``align_corners=False`` (output pixel ``i`` covers input continuous index ``(i + 0.5) f - 0.5``)."""
    lead = x.shape[:-2]
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.reshape(*lead, *size)


def fit_planes(planes: np.ndarray, image_size: int | tuple[int, int] | None, pad_to_square: bool,
               pad_value: float) -> tuple[Tensor, tuple[float, float], tuple[float, float]]:
    """Pad (to the aspect ratio of ``image_size``, with ``pad_value``) and resize ``(D, H, W)`` planes.

    The same steps as the training examples (:func:`pad_to_aspect`, :func:`resize_planes`). Returns the
    float64 stack and, per axis (column, row), the ``scale`` and ``shift`` that map output indices to input
    indices (see :class:`PlaneGrid`).
    """
    img = torch.from_numpy(np.asarray(planes, dtype=np.float64))
    d, h, w = img.shape
    th, tw = target_size(image_size, (h, w))
    pad = (0, 0, 0, 0)  # left, right, top, bottom
    if pad_to_square and image_size is not None and (h, w) != (th, tw):
        img, pad = pad_to_aspect(img, (th, tw), pad_value)
    hp, wp = img.shape[-2:]
    if (th, tw) != (hp, wp):
        img = resize_planes(img, (th, tw))
    fc, fr = wp / tw, hp / th
    return img, (fc, fr), (0.5 * fc - 0.5 - pad[0], 0.5 * fr - 0.5 - pad[2])


def resample_planes(planes: np.ndarray, spacing: tuple[float, float], pixel_spacing: float,
                    where: str = "") -> np.ndarray:
    """``(N, H, W)`` (or ``(N, C, H, W)``) planes with ``spacing = (row, column)`` mm resampled in-plane to square
    pixels of ``pixel_spacing`` mm (bilinear with antialiasing); unchanged when the size stays the same."""
    if not pixel_spacing or pixel_spacing <= 0 or not min(spacing) > 0:
        raise ValueError(f"{where}: cannot resample planes with pixel sizes {list(spacing)} mm to "
                         f"pixel_spacing={pixel_spacing}")
    size = tuple(max(1, round(n * float(sp) / pixel_spacing)) for n, sp in zip(planes.shape[-2:], spacing))
    if size == tuple(planes.shape[-2:]):
        return planes
    return resize_planes(torch.from_numpy(np.ascontiguousarray(planes)), size).numpy()


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


def planned_depth(num_slices: int, slices: Slices, key: str = "slices") -> int | None:
    """Depth of the problem for ``slices`` of a volume with ``num_slices`` slices (None: one 2D slice); an
    out-of-range selection raises :class:`InputError` naming ``key`` (from the header, before anything is read)."""
    start, stop, stack = select_slices(slices, num_slices, key)
    return stop - start if stack else None


def stack_to_file_order(stack: np.ndarray, plane_grid: PlaneGrid, grid: VolumeGrid) -> tuple[np.ndarray, np.ndarray]:
    """A ``(D, H, W)`` stack on ``plane_grid`` -> ``(data, affine)`` in the input file's voxel orientation."""
    lps = np.ascontiguousarray(np.asarray(stack).transpose(2, 1, 0))  # (W, H, D) = LPS voxel order
    aff = plane_grid.lps_affine(grid)
    if grid.to_lps is None:
        return lps, aff
    back = nio.ornt_transform(nio.axcodes2ornt("LPS"), nio.io_orientation(grid.file_affine))
    data = nio.apply_orientation(lps, back)
    return np.ascontiguousarray(data), aff @ nio.inv_ornt_aff(back, lps.shape)


def lps_shape_from_file(shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """Shape of a volume after reorientation to LPS."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("LPS"))
    out = [0, 0, 0]
    for i, (ax, _) in enumerate(ornt):
        out[int(ax)] = int(shape[i])
    return tuple(out)
