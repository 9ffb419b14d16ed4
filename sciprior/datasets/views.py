"""Training examples and their random views: the generic half of the training pipeline.

- :class:`ExtractExample`: the MONAI transform ``{"path", "index"} -> (C, H, W)`` (reads a file once per process
  through :class:`VolumeCache`, resizes to ``spatial_size`` as the reconstruction grids are resized: pad to the
  aspect ratio, then bilinear with antialiasing); deterministic, so MONAI caches it.
- :class:`ExampleViews`: ``repeats`` random views of every cached example (patches, flips, 90 degree
  rotations, :class:`RandomAffine` jitter), drawn from a generator seeded by ``(seed, epoch, index)``: the views
  do not depend on worker count, process count or restarts.
- :class:`ObliqueSliceViews`: training views of volume slices that are oblique planes re-cut from the full
  resolution volume (:mod:`sciprior.datasets.oblique`), kept clear of a held-out slab.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from monai.transforms import Affine, Transform
from torch import Tensor
from torch.utils.data import Dataset

from sciprior.datasets.oblique import Foreground, foreground_of, limit_tilt, oblique_slice, random_tilt
from sciprior.io.atomic import atomic_write
from sciprior.io.grid import pad_to_aspect, resize_planes


class VolumeCache:
    """A small per-process LRU of read files, so cutting N slices reads the volume once."""

    def __init__(self, reader: Callable[[str], np.ndarray], size: int = 2):
        self.reader, self.size = reader, size
        self._store: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"reader": self.reader, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["reader"], state["size"])

    def __call__(self, path: str) -> np.ndarray:
        with self._lock:
            if path in self._store:
                self._store.move_to_end(path)
                return self._store[path]
            arr = self.reader(path)
            if arr.ndim != 4:
                raise ValueError(
                    f"{type(self.reader).__name__} returned shape {arr.shape} for {path!r}; "
                    "expected (N, C, H, W)"
                )
            self._store[path] = arr
            while len(self._store) > self.size:
                self._store.popitem(last=False)
            return arr


def resize_example(x: Tensor, size: tuple[int, int], pad_value: float) -> Tensor:
    """Pad (C, H, W) symmetrically with ``pad_value`` to the aspect ratio of ``size``, then resize to ``size``
    (bilinear with antialiasing, i.e. area-like when downsampling): :func:`sciprior.io.grid.pad_to_aspect` and
    :func:`sciprior.io.grid.resize_planes`, the steps that fit reconstruction grids."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    x, _ = pad_to_aspect(x, tuple(size), pad_value)
    return resize_planes(x, tuple(size))


class ExtractExample(Transform):
    """MONAI transform ``{"path", "index"} -> (C, H, W)`` float32 tensor (deterministic, so cacheable)."""

    def __init__(self, volumes: VolumeCache, spatial_size: tuple[int, int] | None, pad_value: float):
        self.volumes = volumes
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.pad_value = pad_value

    def __call__(self, item: dict[str, Any]) -> Tensor:
        arr = self.volumes(item["path"])
        x = torch.from_numpy(np.array(arr[item["index"]], dtype=np.float32))
        if self.spatial_size is not None:
            x = resize_example(x, self.spatial_size, self.pad_value)
        return x.contiguous()


#: random flips in training: True (both axes), False, or one axis: "horizontal" mirrors columns (left-right in
#: the usual display), "vertical" mirrors rows (e.g. for data that is symmetric only up-down)
FlipMode = bool | Literal["horizontal", "vertical"]


