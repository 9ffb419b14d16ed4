"""Training sets for diffusion priors: real files -> (C, H, W) training examples, as Lightning data modules.

Every data module follows one pipeline:

1. ``paths`` (files, directories of DICOM slices, glob patterns, or ``sample:NAME`` for the sample
   data shipped with installed packages, see :data:`SAMPLE_FILES`) are resolved at construction: a
   missing file fails at once, naming the config key and the path.
2. The files are split into training and validation **by file** (subject/volume), never by slice:
   ``val_paths`` names the validation files, else ``val_fraction`` of the files is drawn with
   ``seed``. For a single volume, ``holdout = (start, stop)`` reserves the examples (slices, time
   steps) ``start <= k < stop`` of every training file for validation, and ``holdout_margin``
   neighbours on each side are used by neither.
3. A *reader* (one per modality, plain parameters only) turns a file into an ``(N, C, H, W)`` float32
   array of N examples in the prior's normalised domain (see each reader for the units).
4. Examples are cached by MONAI: ``cache="memory"`` (``CacheDataset``), ``"disk"``
   (``PersistentDataset`` under ``cache_dir``; the cache key includes the reader's parameters and the
   file's size and mtime) or ``"none"``. Optional resizing (``spatial_size``) happens before caching.
5. Random patches (``patch_size``), flips and 90 degree rotations are drawn per item from a generator
   seeded by ``(seed, epoch, index)``: the examples do not depend on worker count, process count or
   restarts, so a resumed run sees exactly the batches it would have seen. Validation uses fixed
   draws (the same every epoch) and no flips/rotations. Slices of 3D volumes can instead be viewed as
   oblique planes re-cut from the full resolution volume (``SliceDataModule(tilt=, spin=)``,
   :class:`ObliqueSliceViews`), kept clear of a held-out slab.

The training sampler is a :class:`~torch.utils.data.DistributedSampler` (one shard per DDP rank,
disjoint, reshuffled every epoch by Lightning's ``set_epoch``), also in a single process.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from monai.data import CacheDataset, PersistentDataset
from monai.data import Dataset as MonaiDataset
from monai.transforms import Affine, Transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sciprior.datasets.oblique import Foreground, foreground_of, limit_tilt, oblique_slice, random_tilt
from sciprior.io import atomic_write

#: ``sample:NAME`` path aliases -> (module, function returning the path). Fixed table: configs never
#: name code. Each file ships inside an installed package (nothing is downloaded).
SAMPLE_FILES: dict[str, tuple[str, str]] = {
    "mni152_t1": ("sciprior.datasets.sample_mri", "mni152_t1_path"),
    "head_ct": ("sciprior.datasets.sample_ct", "ct_head_paths"),
}

CacheMode = Literal["memory", "disk", "none"]


# ---------------------------------------------------------------------------------------------
# paths and splits
# ---------------------------------------------------------------------------------------------
def _sample_paths(name: str, key: str) -> list[Path]:
    if name not in SAMPLE_FILES:
        raise FileNotFoundError(
            f"{key}: unknown sample file 'sample:{name}'; known: "
            f"{', '.join('sample:' + k for k in sorted(SAMPLE_FILES))}"
        )
    module, fn = SAMPLE_FILES[name]
    try:
        out = getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError, FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(
            f"{key}: sample file 'sample:{name}' is not available ({module}.{fn}: {e})"
        ) from e
    paths = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    return [Path(p) for p in paths]


def _package_path(spec: str, key: str) -> Path:
    """``pkg:DIST/relative/path``: a file shipped inside the installed distribution DIST (as listed by
    ``importlib.metadata``; nothing is downloaded)."""
    from importlib import metadata

    dist_name, _, rel = spec.partition("/")
    if not dist_name or not rel:
        raise FileNotFoundError(f"{key}: 'pkg:{spec}' must be pkg:DISTRIBUTION/path/inside/it")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"{key}: 'pkg:{spec}': the package {dist_name!r} is not installed") from e
    return Path(str(dist.locate_file(rel)))


def resolve_paths(paths: str | Sequence[str], key: str = "paths") -> list[Path]:
    """Expand a path, a glob pattern, ``sample:NAME``, ``pkg:DIST/path`` or a list of them into a list of
    paths (globs sorted; duplicates dropped).

    Raises ``FileNotFoundError`` naming ``key`` and the first path that does not exist or matches nothing.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError(f"{key}: the list of paths is empty")
    out: list[Path] = []
    for item in items:
        s = os.path.expanduser(str(item))
        if s.startswith("sample:"):
            found = _sample_paths(s[len("sample:") :], key)
        elif s.startswith("pkg:"):
            found = [_package_path(s[len("pkg:") :], key)]
        elif glob.has_magic(s):
            found = [Path(p) for p in sorted(glob.glob(s, recursive=True))]
            if not found:
                raise FileNotFoundError(f"{key}: the pattern {s!r} matches no file")
        else:
            found = [Path(s)]
        for p in found:
            if not p.exists():
                raise FileNotFoundError(f"{key}: no such file or directory: {str(p)!r}")
        out.extend(found)
    seen: set[Path] = set()
    unique = [p for p in out if not (p in seen or seen.add(p))]
    return unique


