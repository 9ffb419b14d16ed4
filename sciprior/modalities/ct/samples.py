"""Real CT sample data shipped by installed packages (no download at run time).

- ``head`` (default): ``693_UNCR.dcm`` from the PyPI package ``pydicom-data`` (MIT-licensed test
  data of pydicom): a real non-contrast head CT slice (CQ500 collection, 140 kVp, "5/5mm Plain"),
  512 x 512, 0.4785 mm pixels, padding -2000 outside the 245 mm field of view. "UNCR" is the
  uncompressed copy of the lossless (reversible) JPEG 2000 file, i.e. the original data.
- ``small``: ``CT_small.dcm`` shipped inside ``pydicom`` itself, 128 x 128, 0.66 mm pixels.

Files are located through the installed distributions' own file lists (``importlib.metadata``),
never through pydicom's downloader.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sciprior.io.dicom import DicomImage
from sciprior.modalities.ct.io import read_ct_dicom
from sciprior.modalities.ct.units import CTNormalization, hu_to_mu

FILES = {
    "head": ("pydicom-data", "data_store/data/693_UNCR.dcm"),
    "small": ("pydicom", "pydicom/data/test_files/CT_small.dcm"),
}


def sample_ct_path(name: str = "head") -> Path:
    """Path of a shipped sample CT file (see module docstring); raises if its package is missing."""
    if name not in FILES:
        raise KeyError(f"sample_ct_path: unknown sample {name!r}; choose one of {', '.join(FILES)}")
    dist_name, rel = FILES[name]
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(f"sample CT {name!r} needs the package {dist_name!r} "
                                  f"(pip install {dist_name})") from e
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise FileNotFoundError(f"sample CT {name!r}: {path} is not in the installed {dist_name!r} package")
    return path


@dataclass
class SampleCT:
    """A real CT slice ready for simulation.

    Attributes:
        hu: ``(1, 1, H, W)`` float32 HU (padding set to -1024).
        pixel_size: mm (square pixels, after any downsampling).
        mu: ``(1, 1, H, W)`` attenuation in 1/mm (``hu_to_mu``).
        normalized: ``(1, 1, H, W)`` prior-range image (``normalization.hu_to_prior``, clipped to [-1, 1]).
        fov_mask: ``(H, W)`` bool, True inside the scanner's reconstructed field of view.
        normalization: the HU <-> prior map used.
        source: the DICOM slice as read (HU in ``values``; full resolution, header kept for writing results).
    """

    hu: Tensor
    pixel_size: float
    mu: Tensor
    normalized: Tensor
    fov_mask: Tensor
    normalization: CTNormalization
    source: DicomImage


def load_sample_ct(name: str = "head", size: int | None = None,
                   normalization: CTNormalization | None = None) -> SampleCT:
    """Load a shipped real CT slice; ``size`` downsamples by block averaging (must divide the size).

    E.g. ``load_sample_ct(size=256)`` gives the head slice at 256 x 256 with 0.957 mm pixels.
    """
    sl = read_ct_dicom(sample_ct_path(name))
    if not sl.is_isotropic:
        raise ValueError(f"sample CT {name!r} has non-square pixels {sl.pixel_spacing}")
    hu = sl.values.astype(np.float64)
    mask = ~sl.padding
    spacing = sl.pixel_spacing[0]
    if size is not None:
        h, w = hu.shape
        if h != w or size <= 0 or h % size:
            raise ValueError(f"load_sample_ct: size {size} must divide the {h}x{w} image")
        f = h // size
        hu = hu.reshape(size, f, size, f).mean(axis=(1, 3))
        mask = mask.reshape(size, f, size, f).all(axis=(1, 3))
        spacing *= f
    norm = normalization or CTNormalization()
    hu_t = torch.as_tensor(hu, dtype=torch.float32)[None, None]
    return SampleCT(hu=hu_t, pixel_size=float(spacing), mu=hu_to_mu(hu_t, norm.mu_water),
                    normalized=norm.hu_to_prior(hu_t, clip=True), fov_mask=torch.as_tensor(mask),
                    normalization=norm, source=sl)


def ct_head_paths() -> list[Path]:
    """The shipped real head CT as a list of DICOM paths (one slice), for ``sample:head_ct`` inputs."""
    return [sample_ct_path("head")]


#: ``sample:NAME`` inputs of the CT modality
SAMPLES = {"head_ct": ct_head_paths, "ct_head": ct_head_paths}
