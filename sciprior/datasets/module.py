"""The training set of a prior, as one Lightning data module for every modality.

``data: {modality: NAME, reader: {name: ..., ...}, paths: ..., ...}`` in a training config: the modality's reader
(``sciprior.modalities.get(NAME).readers``; its settings checked against its signature) turns each file into
``(N, C, H, W)`` float32 examples in the prior's domain. The pipeline:

1. ``paths`` (files, directories of DICOM slices, glob patterns, ``sample:NAME`` for sample data shipped with
   installed packages, ``pkg:DIST/path``) are resolved at construction: a missing file fails at once, naming the
   config key and the path.
2. The files are split into training and validation **by file** (subject/volume), never by slice:
   ``val_paths`` names the validation files, else ``val_fraction`` of the files is drawn with ``seed``. For a
   single volume, ``holdout = (start, stop)`` reserves the examples (slices, time steps) ``start <= k < stop``
   of every training file for validation, and ``holdout_margin`` neighbours on each side are used by neither.
3. The reader reads each file once (a reader with ``fit(train_files)`` first fits its statistics, e.g. channel
   means of fields); examples are cached by MONAI: ``cache="memory"`` (``CacheDataset``), ``"disk"``
   (``PersistentDataset`` under ``cache_dir``; the key includes the reader's settings and the file's size and
   mtime) or ``"none"``. Optional resizing (``spatial_size``) happens before caching.
4. Random patches, flips, 90 degree rotations and affine jitter are drawn per item from a generator seeded by
   ``(seed, epoch, index)`` (:mod:`sciprior.datasets.views`): the examples do not depend on worker count,
   process count or restarts, so a resumed run sees exactly the batches it would have seen. Validation uses
   fixed draws and no flips/rotations. Slices of volumes can instead be viewed as oblique planes re-cut from
   the full resolution volume (``tilt``, ``spin``), kept clear of a held-out slab.

The training sampler is a :class:`~sciprior.datasets.sampling.EpochSampler` (one disjoint shard per DDP rank,
reshuffled every epoch), also in a single process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
from jsonargparse import ArgumentParser
from monai.data import CacheDataset, PersistentDataset
from monai.data import Dataset as MonaiDataset
from torch.utils.data import DataLoader, Dataset

from sciprior.datasets.sampling import EpochSampler, ResumableLoader
from sciprior.datasets.views import (
    ExampleViews,
    ExtractExample,
    FlipMode,
    ObliqueSliceViews,
    RandomAffine,
    VolumeCache,
)
from sciprior.io.paths import resolve_paths
from sciprior.io.plain import plain
from sciprior.modalities import get, sample_table
from sciprior.ranges import FiniteFloat, NonNegativeFloat, NonNegativeInt, PositiveInt, UnitInterval

CacheMode = Literal["memory", "disk", "none"]


def build_reader(modality: str, settings: dict[str, Any] | None) -> tuple[Any, str]:
    """``(reader, name)``: the reader of ``modality`` named ``settings["name"]`` (default: its first), built from
    the other settings after checking them against its signature; errors name ``data.modality`` / ``data.reader``."""
    try:
        mod = get(modality)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"data.modality: {e.args[0] if e.args else e}") from None
    settings = dict(settings or {})
    name = settings.pop("name", None)
    try:
        cls = mod.reader(name)
    except KeyError as e:
        raise ValueError(f"data.reader.name: {e.args[0]}") from None
    name = mod.reader_name(cls)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "reader")
    try:
        ns = parser.parse_object({"reader": settings})
        return parser.instantiate_classes(ns).reader, name
    except Exception as e:  # jsonargparse's errors (unknown key, wrong type) and the reader's ValueErrors
        msg = str(e).strip().replace("Group 'reader' does not accept nested key", "unknown setting")
        raise ValueError(f"data.reader ({modality} reader {name!r}, {cls.__name__}): {msg}") from None


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


class PriorDataModule(pl.LightningDataModule):
    """The training set of a prior: a modality's files read by one of its readers (see the module docstring).

    Args:
        modality: the modality whose reader reads the files (``sciprior.modalities.names()``).
        paths: files (or DICOM directories, globs, ``sample:NAME``, ``pkg:DIST/path``) to train on.
        reader: the reader's name (``name``, default: the modality's first reader) and settings, checked against
            its signature (e.g. ``{window: [-1024, 3071], clip: true}`` for CT slices).
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
            usual display; for real heads, which are left-right symmetric only roughly) or "vertical"; None: the
            reader's default (True; fields on a globe: False).
        rot90: random 90 degree rotations in training.
        affine: random rotation / zoom / shift of every training view (:class:`RandomAffine`), or None.
        min_foreground: drop examples whose fraction of pixels above ``foreground_level`` (prior units)
            is smaller (e.g. empty slices at the top of a head).
        cache: ``memory`` (MONAI CacheDataset), ``disk`` (PersistentDataset in ``cache_dir``) or ``none``.
        cache_dir: directory of the disk cache.
        pad_value: value (prior units) used to pad to the aspect ratio or patch size; None: the reader's
            background (-1 for images in [-1, 1], 0 for complex images and standardised fields).
        seed: seed of the file split, shuffling and random views.
        pin_memory: DataLoader ``pin_memory`` (useful on GPU).
        tilt: oblique re-slicing of training views (:class:`ObliqueSliceViews`; readers of volume slices only):
            each view is the plane through its slice tilted by up to ``tilt`` degrees about both in-plane axes,
            cut from the full resolution volume, so it shows anatomy no stored slice does (0: the stored
            slices). Angles are physical (in mm space, from the file's voxel size). Near ``holdout`` the tilt
            shrinks so that no view reaches the held-out slab or its margin. Keeps every training volume in
            memory, or memory-mapped from ``cache_dir`` with ``cache: disk`` (for many or large volumes).
        spin: in-plane rotation of the oblique views, up to ``spin`` degrees (at full resolution).
    """

    def __init__(
        self,
        modality: str,
        paths: str | list[str],
        reader: dict[str, Any] | None = None,
        val_paths: str | list[str] | None = None,
        val_fraction: UnitInterval = 0.2,
        holdout: tuple[int, int] | None = None,
        holdout_margin: NonNegativeInt = 0,
        batch_size: PositiveInt = 16,
        num_workers: NonNegativeInt = 0,
        spatial_size: tuple[PositiveInt, PositiveInt] | None = None,
        patch_size: tuple[PositiveInt, PositiveInt] | None = None,
        repeats: PositiveInt = 1,
        val_repeats: PositiveInt = 1,
        flips: FlipMode | None = None,
        rot90: bool = False,
        min_foreground: UnitInterval = 0.0,
        foreground_level: FiniteFloat = -0.9,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        pad_value: FiniteFloat | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        affine: RandomAffine | None = None,
        tilt: NonNegativeFloat = 0.0,
        spin: NonNegativeFloat = 0.0,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if holdout is not None and not 0 <= holdout[0] < holdout[1]:
            raise ValueError(f"data.holdout must be (start, stop) with 0 <= start < stop, got {holdout}")
        for key, v in (("spatial_size", spatial_size), ("patch_size", patch_size)):
            if v is not None and (len(v) != 2 or min(v) < 1):
                raise ValueError(f"data.{key} must be two positive ints (H, W), got {v}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("data.cache='disk' needs data.cache_dir")
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"data.cache must be memory, disk or none, got {cache!r}")
        if not 0 <= tilt < 45:
            raise ValueError(f"data.tilt must be in [0, 45) degrees, got {tilt!r}")
        if not 0 <= spin <= 180:
            raise ValueError(f"data.spin must be in [0, 180] degrees, got {spin!r}")
        # the scalar settings above first (no file is touched for a bad number), then the reader and the files
        self.modality = modality
        self.reader, self.reader_name = build_reader(modality, reader)
        self.files = resolve_paths(paths, "data.paths", sample_table)
        self.val_files_given = (
            resolve_paths(val_paths, "data.val_paths", sample_table) if val_paths is not None else None
        )
        if (tilt or spin) and not callable(getattr(self.reader, "read", None)):
            raise ValueError(f"data.tilt/data.spin: oblique re-slicing needs a reader of volume slices; the "
                             f"{modality} reader {self.reader_name!r} reads no volumes")
        self.tilt, self.spin = float(tilt), float(spin)
        if flips is None:
            flips = getattr(self.reader, "default_flips", True)
        if pad_value is None:
            pad_value = getattr(self.reader, "pad_value", -1.0)
        self.val_fraction, self.holdout, self.holdout_margin = val_fraction, holdout, int(holdout_margin)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.repeats, self.val_repeats = int(repeats), int(val_repeats)
        if not (isinstance(flips, bool) or flips in ("horizontal", "vertical")):  # 1 == True: not a mode
            raise ValueError(f"data.flips must be true, false, 'horizontal' or 'vertical', got {flips!r}")
        self.flips, self.rot90 = flips, bool(rot90)
        self.min_foreground, self.foreground_level = float(min_foreground), float(foreground_level)
        self.cache, self.cache_dir, self.pad_value = cache, cache_dir, float(pad_value)
        self.seed, self.pin_memory = int(seed), bool(pin_memory)
        if isinstance(affine, dict):  # from Python; the CLI passes a RandomAffine
            try:
                affine = RandomAffine(**affine)
            except TypeError as e:
                raise ValueError(f"data.affine: {e} (keys: rotate, scale, translate)") from None
        self.affine = affine
        if self.val_files_given is not None:
            self.train_files, self.val_files = list(self.files), list(self.val_files_given)
            both = sorted(set(map(str, self.train_files)) & set(map(str, self.val_files)))
            if both:
                raise ValueError(f"data: files in both paths and val_paths: {both}")
        else:
            self.train_files, self.val_files = split_files(self.files, val_fraction, self.seed)
        self.train_items: list[dict[str, Any]] = []
        self.val_items: list[dict[str, Any]] = []
        self.train_set: ExampleViews | None = None
        self.val_set: ExampleViews | None = None

    def domain(self) -> dict[str, Any]:
        """Plain description of the prior's domain (stored in exported checkpoints): the modality, the reader's
        name and settings (``sciprior reconstruct`` checks them against the adapter's), sizes and files."""
        return {
            "modality": self.modality,
            "reader": {"name": self.reader_name, **plain(asdict(self.reader))},
            "spatial_size": list(self.spatial_size) if self.spatial_size else None,
            "patch_size": list(self.patch_size) if self.patch_size else None,
            "train_files": [str(f) for f in self.train_files],
            "val_files": [str(f) for f in self.val_files],
            "holdout": list(self.holdout) if self.holdout else None,
        }

    # -- setup ---------------------------------------------------------------------------------
    def _scan(self, volumes: VolumeCache, files: list[Path], role: str) -> list[dict[str, Any]]:
        items = []
        signature = f"{self.modality}|{self.reader_name}|{sorted(asdict(self.reader).items())!r}"
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
        if callable(getattr(self.reader, "fit", None)):  # e.g. channel statistics of the training files
            self.reader.fit(self.train_files)
        volumes = VolumeCache(self.reader)
        self.train_items = self._scan(volumes, self.train_files, "train")
        self.val_items = self._scan(volumes, self.val_files, "val")
        if self.holdout is not None:
            self.val_items += self._scan(volumes, self.train_files, "holdout")
        if not self.train_items:
            raise ValueError(
                f"data: no training examples left in {[str(f) for f in self.train_files]} "
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
        """The training set: random views of the cached training examples, or oblique re-cut views of the volumes."""
        base = self._cached(self.train_items, transform)  # the stored examples (also ``base`` of oblique views)
        if not (self.tilt or self.spin):
            return ExampleViews(base, self.repeats, True, **common)
        keep_out = None
        if self.holdout is not None:
            keep_out = (self.holdout[0] - self.holdout_margin, self.holdout[1] + self.holdout_margin)
        return ObliqueSliceViews(
            base, self.train_items, self.reader.read, self.spatial_size, self.tilt, self.spin, keep_out,
            self.foreground_level, cache_dir=self.cache_dir if self.cache == "disk" else None, repeats=self.repeats,
            **common,
        )

    @property
    def example_shape(self) -> tuple[int, ...]:
        """(C, H, W) of a training example (after ``setup``)."""
        if self.train_set is None:
            raise RuntimeError("PriorDataModule: call setup() first")
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
                f"data: {n} training examples for {world} device(s) cannot fill one batch of "
                f"data.batch_size={self.batch_size}"
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


__all__ = ["PriorDataModule", "build_reader", "split_files"]