@dataclass(frozen=True)
class RandomAffine:
    """Random in-plane affine jitter of every training view, about the image centre: a rotation by
    U(-rotate, rotate) degrees, an isotropic zoom by U(1 - scale, 1 + scale) and a shift by
    U(-translate, translate) of the image size along each axis (the head tilts, sizes and positions of real
    scans). Resampled bicubically, filled with ``pad_value`` outside the image, clipped to the view's range."""

    rotate: float = 0.0  # degrees
    scale: float = 0.0  # relative
    translate: float = 0.0  # fraction of the image size

    def __post_init__(self):
        for key in ("rotate", "scale", "translate"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"affine.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.scale >= 1:
            raise ValueError(f"affine.scale must be < 1 (a zoom factor in (1 - scale, 1 + scale)), got {self.scale}")


def random_affine(x: Tensor, rng: np.random.Generator, affine: RandomAffine, pad_value: float) -> Tensor:
    """``x`` (C, H, W) rotated, zoomed and shifted by parameters drawn from ``rng`` (always 4 draws), resampled by
    MONAI's ``Affine`` (rotation and shift in pixel units, so non-square images are not sheared)."""
    u = [float(v) for v in rng.uniform(-1.0, 1.0, size=4)]  # Python floats: MONAI builds the matrix in float32
    h, w = x.shape[-2:]
    resample = Affine(
        rotate_params=float(np.deg2rad(affine.rotate * u[0])),
        scale_params=(1.0 + affine.scale * u[1],) * 2,
        translate_params=(affine.translate * u[2] * h, affine.translate * u[3] * w),
        mode="bicubic",
        padding_mode="zeros",
        image_only=True,
    )
    out = resample(x.float() - pad_value).as_subclass(Tensor) + pad_value  # zeros outside = pad_value; no MetaTensor
    return out.clamp(min(float(x.min()), pad_value), max(float(x.max()), pad_value)).to(x.dtype)


def random_view(
    x: Tensor,
    rng: np.random.Generator,
    patch_size: tuple[int, int] | None,
    flips: FlipMode,
    rot90: bool,
    pad_value: float,
    affine: RandomAffine | None = None,
) -> Tensor:
    """A random patch (padded with ``pad_value`` if the image is smaller), then random flips (``flips``: both
    axes, or only "horizontal" / "vertical"), a random multiple of 90 degrees (180 only, for non-square
    patches) and a random affine jitter (``affine``). Both flip coins are drawn whatever ``flips`` allows, so
    the random stream does not depend on it; the affine draws come last (views without it are unchanged)."""
    if patch_size is not None:
        ph, pw = patch_size
        h, w = x.shape[-2:]
        if h < ph or w < pw:
            dh, dw = max(ph - h, 0), max(pw - w, 0)
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=pad_value)
            h, w = x.shape[-2:]
        top = int(rng.integers(0, h - ph + 1))
        left = int(rng.integers(0, w - pw + 1))
        x = x[..., top : top + ph, left : left + pw]
    if flips:
        horizontal, vertical = rng.random() < 0.5, rng.random() < 0.5
        if horizontal and flips in (True, "horizontal"):
            x = x.flip(-1)
        if vertical and flips in (True, "vertical"):
            x = x.flip(-2)
    if rot90:
        square = x.shape[-1] == x.shape[-2]
        k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    if affine is not None:
        x = random_affine(x, rng, affine, pad_value)
    return x.contiguous()


class ExampleViews(Dataset):
    """``repeats`` random views of every cached example.

    Keys are ints (validation: fixed draws seeded by ``(seed, index)``) or ``(index, epoch)`` pairs from
    :class:`EpochSampler` (training: draws seeded by ``(seed, epoch, index)``).
    """

    def __init__(
        self,
        base: Dataset,
        repeats: int,
        train: bool,
        seed: int,
        patch_size: tuple[int, int] | None,
        flips: FlipMode,
        rot90: bool,
        pad_value: float,
        affine: RandomAffine | None = None,
    ):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.base, self.repeats, self.train, self.seed = base, int(repeats), train, int(seed)
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.flips, self.rot90, self.pad_value = flips and train, rot90 and train, pad_value
        self.affine = affine if train else None

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def _index_epoch(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """``(index, epoch)`` of a key (epoch -1 for plain int keys), the index checked."""
        idx, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), -1)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} examples")
        return idx, epoch

    def __getitem__(self, key: int | tuple[int, int]) -> Tensor:
        idx, epoch = self._index_epoch(key)
        x = self.base[idx % len(self.base)]
        if not (self.patch_size or self.flips or self.rot90 or self.affine):
            return x
        stream = [self.seed, epoch + 1, idx] if self.train else [self.seed, 0, idx]
        rng = np.random.default_rng(stream)
        return random_view(x, rng, self.patch_size, self.flips, self.rot90, self.pad_value, self.affine)


