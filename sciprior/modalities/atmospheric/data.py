"""Atmospheric training data: gridded fields read with xarray (NetCDF, zarr); variables and levels as channels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


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

    #: examples are padded with the mean (0 after standardisation); fields on a globe have a preferred orientation
    pad_value: ClassVar[float] = 0.0
    default_flips: ClassVar[bool] = False
    legacy_data_module: ClassVar[str] = "FieldDataModule"
    legacy_reader: ClassVar[str] = "FieldReader"
    legacy_args: ClassVar[tuple[str, ...]] = ("variables", "levels", "level_dim", "time_dim", "std_scale", "fill_nan")

    def __post_init__(self) -> None:
        if not self.variables:
            raise ValueError("variables must name at least one variable")
        self.variables = list(self.variables)

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

    def fit(self, train_files: list[Path]) -> None:
        """Channel means and standard deviations over the training files (NaNs ignored), unless already set (a
        checkpoint's reader settings, or given in the config)."""
        if self.mean is not None and self.std is not None:
            return
        total = total_sq = count = None
        for f in train_files:
            x = self.raw(str(f)).astype(np.float64)
            valid = ~np.isnan(x)
            xs = np.where(valid, x, 0.0)
            s, sq, c = xs.sum(axis=(0, 2, 3)), (xs**2).sum(axis=(0, 2, 3)), valid.sum(axis=(0, 2, 3))
            total, total_sq, count = (s, sq, c) if total is None else (total + s, total_sq + sq, count + c)
        if count is None or (count == 0).any():
            raise ValueError(f"FieldReader: a channel has no valid values in {[str(f) for f in train_files]}")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std > 0, std, 1.0)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    @classmethod
    def from_legacy(cls, reader: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The settings of an earlier version's ``FieldReader`` (the same arguments)."""
        return dict(args) if reader == "FieldReader" else None


__all__ = ["FieldReader"]
