"""Hyperspectral training data: cubes ``(bands, H, W)`` from NumPy, MATLAB, HDF5 or NetCDF files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from sciprior.modalities.adapter import percentile_window, window_map


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

    legacy_data_module: ClassVar[str] = "HyperspectralDataModule"
    legacy_reader: ClassVar[str] = "CubeReader"
    legacy_args: ClassVar[tuple[str, ...]] = ("key", "band_axis", "bands", "intensity", "percentiles")

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
            cube = window_map(*percentile_window(cube, self.percentiles), "a.u.", "bands").to_prior(cube)
        elif self.intensity == "max":
            m = float(cube.max())
            cube = window_map(0.0, m if m > 0 else 1.0, "a.u.", "bands").to_prior(cube)
        return np.ascontiguousarray(cube[None].astype(np.float32))

    @classmethod
    def from_legacy(cls, reader: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of an earlier version's ``CubeReader`` (the same arguments)."""
        return dict(args) if reader == "CubeReader" else None


__all__ = ["CubeReader"]