class ObliqueSliceViews(ExampleViews):
    """Training views of slices that are oblique planes of their volumes (:mod:`sciprior.datasets.oblique`).

    The view of item ``{"path", "index"}`` is the plane through slice ``index`` tilted by a random pitch and
    roll in [-tilt, tilt] degrees and turned in-plane by [-spin, spin] degrees, cut from the full resolution
    volume, then padded and resized to ``spatial_size`` like the cached examples and given the flips, 90 degree
    rotations and affine jitter of :class:`ExampleViews` (drawn after the angles, from the same generator).
    ``keep_out = (lo, hi)`` are slices no training view may reach (a held-out slab and its margin): within
    the volume's foreground the tilt of a view is shrunk (:func:`~sciprior.datasets.oblique.limit_tilt`) so its
    plane stays on the item's side of it; a volume of one slice (a 2D file) gets no tilt. Angles are physical:
    ``read(path)`` returns the volume and its voxel size (slice, row, column) in mm (the slice readers'
    :meth:`~sciprior.modalities.slices.SliceReader.read`),
    so a volume of thick slices is tilted by the stated angle in the patient, not in index space. Each
    training volume is read once; without ``cache_dir`` it stays in memory (each worker process holds its own
    copy), with it it is written to ``cache_dir/oblique/<key>.npy`` (key: file, reader parameters, size and
    mtime, as the example cache) and memory-mapped, so many large volumes share the page cache instead of
    RAM and later runs skip the reading. ``base`` holds the stored (untilted) example of each item.
    """

    def __init__(
        self,
        base: Dataset,
        items: list[dict[str, Any]],
        read: Callable[[str], tuple[np.ndarray, tuple[float, float, float]]],
        spatial_size: tuple[int, int] | None,
        tilt: float,
        spin: float,
        keep_out: tuple[int, int] | None,
        foreground_level: float,
        cache_dir: str | os.PathLike | None = None,
        **views: Any,
    ):
        """``views``: the arguments of :class:`ExampleViews` but ``base`` and ``train`` (repeats, seed, ...)."""
        if len(base) != len(items):
            raise ValueError(f"ObliqueSliceViews: {len(base)} stored examples for {len(items)} items")
        self.cache_dir = Path(cache_dir) / "oblique" if cache_dir is not None else None
        super().__init__(base, train=True, **views)
        self.items, self.read = items, read
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.tilt, self.spin, self.keep_out = float(tilt), float(spin), keep_out
        self.foreground_level = float(foreground_level)
        self._volumes: dict[str, tuple[Tensor, tuple[float, float, float], Foreground]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_volumes": {}}  # worker processes read the volumes themselves

    def volume(self, item: dict[str, Any]) -> tuple[Tensor, tuple[float, float, float], Foreground]:
        """``(volume (N, C, H, W), voxel size (slice, row, column) in mm, foreground)`` of ``item``'s file,
        read once (memory-mapped from the disk cache when there is one)."""
        path = item["path"]
        if path not in self._volumes:
            arr, voxel_size = self._load(path, item.get("key", ""))
            if arr.ndim != 4:
                raise ValueError(f"ObliqueSliceViews: the reader returned shape {arr.shape} for {path!r}; "
                                 "expected (N, C, H, W)")
            with warnings.catch_warnings():  # a read-only memmap: the views only read it
                warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
                volume = torch.from_numpy(arr if isinstance(arr, np.memmap) else np.ascontiguousarray(arr, np.float32))
            self._volumes[path] = (volume, tuple(float(v) for v in voxel_size),
                                   foreground_of(volume, self.foreground_level))
        return self._volumes[path]

    def _load(self, path: str, key: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        if self.cache_dir is None:
            return self.read(path)
        stem = self.cache_dir / hashlib.sha1(f"{path}|{key}".encode()).hexdigest()
        npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
        if not (npy.exists() and meta.exists()):
            arr, voxel_size = self.read(path)
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            atomic_write(npy, lambda tmp: np.save(tmp, arr))  # the array first: meta marks a complete entry
            atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(
                {"path": path, "voxel_size": [float(v) for v in voxel_size], "shape": list(arr.shape)})))
        info = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        if list(arr.shape) != info["shape"]:
            raise ValueError(f"ObliqueSliceViews: cached volume {npy} has shape {arr.shape}, its record "
                             f"{meta} says {info['shape']}; delete both to re-read {path!r}")
        return arr, tuple(info["voxel_size"])

    def _room(self, index: int, n: int) -> float:
        """Slices the plane through slice ``index`` of an ``n``-slice volume may move (inf: unlimited)."""
        if n == 1:
            return 0.0
        if self.keep_out is None:
            return math.inf
        lo, hi = self.keep_out
        return float(lo - 1 - index) if index < lo else float(index - hi) if index >= hi else 0.0

    def __getitem__(self, key: int | tuple[int, int]) -> Tensor:
        idx, epoch = self._index_epoch(key)
        item = self.items[idx % len(self.items)]
        index = int(item["index"])
        volume, voxel_size, fg = self.volume(item)
        rng = np.random.default_rng([self.seed, epoch + 1, idx])
        pitch, roll, spin = random_tilt(rng, self.tilt, self.spin)
        pitch, roll = limit_tilt(pitch, roll, fg.radius_in_slices(voxel_size), self._room(index, volume.shape[0]))
        x = oblique_slice(volume, index, pitch, roll, spin, (fg.row, fg.col), self.pad_value, voxel_size)
        if self.spatial_size is not None:
            x = resize_example(x, self.spatial_size, self.pad_value)
        return random_view(x, rng, self.patch_size, self.flips, self.rot90, self.pad_value, self.affine)


__all__ = ["ExampleViews", "ExtractExample", "FlipMode", "ObliqueSliceViews", "RandomAffine", "VolumeCache",
           "random_affine", "random_view", "resize_example"]