def split_files(files: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of whole files: ``round(val_fraction * n)`` validation files (at least one when
    ``val_fraction > 0`` and there are two or more files; none when there is a single file)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = list(files)
    n = len(files)
    n_val = 0 if (val_fraction == 0 or n < 2) else min(max(1, round(val_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return [f for i, f in enumerate(files) if i not in val_idx], [
        f for i, f in enumerate(files) if i in val_idx
    ]


# ---------------------------------------------------------------------------------------------
# intensity normalisation
# ---------------------------------------------------------------------------------------------
def window_to_unit(x: np.ndarray, low: float, high: float, clip: bool) -> np.ndarray:
    """Affine map of ``[low, high]`` onto ``[-1, 1]`` (clipped to it if ``clip``)."""
    if not high > low:
        raise ValueError(f"intensity window needs high > low, got ({low}, {high})")
    y = (x - low) * (2.0 / (high - low)) - 1.0
    return np.clip(y, -1.0, 1.0) if clip else y


Intensity = Literal["hu_window", "percentile", "minmax", "none"]


def normalise_intensity(
    x: np.ndarray, mode: Intensity, window: tuple[float, float], percentiles: tuple[float, float], clip: bool
) -> np.ndarray:
    """Normalise a whole volume (all slices together) to the prior's domain.

    ``hu_window``: ``window = (low, high)`` in Hounsfield units -> [-1, 1] (CT).
    ``percentile``: the volume's ``percentiles = (lo, hi)`` percentiles -> [-1, 1] (MRI magnitude,
    whose scale is arbitrary). ``minmax``: min -> -1, max -> 1. ``none``: unchanged.
    """
    if mode == "hu_window":
        return window_to_unit(x, float(window[0]), float(window[1]), clip)
    if mode == "percentile":
        lo, hi = np.percentile(x, [percentiles[0], percentiles[1]])
        if hi <= lo:
            hi = lo + 1.0
        return window_to_unit(x, float(lo), float(hi), clip)
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return window_to_unit(x, lo, hi if hi > lo else lo + 1.0, clip)
    if mode == "none":
        return x
    raise ValueError(f"unknown intensity normalisation {mode!r}")


# ---------------------------------------------------------------------------------------------
# readers: file -> (N, C, H, W) float32 in the prior's domain. Plain dataclasses (picklable).
# ---------------------------------------------------------------------------------------------
@dataclass
class SliceReader:
    """2D slices of NIfTI / DICOM images read with MONAI ``LoadImage`` (rescale slope/intercept applied).

    The image is reoriented to ``axcodes`` (default ``LPS``: DICOM patient axes), normalised as a whole
    (:func:`normalise_intensity`), and cut into slices along spatial axis ``slice_axis`` (2: axial in
    LPS). Each slice is returned with its two remaining axes swapped, so an axial slice has rows
    anterior -> posterior and columns patient right -> left, like a DICOM ``pixel_array``. A 2D file
    (one DICOM slice) gives one example. ``pixel_spacing`` (mm) resamples every slice in-plane to that
    pixel size (from the file's affine; bilinear with antialiasing), so files of different
    resolutions share one scale.
    """

    intensity: Intensity = "percentile"
    window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: bool = False
    axcodes: str = "LPS"
    slice_axis: int = 2
    reader: str | None = None
    pixel_spacing: float | None = None

    def __call__(self, path: str) -> np.ndarray:
        return self.read(path)[0]

    def read(self, path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The slices ``(N, C, H, W)`` of ``path`` and their voxel size (slice, row, column) in mm (from
        the file's affine; a 2D file reports slice spacing 1, which nothing uses)."""
        from monai.transforms import LoadImage, Orientation

        try:
            img = LoadImage(image_only=True, ensure_channel_first=True, reader=self.reader)(path)
        except Exception as e:  # MONAI raises many types; name the file
            raise ValueError(f"SliceReader: cannot read image {path!r}: {e}") from e
        nd = img.dim() - 1
        if nd not in (2, 3):
            raise ValueError(
                f"SliceReader: {path!r} has {nd} spatial dimensions (shape {tuple(img.shape)}); "
                "expected a 2D slice or a 3D volume"
            )
        img = Orientation(axcodes=self.axcodes[:nd])(img)
        spacing = np.linalg.norm(np.asarray(img.affine, dtype=np.float64)[:nd, :nd], axis=0)
        arr = np.asarray(img.detach().cpu().numpy() if isinstance(img, Tensor) else img, dtype=np.float32)
        arr = normalise_intensity(arr, self.intensity, self.window, self.percentiles, self.clip).astype(
            np.float32
        )
        if nd == 2:
            vol, plane, across = arr[None], spacing, 1.0
        else:
            if not 0 <= self.slice_axis <= 2:
                raise ValueError(f"SliceReader: slice_axis must be 0, 1 or 2, got {self.slice_axis}")
            vol = np.moveaxis(arr, self.slice_axis + 1, 0)  # (N, C, a, b)
            plane, across = np.delete(spacing, self.slice_axis), float(spacing[self.slice_axis])
        if self.pixel_spacing is not None:
            vol = self._resample(vol, plane, path)
            plane = np.array([self.pixel_spacing, self.pixel_spacing], dtype=np.float64)
        # rows are the second in-plane axis after the swap below
        return np.ascontiguousarray(vol.swapaxes(-1, -2)), (across, float(plane[1]), float(plane[0]))

    def _resample(self, vol: np.ndarray, plane: np.ndarray, path: str) -> np.ndarray:
        if not self.pixel_spacing or self.pixel_spacing <= 0 or not np.all(plane > 0):
            raise ValueError(
                f"SliceReader: cannot resample {path!r} (pixel sizes {plane.tolist()} mm) to "
                f"pixel_spacing={self.pixel_spacing}"
            )
        size = [max(1, round(n * float(sp) / self.pixel_spacing)) for n, sp in zip(vol.shape[-2:], plane)]
        if tuple(size) == vol.shape[-2:]:
            return vol
        t = torch.from_numpy(vol)
        out = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out.numpy()


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D inverse FFT over the last two axes (fastMRI convention)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _center_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


@dataclass
class FastMRIReader:
    """Complex images from fastMRI-layout HDF5 (``kspace``: (slices, [coils,] H, W) complex), read with
    :func:`sciprior.datasets.fastmri.read_fastmri`.

    Each slice is ``ifft2c(kspace)``; multi-coil data are combined with coil sensitivities estimated
    from the central ``acs_lines`` of k-space (low-resolution coil images divided by their
    root-sum-of-squares; a simple ACS estimate, not ESPIRiT), giving a complex image whose
    magnitude approximates the RSS image. Images are centre-cropped to ``crop`` and scaled so that
    the ``scale_percentile`` percentile of the volume's magnitude is 1.

    ``output="complex"``: 2 channels (real, imaginary), values mostly in [-1, 1].
    ``output="magnitude"``: 1 channel, magnitude mapped from [0, 1] to [-1, 1].
    """

    output: Literal["complex", "magnitude"] = "complex"
    crop: tuple[int, int] | None = (320, 320)
    scale_percentile: float = 99.0
    acs_lines: int = 24

    def __call__(self, path: str) -> np.ndarray:
        from sciprior.datasets.fastmri import read_fastmri

        vol = read_fastmri(path)  # validates the layout; names the file and key at fault
        k = vol.kspace.numpy()  # (S, C, H, W) complex64
        if not vol.multicoil:
            k = k[:, 0]
        imgs = ifft2c(k)
        if k.ndim == 4:
            imgs = self._combine(k, imgs)
        if self.crop is not None:
            imgs = _center_crop(imgs, tuple(self.crop))
        mag = np.abs(imgs)
        scale = float(np.percentile(mag, self.scale_percentile))
        imgs = imgs / (scale if scale > 0 else 1.0)
        if self.output == "complex":
            out = np.stack([imgs.real, imgs.imag], axis=1)
        else:
            out = (2.0 * np.abs(imgs) - 1.0)[:, None]
        return np.ascontiguousarray(out.astype(np.float32))

    def _combine(self, k: np.ndarray, coil_imgs: np.ndarray) -> np.ndarray:
        ky = k.shape[-1]
        c, half = ky // 2, max(self.acs_lines // 2, 1)
        low = np.zeros_like(k)
        low[..., c - half : c + half] = k[..., c - half : c + half]
        low_imgs = ifft2c(low)
        rss = np.sqrt((np.abs(low_imgs) ** 2).sum(axis=1, keepdims=True))
        sens = low_imgs / np.maximum(rss, 1e-12 * rss.max())
        return (np.conj(sens) * coil_imgs).sum(axis=1)


@dataclass
class CubeReader:
    """Hyperspectral cubes: one ``(bands, H, W)`` array per file -> one (1, C, H, W) example.

    Formats: ``.npy``, ``.npz`` / ``.mat`` / ``.h5`` / ``.hdf5`` (array named ``key``; MATLAB v7.3
    files are HDF5), ``.nc`` (variable ``key`` via xarray). ``band_axis`` names the band axis of
    the stored array; ``bands`` selects bands (indices). Normalisation over the whole cube:
    ``percentile`` maps the ``percentiles`` of the cube to [-1, 1], ``max`` maps [0, max] to [-1, 1].
    """

    key: str | None = None
    band_axis: int = 0
    bands: list[int] | None = None
    intensity: Literal["percentile", "max", "none"] = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def _load(self, path: str) -> np.ndarray:
        suffix = Path(path).suffix.lower()
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if self.key is None:
            raise ValueError(f"CubeReader: {path!r}: set `key` (the array name inside the {suffix} file)")
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if self.key not in z:
                    raise KeyError(f"no array {self.key!r} (has: {sorted(z.files)})")
                return z[self.key]
        if suffix in (".h5", ".hdf5", ".mat"):
            if suffix == ".mat":
                import h5py

                if not h5py.is_hdf5(path):
                    from scipy.io import loadmat

                    m = loadmat(path)
                    if self.key not in m:
                        raise KeyError(
                            f"no variable {self.key!r} (has: {sorted(k for k in m if not k.startswith('_'))})"
                        )
                    return np.asarray(m[self.key])
            import h5py

            with h5py.File(path, "r") as f:
                if self.key not in f:
                    raise KeyError(f"no dataset {self.key!r} (has: {sorted(f.keys())})")
                return np.asarray(f[self.key])
        if suffix == ".nc":
            import xarray as xr

            with xr.open_dataset(path) as ds:
                if self.key not in ds:
                    raise KeyError(f"no variable {self.key!r} (has: {sorted(ds.data_vars)})")
                return np.asarray(ds[self.key].values)
        raise ValueError(f"unsupported file type {suffix!r} (use .npy, .npz, .mat, .h5, .hdf5 or .nc)")

    def __call__(self, path: str) -> np.ndarray:
        try:
            cube = self._load(path)
        except (OSError, KeyError) as e:
            raise ValueError(f"CubeReader: cannot read {path!r}: {e}") from e
        if cube.ndim != 3:
            raise ValueError(
                f"CubeReader: {path!r}: expected a 3D (bands, H, W) array, got shape {cube.shape}"
            )
        cube = np.moveaxis(np.asarray(cube, dtype=np.float32), self.band_axis, 0)
        if self.bands is not None:
            bad = [b for b in self.bands if not -cube.shape[0] <= b < cube.shape[0]]
            if bad:
                raise ValueError(f"CubeReader: {path!r} has {cube.shape[0]} bands; bands {bad} do not exist")
            cube = cube[list(self.bands)]
        if self.intensity == "percentile":
            cube = normalise_intensity(cube, "percentile", (0.0, 1.0), self.percentiles, False)
        elif self.intensity == "max":
            m = float(cube.max())
            cube = window_to_unit(cube, 0.0, m if m > 0 else 1.0, False)
        return np.ascontiguousarray(cube[None].astype(np.float32))


@dataclass
class FieldReader:
    """Gridded fields via xarray (netCDF, or zarr stores): variables and levels become channels.

    Channels in order: for each of ``variables``, one channel per selected level when the variable has
    ``level_dim`` (``levels`` selects them by coordinate value; all levels if None), else one channel.
    Examples run over ``time_dim`` (one example if the file has no such dimension). The two remaining
    dimensions are (y, x) as stored, e.g. (lat, lon). Each channel is standardised with
    ``mean``/``std`` (computed on the training files by the data module) and multiplied by
    ``std_scale``; NaNs (e.g. land in ocean fields) become ``fill_nan`` after standardisation.
    """

    variables: list[str] = field(default_factory=list)
    levels: list[float] | None = None
    level_dim: str = "level"
    time_dim: str = "time"
    mean: list[float] | None = None
    std: list[float] | None = None
    std_scale: float = 0.5
    fill_nan: float = 0.0

    def raw(self, path: str) -> np.ndarray:
        """(N, C, H, W) float32 before standardisation."""
        import xarray as xr

        try:
            ds = xr.open_zarr(path) if Path(path).is_dir() else xr.open_dataset(path)
        except Exception as e:  # xarray raises many types; name the file
            raise ValueError(f"FieldReader: cannot open {path!r}: {e}") from e
        with ds:
            chans = []
            for var in self.variables:
                if var not in ds:
                    raise ValueError(
                        f"FieldReader: {path!r} has no variable {var!r} (has: {sorted(ds.data_vars)})"
                    )
                da = ds[var]
                if self.time_dim not in da.dims:
                    da = da.expand_dims(self.time_dim)
                if self.level_dim in da.dims:
                    if self.levels is not None:
                        try:
                            da = da.sel({self.level_dim: list(self.levels)})
                        except KeyError as e:
                            raise ValueError(
                                f"FieldReader: {path!r}: variable {var!r} lacks level(s) {self.levels} "
                                f"along {self.level_dim!r}: {e}"
                            ) from e
                    da = da.transpose(self.time_dim, self.level_dim, ...)
                else:
                    da = da.expand_dims(self.level_dim, axis=1).transpose(self.time_dim, self.level_dim, ...)
                if da.ndim != 4:
                    raise ValueError(
                        f"FieldReader: {path!r}: variable {var!r} has dims {da.dims}; expected "
                        f"({self.time_dim}, [{self.level_dim},] y, x)"
                    )
                chans.append(np.asarray(da.values, dtype=np.float32))
            if not chans:
                raise ValueError("FieldReader: `variables` is empty")
            shapes = {c.shape[0:1] + c.shape[2:] for c in chans}
            if len(shapes) > 1:
                raise ValueError(
                    f"FieldReader: {path!r}: variables {self.variables} have different (time, y, x) "
                    f"shapes {sorted(shapes)}"
                )
            return np.concatenate(chans, axis=1)

    def __call__(self, path: str) -> np.ndarray:
        x = self.raw(path)
        if self.mean is None or self.std is None:
            raise ValueError(
                "FieldReader: channel statistics are not set (the data module computes them in setup)"
            )
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        if mean.shape[1] != x.shape[1]:
            raise ValueError(
                f"FieldReader: {path!r} has {x.shape[1]} channels but statistics for {mean.shape[1]}"
            )
        y = (x - mean) / std * self.std_scale
        return np.ascontiguousarray(np.nan_to_num(y, nan=self.fill_nan).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# cached examples (MONAI) and random views
# ---------------------------------------------------------------------------------------------
class _VolumeCache:
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
    """Pad (C, H, W) symmetrically with ``pad_value`` to the aspect ratio of ``size``, then resize to
    ``size`` (bilinear with antialiasing, i.e. area-like when downsampling)."""
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    target_w = max(w, round(h * tw / th))
    target_h = max(h, round(target_w * th / tw))
    target_w = max(target_w, round(target_h * tw / th))
    ph, pw = target_h - h, target_w - w
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=pad_value)
    return F.interpolate(x[None], size=(th, tw), mode="bilinear", antialias=True, align_corners=False)[0]


class ExtractExample(Transform):
    """MONAI transform ``{"path", "index"} -> (C, H, W)`` float32 tensor (deterministic, so cacheable)."""

    def __init__(self, volumes: _VolumeCache, spatial_size: tuple[int, int] | None, pad_value: float):
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
    ``read(path)`` returns the volume and its voxel size (slice, row, column) in mm (:meth:`SliceReader.read`),
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
        repeats: int,
        seed: int,
        patch_size: tuple[int, int] | None,
        flips: FlipMode,
        rot90: bool,
        pad_value: float,
        affine: RandomAffine | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        if len(base) != len(items):
            raise ValueError(f"ObliqueSliceViews: {len(base)} stored examples for {len(items)} items")
        self.cache_dir = Path(cache_dir) / "oblique" if cache_dir is not None else None
        super().__init__(base, repeats, True, seed, patch_size, flips, rot90, pad_value, affine)
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
        arr = np.load(npy, mmap_mode="r")
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


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, seeded, one disjoint shard per rank) yielding ``(index, epoch)``,
    so that the random views of an item depend on the epoch but not on workers or restarts.

    ``position_fn``, when given, returns ``(epoch, samples already consumed in this epoch)`` at the start
    of each pass (the data modules read it from the trainer's progress): the epoch replaces the value of
    ``set_epoch`` (Lightning 2.6 passes a counter that is one ahead after resuming from an end-of-epoch
    checkpoint), and the consumed samples are skipped, so a run resumed from a mid-epoch checkpoint
    (e.g. a SLURM requeue) sees the rest of the epoch exactly.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        position_fn: Callable[[], tuple[int, int]] | None = None,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.position_fn = position_fn

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip = 0
        if self.position_fn is not None:
            epoch, skip = self.position_fn()
            self.epoch = int(epoch)
        epoch = self.epoch
        for n, i in enumerate(super().__iter__()):
            if n >= skip:
                yield (int(i), epoch)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position is restored by its :class:`EpochSampler` from the trainer's progress.

    It implements Lightning's stateful-loader interface (nothing to store: the position is derived from
    the loop counters in the checkpoint), which tells Lightning that mid-epoch resumption is exact.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"position": "restored from the trainer's progress by EpochSampler"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# data modules
# ---------------------------------------------------------------------------------------------
class PriorDataModule(pl.LightningDataModule):
    """Base of the training sets (see the module docstring for the pipeline). Subclasses set ``reader``.

    Args:
        paths: files (or DICOM directories, globs, ``sample:NAME``) to train on.
        val_paths: validation files; if None, ``val_fraction`` of ``paths`` (whole files) is held out.
        val_fraction: fraction of the files used for validation when ``val_paths`` is None.
        holdout: (start, stop) example indices (slices / time steps) of every training file reserved for
            validation, for data sets of one volume; ``holdout_margin`` neighbours on each side are dropped.
        batch_size: examples per batch and per device.
        num_workers: DataLoader worker processes.
        spatial_size: (H, W) every example is resized to (after padding to that aspect ratio), or None.
        patch_size: (H, W) random patches for training (fixed patches for validation), or None.
        repeats: random views of each example per training epoch (patch priors on few images).
        val_repeats: fixed views of each validation example.
        flips: random flips in training: True (both axes), False, "horizontal" (columns: left-right in the
            usual display; for real heads, which are left-right symmetric only roughly) or "vertical".
        rot90: random 90 degree rotations in training.
        affine: random rotation / zoom / shift of every training view (:class:`RandomAffine`), or None.
        min_foreground: drop examples whose fraction of pixels above ``foreground_level`` (prior units)
            is smaller (e.g. empty slices at the top of a head).
        cache: ``memory`` (MONAI CacheDataset), ``disk`` (PersistentDataset in ``cache_dir``) or ``none``.
        cache_dir: directory of the disk cache.
        pad_value: value (prior units) used to pad to the aspect ratio or patch size.
        seed: seed of the file split, shuffling and random views.
        pin_memory: DataLoader ``pin_memory`` (useful on GPU).
    """

    reader: Callable[[str], np.ndarray]

    def __init__(
        self,
        paths: str | list[str],
        val_paths: str | list[str] | None = None,
        val_fraction: float = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        spatial_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
        repeats: int = 1,
        val_repeats: int = 1,
        flips: FlipMode = True,
        rot90: bool = False,
        min_foreground: float = 0.0,
        foreground_level: float = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: float = -1.0,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.files = resolve_paths(paths, f"{name}.paths")
        self.val_files_given = (
            resolve_paths(val_paths, f"{name}.val_paths") if val_paths is not None else None
        )
        if batch_size < 1:
            raise ValueError(f"{name}.batch_size must be >= 1, got {batch_size}")
        if holdout is not None and not 0 <= holdout[0] < holdout[1]:
            raise ValueError(f"{name}.holdout must be (start, stop) with 0 <= start < stop, got {holdout}")
        for key, v in (("spatial_size", spatial_size), ("patch_size", patch_size)):
            if v is not None and (len(v) != 2 or min(v) < 1):
                raise ValueError(f"{name}.{key} must be two positive ints (H, W), got {v}")
        if cache == "disk" and cache_dir is None:
            raise ValueError(f"{name}.cache='disk' needs cache_dir")
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"{name}.cache must be memory, disk or none, got {cache!r}")
        self.val_fraction, self.holdout, self.holdout_margin = val_fraction, holdout, int(holdout_margin)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.repeats, self.val_repeats = int(repeats), int(val_repeats)
        if not (isinstance(flips, bool) or flips in ("horizontal", "vertical")):  # 1 == True: not a mode
            raise ValueError(f"{name}.flips must be true, false, 'horizontal' or 'vertical', got {flips!r}")
        self.flips, self.rot90 = flips, bool(rot90)
        self.min_foreground, self.foreground_level = float(min_foreground), float(foreground_level)
        self.cache, self.cache_dir, self.pad_value = cache, cache_dir, float(pad_value)
        self.seed, self.pin_memory = int(seed), bool(pin_memory)
        if isinstance(affine, dict):  # from Python; the CLI passes a RandomAffine
            try:
                affine = RandomAffine(**affine)
            except TypeError as e:
                raise ValueError(f"{name}.affine: {e} (keys: rotate, scale, translate)") from None
        self.affine = affine
        if self.val_files_given is not None:
            self.train_files, self.val_files = list(self.files), list(self.val_files_given)
            both = sorted(set(map(str, self.train_files)) & set(map(str, self.val_files)))
            if both:
                raise ValueError(f"{name}: files in both paths and val_paths: {both}")
        else:
            self.train_files, self.val_files = split_files(self.files, val_fraction, self.seed)
        self.train_items: list[dict[str, Any]] = []
        self.val_items: list[dict[str, Any]] = []
        self.train_set: ExampleViews | None = None
        self.val_set: ExampleViews | None = None

    # -- subclass hooks --------------------------------------------------------------------------
    def prepare_reader(self, train_files: list[Path]) -> None:
        """Called once in ``setup`` before any example is read (e.g. to fit statistics)."""

    def domain(self) -> dict[str, Any]:
        """Plain description of the prior's domain (stored in exported checkpoints)."""
        reader = self.reader
        return {
            "data_module": type(self).__name__,
            "reader": type(reader).__name__,
            "reader_args": _plain(asdict(reader)) if hasattr(reader, "__dataclass_fields__") else {},
            "spatial_size": list(self.spatial_size) if self.spatial_size else None,
            "patch_size": list(self.patch_size) if self.patch_size else None,
            "train_files": [str(f) for f in self.train_files],
            "val_files": [str(f) for f in self.val_files],
            "holdout": list(self.holdout) if self.holdout else None,
        }

    # -- setup ---------------------------------------------------------------------------------
    def _scan(self, volumes: _VolumeCache, files: list[Path], role: str) -> list[dict[str, Any]]:
        items = []
        signature = (
            repr(sorted(asdict(self.reader).items()))
            if hasattr(self.reader, "__dataclass_fields__")
            else type(self.reader).__name__
        )
        signature += f"|{self.spatial_size}|{self.pad_value}"
        for f in files:
            arr = volumes(str(f))
            n = arr.shape[0]
            keep = range(n)
            if self.holdout is not None:
                a, b = self.holdout
                if role == "train":
                    keep = [k for k in keep if not (a - self.holdout_margin <= k < b + self.holdout_margin)]
                elif role == "holdout":
                    keep = [k for k in keep if a <= k < b]
            if self.min_foreground > 0:
                frac = (arr.reshape(n, -1) > self.foreground_level).mean(axis=1)
                keep = [k for k in keep if frac[k] >= self.min_foreground]
            st = f.stat()
            items += [
                {"path": str(f), "index": int(k), "key": f"{signature}|{st.st_size}|{st.st_mtime_ns}"}
                for k in keep
            ]
        return items

    def _cached(self, items: list[dict[str, Any]], transform: ExtractExample) -> Dataset:
        if self.cache == "memory":
            return CacheDataset(
                items, transform, cache_rate=1.0, num_workers=0, progress=False, copy_cache=False
            )
        if self.cache == "disk":
            return PersistentDataset(items, transform, cache_dir=self.cache_dir, hash_func=_item_hash)
        return MonaiDataset(items, transform)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        name = type(self).__name__
        if not callable(getattr(self, "reader", None)):
            raise TypeError(
                f"{name} has no reader: use one of its subclasses (SliceDataModule, "
                "FastMRIDataModule, HyperspectralDataModule, FieldDataModule)"
            )
        self.prepare_reader(self.train_files)
        volumes = _VolumeCache(self.reader)
        self.train_items = self._scan(volumes, self.train_files, "train")
        self.val_items = self._scan(volumes, self.val_files, "val")
        if self.holdout is not None:
            self.val_items += self._scan(volumes, self.train_files, "holdout")
        if not self.train_items:
            raise ValueError(
                f"{name}: no training examples left in {[str(f) for f in self.train_files]} "
                f"(check holdout={self.holdout}, min_foreground={self.min_foreground})"
            )
        transform = ExtractExample(volumes, self.spatial_size, self.pad_value)
        common = dict(
            seed=self.seed,
            patch_size=self.patch_size,
            flips=self.flips,
            rot90=self.rot90,
            pad_value=self.pad_value,
            affine=self.affine,
        )
        self.train_set = self._train_views(transform, common)
        self.val_set = ExampleViews(
            self._cached(self.val_items, transform), self.val_repeats, False, **common
        )

    def _train_views(self, transform: ExtractExample, common: dict[str, Any]) -> ExampleViews:
        """The training set: random views of the cached training examples (subclasses may view the files)."""
        return ExampleViews(self._cached(self.train_items, transform), self.repeats, True, **common)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """(C, H, W) of a training example (after ``setup``)."""
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        return tuple(self.train_set[(0, 0)].shape)

    def _has_trainer(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def _position(self) -> tuple[int, int]:
        """(epoch, training samples this rank already consumed in it), from the trainer's loop progress."""
        trainer = self.trainer
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)  # type: ignore[union-attr]
        n = trainer.num_training_batches  # type: ignore[union-attr]
        skip = done if 0 < done < n else 0
        return int(trainer.current_epoch), skip * self.batch_size  # type: ignore[union-attr]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._world()
        n = len(self.train_set)
        if n // world < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: {n} training examples for {world} device(s) cannot fill "
                f"one batch of batch_size={self.batch_size}"
            )
        sampler = EpochSampler(
            self.train_set,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
            position_fn=self._position if self._has_trainer() else None,
        )
        return ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            self.setup("fit")
        if len(self.val_set) == 0:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )


def _item_hash(item: dict[str, Any]) -> bytes:
    """Disk-cache key of an example: file, index, reader parameters, file size and mtime."""
    return hashlib.sha1(repr(sorted(item.items())).encode()).hexdigest().encode()


def _plain(v: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python (for YAML/JSON)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class SliceDataModule(PriorDataModule):
    """2D slices of NIfTI / DICOM volumes (MONAI ``LoadImage``), normalised per modality.

    CT: ``intensity="hu_window"`` with ``window=(low, high)`` in HU mapped to [-1, 1] (keep the window
    wide, e.g. (-1000, 1000), so the prior's domain stays linear in attenuation). MRI magnitude:
    ``intensity="percentile"`` maps the volume's ``percentiles`` to [-1, 1]. See :class:`SliceReader`
    for the orientation of the slices; the other arguments are those of :class:`PriorDataModule`.

    Args:
        intensity, window, percentiles, clip: intensity normalisation (:func:`normalise_intensity`).
        axcodes: orientation the volumes are brought to before slicing.
        slice_axis: spatial axis (0, 1, 2 in ``axcodes`` order) along which slices are cut.
        image_reader: MONAI reader name (e.g. ``PydicomReader``, ``NibabelReader``), or None for auto.
        pixel_spacing: in-plane pixel size (mm) every slice is resampled to, or None (as stored).
        tilt: oblique re-slicing of training views (:class:`ObliqueSliceViews`): each view is the plane through
            its slice tilted by up to ``tilt`` degrees about both in-plane axes, cut from the full resolution
            volume, so it shows anatomy no stored slice does (0: the stored slices). Angles are physical (in
            mm space, from the file's voxel size), so thick slices are tilted as much as thin ones in the
            patient. Near ``holdout`` the tilt shrinks so that no view reaches
            the held-out slab or its margin. Keeps every training volume in memory, or memory-mapped from
            ``cache_dir`` with ``cache: disk`` (for many or large volumes).
        spin: in-plane rotation of the oblique views, up to ``spin`` degrees (at full resolution).
    """

    def __init__(
        self,
        paths: str | list[str],
        intensity: Intensity = "percentile",
        window: tuple[float, float] = (-1000.0, 1000.0),
        percentiles: tuple[float, float] = (0.5, 99.5),
        clip: bool = False,
        axcodes: str = "LPS",
        slice_axis: int = 2,
        image_reader: str | None = None,
        pixel_spacing: float | None = None,
        val_paths: str | list[str] | None = None,
        val_fraction: float = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        spatial_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
        repeats: int = 1,
        val_repeats: int = 1,
        flips: FlipMode = True,
        rot90: bool = False,
        min_foreground: float = 0.0,
        foreground_level: float = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: float = -1.0,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
        tilt: float = 0.0,
        spin: float = 0.0,
    ):
        super().__init__(
            paths,
            val_paths,
            val_fraction,
            holdout,
            holdout_margin,
            batch_size,
            num_workers,
            spatial_size,
            patch_size,
            repeats,
            val_repeats,
            flips,
            rot90,
            min_foreground,
            foreground_level,
            cache,
            cache_dir,
            pad_value,
            seed,
            pin_memory,
            affine,
        )
        self.reader = SliceReader(
            intensity,
            tuple(window),
            tuple(percentiles),
            clip,
            axcodes,
            slice_axis,
            image_reader,
            pixel_spacing,
        )
        if not 0 <= tilt < 45:
            raise ValueError(f"SliceDataModule.tilt must be in [0, 45) degrees, got {tilt!r}")
        if not 0 <= spin <= 180:
            raise ValueError(f"SliceDataModule.spin must be in [0, 180] degrees, got {spin!r}")
        self.tilt, self.spin = float(tilt), float(spin)

    def _train_views(self, transform: ExtractExample, common: dict[str, Any]) -> ExampleViews:
        if not (self.tilt or self.spin):
            return super()._train_views(transform, common)
        keep_out = None
        if self.holdout is not None:
            keep_out = (self.holdout[0] - self.holdout_margin, self.holdout[1] + self.holdout_margin)
        return ObliqueSliceViews(
            self._cached(self.train_items, transform),  # the stored slices (``base``), e.g. to check copying
            self.train_items,
            self.reader.read,
            self.spatial_size,
            self.tilt,
            self.spin,
            keep_out,
            self.foreground_level,
            self.repeats,
            **common,
            cache_dir=self.cache_dir if self.cache == "disk" else None,
        )


class FastMRIDataModule(PriorDataModule):
    """Complex (2-channel) or magnitude slices from fastMRI-layout HDF5 files (:class:`FastMRIReader`).

    Args:
        output, crop, scale_percentile, acs_lines: see :class:`FastMRIReader`.
        Other arguments: :class:`PriorDataModule` (``pad_value`` defaults to 0, the complex background).
    """

    def __init__(
        self,
        paths: str | list[str],
        output: Literal["complex", "magnitude"] = "complex",
        crop: tuple[int, int] | None = (320, 320),
        scale_percentile: float = 99.0,
        acs_lines: int = 24,
        val_paths: str | list[str] | None = None,
        val_fraction: float = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        spatial_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
        repeats: int = 1,
        val_repeats: int = 1,
        flips: FlipMode = True,
        rot90: bool = False,
        min_foreground: float = 0.0,
        foreground_level: float = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: float = 0.0,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
    ):
        super().__init__(
            paths,
            val_paths,
            val_fraction,
            holdout,
            holdout_margin,
            batch_size,
            num_workers,
            spatial_size,
            patch_size,
            repeats,
            val_repeats,
            flips,
            rot90,
            min_foreground,
            foreground_level,
            cache,
            cache_dir,
            pad_value,
            seed,
            pin_memory,
            affine,
        )
        self.reader = FastMRIReader(
            output, tuple(crop) if crop is not None else None, scale_percentile, acs_lines
        )


class HyperspectralDataModule(PriorDataModule):
    """Random ``C x patch x patch`` patches of hyperspectral cubes (:class:`CubeReader`).

    Set ``patch_size`` and ``repeats`` (patches per cube per epoch). ``rot90`` is on by default
    (remote-sensing scenes have no preferred orientation).

    Args:
        key, band_axis, bands, intensity, percentiles: see :class:`CubeReader`.
        Other arguments: :class:`PriorDataModule`.
    """

    def __init__(
        self,
        paths: str | list[str],
        key: str | None = None,
        band_axis: int = 0,
        bands: list[int] | None = None,
        intensity: Literal["percentile", "max", "none"] = "percentile",
        percentiles: tuple[float, float] = (0.5, 99.5),
        val_paths: str | list[str] | None = None,
        val_fraction: float = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        spatial_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = (64, 64),
        repeats: int = 16,
        val_repeats: int = 4,
        flips: FlipMode = True,
        rot90: bool = True,
        min_foreground: float = 0.0,
        foreground_level: float = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: float = -1.0,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
    ):
        super().__init__(
            paths,
            val_paths,
            val_fraction,
            holdout,
            holdout_margin,
            batch_size,
            num_workers,
            spatial_size,
            patch_size,
            repeats,
            val_repeats,
            flips,
            rot90,
            min_foreground,
            foreground_level,
            cache,
            cache_dir,
            pad_value,
            seed,
            pin_memory,
            affine,
        )
        self.reader = CubeReader(
            key, band_axis, list(bands) if bands is not None else None, intensity, tuple(percentiles)
        )


class FieldDataModule(PriorDataModule):
    """Gridded fields (netCDF via xarray): ``variables`` x ``levels`` as channels, time steps as examples.

    Channel means and standard deviations are computed on the training files in ``setup`` (NaNs
    ignored) and stored in the exported checkpoint. Flips are off by default (fields on a globe have a
    preferred orientation); ``holdout`` can reserve a block of time steps for validation.

    Args:
        variables, levels, level_dim, time_dim, std_scale, fill_nan: see :class:`FieldReader`.
        Other arguments: :class:`PriorDataModule` (``pad_value`` defaults to 0, the mean).
    """

    def __init__(
        self,
        paths: str | list[str],
        variables: list[str],
        levels: list[float] | None = None,
        level_dim: str = "level",
        time_dim: str = "time",
        std_scale: float = 0.5,
        fill_nan: float = 0.0,
        val_paths: str | list[str] | None = None,
        val_fraction: float = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        spatial_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
        repeats: int = 1,
        val_repeats: int = 1,
        flips: FlipMode = False,
        rot90: bool = False,
        min_foreground: float = 0.0,
        foreground_level: float = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: float = 0.0,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
    ):
        super().__init__(
            paths,
            val_paths,
            val_fraction,
            holdout,
            holdout_margin,
            batch_size,
            num_workers,
            spatial_size,
            patch_size,
            repeats,
            val_repeats,
            flips,
            rot90,
            min_foreground,
            foreground_level,
            cache,
            cache_dir,
            pad_value,
            seed,
            pin_memory,
            affine,
        )
        if not variables:
            raise ValueError("FieldDataModule.variables must name at least one variable")
        self.reader = FieldReader(
            list(variables),
            list(levels) if levels is not None else None,
            level_dim,
            time_dim,
            None,
            None,
            std_scale,
            fill_nan,
        )

    def prepare_reader(self, train_files: list[Path]) -> None:
        if self.reader.mean is not None:
            return
        total = total_sq = count = None
        for f in train_files:
            x = self.reader.raw(str(f)).astype(np.float64)
            valid = ~np.isnan(x)
            xs = np.where(valid, x, 0.0)
            s, sq, c = xs.sum(axis=(0, 2, 3)), (xs**2).sum(axis=(0, 2, 3)), valid.sum(axis=(0, 2, 3))
            total, total_sq, count = (s, sq, c) if total is None else (total + s, total_sq + sq, count + c)
        if count is None or (count == 0).any():
            raise ValueError(
                f"FieldDataModule: a channel has no valid values in {[str(f) for f in train_files]}"
            )
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std > 0, std, 1.0)
        self.reader.mean = [float(m) for m in mean]
        self.reader.std = [float(s) for s in std]
