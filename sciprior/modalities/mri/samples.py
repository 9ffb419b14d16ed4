"""Real MRI sample data shipped by an installed package: the MNI152 T1 brain template (nilearn).

The ICBM 2009a nonlinear symmetric MNI152 template, 1 mm isotropic, ``(197, 233, 189)`` voxels in
RAS+ orientation, intensities 0..255 (uint8), as shipped inside the ``nilearn`` wheel at
``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``. It is read with nibabel
straight from the installed package: no download, and nilearn is not imported (its import is slow).

Reference: Fonov, Evans, McKinstry, Almli, Collins (2009). Unbiased nonlinear average age-appropriate
brain templates from birth to adulthood. NeuroImage 47:S102; Fonov et al. (2011) NeuroImage 54:313-327.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNI152_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
PIP_PACKAGE = "nilearn"


def mni152_t1_path() -> Path:
    """Path of the MNI152 T1 template inside the installed ``nilearn`` package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"sample_mri: the MNI152 template comes from the '{PIP_PACKAGE}' package; "
                                  f"install it with `pip install {PIP_PACKAGE}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / MNI152_T1_FILE
    if not path.is_file():
        raise FileNotFoundError(f"sample_mri: {path} is missing from the installed nilearn package")
    return path


@lru_cache(maxsize=1)
def _load_cached() -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(mni152_t1_path()))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol.setflags(write=False)
    aff = np.asarray(img.affine, dtype=np.float64)
    aff.setflags(write=False)
    return vol, aff


def load_mni152_t1() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 volume ``(197, 233, 189)`` float32 (intensities 0..255, RAS+ voxel axes) and its
    4x4 voxel-to-world affine (mm). Copies, so callers may modify them."""
    vol, aff = _load_cached()
    return vol.copy(), aff.copy()


def mni152_axial_slice(z_mm: float = 10.0, size: int | None = 128, normalize: bool = True,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """A 2D axial slice of the MNI152 T1 template as an ``(H, W)`` tensor.

    Args:
        z_mm: world (MNI) z coordinate of the slice in mm; the nearest voxel plane is taken
            (the default 10 mm passes through the lateral ventricles and basal ganglia).
        size: output side length. The ``197 x 233`` (x, y) plane is zero-padded to a centred
            ``233 x 233`` square, then resized with antialiasing to ``size x size`` (1 mm pixels
            become ``233 / size`` mm). ``None`` keeps the native ``233 x 197`` plane unpadded.
        normalize: divide by the slice maximum, so values are in ``[0, 1]``.
    Orientation: rows run anterior (top) to posterior; columns follow the voxel x axis, which points
    to the patient's right, so image left is patient left (neurological convention).
    """
    vol, aff = _load_cached()
    k = int(round(float(np.linalg.solve(aff, np.array([0.0, 0.0, z_mm, 1.0]))[2])))
    if not 0 <= k < vol.shape[2]:
        raise ValueError(f"mni152_axial_slice: z = {z_mm} mm is outside the template "
                         f"(voxel {k} of {vol.shape[2]})")
    plane = vol[:, :, k].T[::-1].copy()  # (y, x): rows anterior -> posterior, columns along +x
    img = torch.from_numpy(plane).to(torch.float64)
    if size is not None:
        side = max(img.shape)
        py, px = side - img.shape[0], side - img.shape[1]
        img = torch.nn.functional.pad(img, (px // 2, px - px // 2, py // 2, py - py // 2))
        img = torch.nn.functional.interpolate(img[None, None], size=(size, size), mode="bilinear",
                                              align_corners=False, antialias=True)[0, 0]
        img = img.clamp_min(0)
    if normalize:
        img = img / img.max().clamp_min(1e-12)
    return img.to(dtype)


#: ``sample:NAME`` inputs of the MRI modality
SAMPLES = {"mni152": mni152_t1_path, "mni152_t1": mni152_t1_path}
