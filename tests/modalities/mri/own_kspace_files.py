"""fastMRI-layout files written the way a scanner export or another toolbox would, independently of sciprior's
writer and coil model: numpy's FFT, Gaussian-profile surface coils with their own phases, a smooth object phase,
white complex noise, an arbitrary k-space scale, a hand-written ISMRMRD header, optionally a 2x oversampled readout,
a ``mask`` dataset (already undersampled files) and ``reconstruction_rss``. The images are real MR slices that
installed packages ship (the MNI152 T1 template in nilearn's wheel, read with nibabel at its own 1 mm)."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from sciprior.modalities.mri.samples import mni152_t1_path


def fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def surface_coils(n: int, h: int, w: int) -> np.ndarray:
    """``n`` Gaussian-profile surface coils on a ring, each with its own linear phase; max RSS 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = (yy - h / 2) / h, (xx - w / 2) / w
    maps = []
    for c in range(n):
        t = 2 * np.pi * c / n
        mag = np.exp(-((yy - 0.7 * np.sin(t)) ** 2 + (xx - 0.7 * np.cos(t)) ** 2) / 0.35)
        maps.append(mag * np.exp(1j * (2.0 * xx * np.cos(t) + 1.5 * yy * np.sin(t) + t)))
    m = np.stack(maps)
    return m / np.sqrt((np.abs(m) ** 2).sum(0)).max()


def mni_slice(index: int, size: tuple[int, int]) -> np.ndarray:
    """Axial slice ``index`` of the MNI152 T1 template at 1 mm, rows anterior -> posterior, zero-padded (or
    cropped) to ``size`` around the centre; intensities as stored (0..255)."""
    vol = np.asarray(nib.load(str(mni152_t1_path())).dataobj, dtype=np.float64)
    plane = vol[:, :, index].T[::-1]  # (233, 197)
    out = np.zeros(size)
    h, w = plane.shape
    sh, sw = min(h, size[0]), min(w, size[1])
    src = plane[(h - sh) // 2:(h - sh) // 2 + sh, (w - sw) // 2:(w - sw) // 2 + sw]
    out[(size[0] - sh) // 2:(size[0] - sh) // 2 + sh, (size[1] - sw) // 2:(size[1] - sw) // 2 + sw] = src
    return out


def ismrmrd_xml(encoded: tuple[int, int], recon: tuple[int, int], fov_mm: tuple[float, float]) -> str:
    def space(tag: str, size, fov) -> str:
        return (f"<{tag}><matrixSize><x>{size[0]}</x><y>{size[1]}</y><z>1</z></matrixSize><fieldOfView_mm>"
                f"<x>{fov[0]}</x><y>{fov[1]}</y><z>5.0</z></fieldOfView_mm></{tag}>")

    rfov = (fov_mm[0] * recon[0] / encoded[0], fov_mm[1] * recon[1] / encoded[1])
    return ('<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
            + space("encodedSpace", encoded, fov_mm) + space("reconSpace", recon, rfov)
            + f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{encoded[1] - 1}</maximum>"
            f"<center>{encoded[1] // 2}</center></kspace_encoding_step_1></encodingLimits>"
            "</encoding></ismrmrdHeader>")


def equispaced_mask(w: int, acceleration: int, centre: int) -> np.ndarray:
    """fastMRI-style equispaced column mask: ``centre`` fully sampled central columns, every ``acceleration``-th
    other column."""
    m = np.zeros(w, dtype=bool)
    m[::acceleration] = True
    m[w // 2 - centre // 2:w // 2 - centre // 2 + centre] = True
    return m


def write_kspace_file(path: Path, image: np.ndarray, coils: int, scale: float = 1.0, noise: float = 0.4,
                      oversample: bool = False, mask: np.ndarray | None = None, seed: int = 0) -> Path:
    """A fastMRI-layout multi-coil file of one slice of ``image`` (H, W, >= 0). ``noise``: complex noise std per
    real/imaginary part in the image's units (before ``scale``); ``oversample``: readout (rows) 2x oversampled,
    header reconSpace = (H, W); ``mask`` (W,): store only those columns and the mask (an already undersampled
    file). ``reconstruction_rss``: RSS of the fully sampled coil images, cropped to (H, W)."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    phase = np.exp(1j * (0.3 * np.sin(3.0 * yy / h) + 0.4 * xx / w))  # a smooth object phase
    coil = surface_coils(coils, h, w) * (image * phase)[None]
    if oversample:
        coil = np.pad(coil, ((0, 0), (h // 2, h - h // 2), (0, 0)))
    k = fft2c(coil)
    rng = np.random.default_rng(seed)
    k = k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    ref = np.sqrt((np.abs(ifft2c(k)) ** 2).sum(0))  # fully sampled RSS
    r0 = (ref.shape[0] - h) // 2
    ref = ref[r0:r0 + h]
    k, ref = k * scale, ref * scale
    if mask is not None:
        k = k * mask[None, None, :]
    with h5py.File(path, "w") as f:
        f["kspace"] = k[None].astype(np.complex64)
        f["reconstruction_rss"] = ref[None].astype(np.float32)
        f["ismrmrd_header"] = np.bytes_(ismrmrd_xml(k.shape[-2:], (h, w), (float(k.shape[-2]), float(w))))
        if mask is not None:
            f["mask"] = mask
        f.attrs["acquisition"] = "AXT1"
        f.attrs["max"] = float(ref.max())
    return path
