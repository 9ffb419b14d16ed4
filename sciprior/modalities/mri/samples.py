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
import os
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


#: version of the k-space sample's recipe (part of its file name: a changed recipe writes a new file)
KSPACE_SAMPLE_VERSION = 1


def cache_dir() -> Path:
    """Where derived samples are written: ``$SCIPRIOR_CACHE``, else ``$XDG_CACHE_HOME/sciprior``, else
    ``~/.cache/sciprior``."""
    root = os.environ.get("SCIPRIOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sciprior")
    return Path(root)


def write_mni152_kspace(path: str | os.PathLike, index: int = 82, size: int = 320, coils: int = 15,
                        oversample: bool = True, noise: float = 0.004, scale: float = 3.7e-7,
                        seed: int | None = None) -> Path:
    """Write a fully sampled fastMRI-layout multi-coil file of the real MNI152 axial slice ``index`` at its own
    1 mm, zero-padded to ``size`` x ``size``: ``coils`` unnormalised birdcage sensitivities (max RSS 1, so the RSS
    image is shaded as a real array's is), a smooth object phase, the readout (rows) 2x oversampled when
    ``oversample`` (k-space ``2 size`` x ``size``, reconSpace ``size`` x ``size`` in the ISMRMRD header), complex
    Gaussian noise of ``noise`` times the peak coil signal per real/imaginary part, everything times ``scale``
    (an arbitrary k-space scale), ``reconstruction_rss`` the RSS of the fully sampled coil images cropped to the
    reconSpace. Written atomically."""
    from sciprior.modalities.mri.coils import birdcage_maps, rss
    from sciprior.modalities.mri.fastmri import center_crop, write_fastmri
    from sciprior.modalities.mri.fourier import fft2c, ifft2c

    vol, _ = _load_cached()
    if not 0 <= index < vol.shape[2]:
        raise ValueError(f"write_mni152_kspace: slice {index} is outside the template ({vol.shape[2]} slices)")
    plane = torch.from_numpy(vol[:, :, index].T[::-1].copy()).double()  # (233, 197): rows anterior -> posterior
    if size < max(plane.shape):
        raise ValueError(f"write_mni152_kspace: size {size} is smaller than the {tuple(plane.shape)} slice")
    py, px = size - plane.shape[0], size - plane.shape[1]
    img = torch.nn.functional.pad(plane, (px // 2, px - px // 2, py // 2, py - py // 2))  # (size, size), 1 mm
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    obj = img * torch.exp(1j * (0.8 * xx - 0.5 * yy + 0.6 * (xx**2 + yy**2)))  # smooth object phase
    maps = birdcage_maps(coils, (size, size), radius=1.2, dtype=torch.complex128, normalize=False)
    maps = maps / maps.abs().square().sum(0).sqrt().max()
    coil = maps * obj  # (coils, size, size)
    if oversample:
        coil = torch.nn.functional.pad(coil, (0, 0, size // 2, size - size // 2))
    k = fft2c(coil)
    gen = torch.Generator().manual_seed(index if seed is None else seed)
    sd = noise * float(coil.abs().max())
    k = k + sd * torch.complex(torch.randn(k.shape, generator=gen, dtype=torch.float64),
                               torch.randn(k.shape, generator=gen, dtype=torch.float64))
    k = k * scale
    ref = center_crop(rss(ifft2c(k)[None], dim=1)[:, 0], (size, size))
    return write_fastmri(path, k[None].to(torch.complex64), reconstruction_rss=ref.float(),
                         attrs={"acquisition": "AXT1_SIMULATED_FROM_MNI152", "patient_id": f"MNI152-slice{index}"},
                         recon_size=(size, size), fov_mm=(float(k.shape[-2]), float(size), 1.0))


def mni152_kspace_path() -> Path:
    """``sample:mni152_kspace``: :func:`write_mni152_kspace` of slice 82 (z = +10 mm, in the slab held out from
    every shipped prior's training) as a fastMRI brain file: 15 coils, 640 x 320 k-space (2x oversampled readout),
    reconSpace 320 x 320, noise 0.4 % of the peak coil signal, k-space ~1e-5 like fastMRI's; built once from the
    template in the installed nilearn wheel and cached (:func:`cache_dir`)."""
    path = cache_dir() / f"mni152_kspace_v{KSPACE_SAMPLE_VERSION}.h5"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mni152_kspace(path)


#: ``sample:NAME`` inputs of the MRI modality
SAMPLES = {"mni152": mni152_t1_path, "mni152_t1": mni152_t1_path, "mni152_kspace": mni152_kspace_path}
