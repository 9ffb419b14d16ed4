"""Coil sensitivities: simulated birdcage maps, ESPIRiT estimation, coil combination.

ESPIRiT: Uecker, Lai, Murphy, Virtue, Elad, Pauly, Vasanawala, Lustig (2014). ESPIRiT - an
eigenvalue approach to autocalibrating parallel MRI: where SENSE meets GRAPPA. Magn. Reson. Med.
71:990-1001. Written in torch (no SigPy/BART dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sciprior.modalities.mri.fourier import ifft2c
from sciprior.modalities.mri.operator import MultiCoilMRI


def birdcage_maps(num_coils: int, shape: Sequence[int], radius: float = 1.5,
                  dtype: torch.dtype = torch.complex64, normalize: bool = True) -> Tensor:
    """Simulated birdcage-array sensitivities ``(C, H, W)``.

    Coil ``c`` sits at angle ``2 pi c / C`` on a circle of ``radius`` (in units of the half field of
    view, so ``radius > 1`` is outside the image); its map has magnitude ``1 / distance`` and the
    phase of the in-plane direction to the coil plus ``-2 pi c / C`` (a common quadrature model).
    With ``normalize`` the maps are divided by their root-sum-of-squares, so
    ``sum_c |S_c|^2 = 1`` at every pixel (hence inside any object).
    """
    h, w = (int(s) for s in shape)
    if num_coils < 1:
        raise ValueError(f"birdcage_maps: need at least one coil, got {num_coils}")
    y = (torch.arange(h, dtype=torch.float64) - h / 2) / (h / 2)
    x = (torch.arange(w, dtype=torch.float64) - w / 2) / (w / 2)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    maps = []
    for c in range(num_coils):
        ang = 2 * math.pi * c / num_coils
        dy, dx = yy - radius * math.sin(ang), xx - radius * math.cos(ang)
        dist = torch.sqrt(dx**2 + dy**2).clamp_min(1e-6)
        phase = torch.atan2(dx, -dy) - ang
        maps.append(torch.polar(1.0 / dist, phase))
    out = torch.stack(maps)
    if normalize:
        out = out / torch.sqrt((out.abs() ** 2).sum(0, keepdim=True))
    return out.to(dtype)


def rss(coil_images: Tensor, dim: int = 1) -> Tensor:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|^2)`` over ``dim`` (keeps the dim, size 1)."""
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim, keepdim=True))


def sense_combine(coil_images: Tensor, maps: Tensor) -> Tensor:
    """SENSE (adjoint) combination ``sum_c conj(S_c) x_c``: coil images ``(B, C, H, W)`` -> ``(B, H, W)``."""
    if coil_images.shape[-3:] != maps.shape[-3:]:
        raise ValueError(f"sense_combine: coil images {tuple(coil_images.shape)} and maps "
                         f"{tuple(maps.shape)} disagree on (coils, H, W)")
    return (maps.conj().to(coil_images.dtype) * coil_images).sum(dim=-3)


def _centre_crop(k: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = k.shape[-2:]
    cy, cx = size
    y0, x0 = h // 2 - cy // 2, w // 2 - cx // 2
    return k[..., y0:y0 + cy, x0:x0 + cx]


#: ESPIRiT's calibration matrix needs many more rows (ACS patches) than columns (coils x kernel^2) to separate
#: the signal subspace from the null space; with fewer the maps are wrong (measured: a 64 x 8 ACS block, 8 coils,
#: kernel 6 gives 177 rows for 288 columns and maps whose SENSE image correlates 0.28 with the RSS image; kernel 3,
#: 372 rows for 72 columns, gives 1.000). This is the ratio :func:`fit_kernel_width` asks for.
MIN_ROWS_PER_COLUMN = 3.0


def fit_kernel_width(calib_shape: Sequence[int], coils: int, kernel_width: int = 6, smallest: int = 3) -> int:
    """The largest ESPIRiT kernel width ``<= kernel_width`` (and ``>= smallest``) whose calibration matrix has at
    least :data:`MIN_ROWS_PER_COLUMN` times as many rows as columns for a ``calib_shape`` ACS block and ``coils``
    coils; ``ValueError`` naming the block when even ``smallest`` is too large."""
    cy, cx = (int(v) for v in calib_shape)
    for k in range(int(kernel_width), smallest - 1, -1):
        rows = max(cy - k + 1, 0) * max(cx - k + 1, 0)
        if rows >= MIN_ROWS_PER_COLUMN * coils * k * k:
            return k
    raise ValueError(f"the fully sampled k-space centre ({cy}x{cx}) is too small to estimate {coils} coil maps "
                     f"with ESPIRiT (a {smallest}x{smallest} kernel needs at least "
                     f"{int(MIN_ROWS_PER_COLUMN * coils * smallest * smallest)} calibration patches)")


def espirit_maps(kspace: Tensor, calib_shape: int | Sequence[int] = 24, kernel_width: int = 6,
                 thresh: float = 0.02, crop: float = 0.95, num_maps: int = 1,
                 return_eigenvalues: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """ESPIRiT coil sensitivities from the fully sampled k-space centre.

    Steps (Uecker et al. 2014): (1) the calibration matrix stacks every ``kernel_width^2`` patch of the
    centred ``calib_shape`` ACS block across coils (Hankel structure), one row per patch;
    (2) its right singular vectors with singular value above ``thresh * s_max`` span the signal
    subspace (the k-space kernels); (3) each kernel, zero-padded to the image size and inverse
    Fourier transformed, gives per-pixel a matrix ``G(r)`` (coils x kernels) and
    ``G G^H * (H W / k^2)`` has eigenvalue ~1 where the maps live; its eigenvectors are the maps.
    Maps are phase-referenced to coil 0 (coil 0 real, >= 0) and zeroed where the eigenvalue is
    below ``crop``. For one map they satisfy ``sum_c |S_c|^2 = 1`` where kept.

    Args:
        kspace: complex ``(C, H, W)`` centred k-space (only the ACS block is used; the rest may be
            undersampled/zero).
        calib_shape: ACS block ``(rows, cols)`` (or one int for a square), centred at ``(H//2, W//2)``;
            see :func:`~sciprior.modalities.mri.masks.calibration_shape`.
        kernel_width: ESPIRiT kernel size ``k``.
        thresh: relative singular-value threshold for the signal subspace.
        crop: eigenvalue threshold below which the maps are set to zero.
        num_maps: number of eigenvector maps to return (1 = classical SENSE maps).
    Returns:
        maps ``(C, H, W)`` (``(num_maps, C, H, W)`` if ``num_maps > 1``) in the k-space's complex dtype,
        and with ``return_eigenvalues`` the eigenvalues ``(num_maps, H, W)`` too.
    """
    if not isinstance(kspace, Tensor) or not kspace.is_complex() or kspace.dim() != 3:
        raise ValueError("espirit_maps: kspace must be a complex (coils, H, W) tensor, got "
                         f"{getattr(kspace, 'dtype', type(kspace))} {tuple(getattr(kspace, 'shape', ()))}")
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("espirit_maps: kspace contains NaN/Inf values")
    c, h, w = kspace.shape
    if isinstance(calib_shape, int):
        cy, cx = calib_shape, calib_shape
    else:
        cy, cx = (int(s) for s in calib_shape)
    cy, cx = min(cy, h), min(cx, w)
    k = int(kernel_width)
    if cy < k or cx < k:
        raise ValueError(f"espirit_maps: calibration region {(cy, cx)} is smaller than the kernel ({k}x{k}); "
                         "the mask has too small a fully sampled centre")
    if not 1 <= num_maps <= c:
        raise ValueError(f"espirit_maps: num_maps must be in [1, {c}], got {num_maps}")
    work = torch.complex128 if kspace.dtype == torch.complex128 else torch.complex64
    calib = _centre_crop(kspace, (cy, cx)).to(work)
    if not bool((calib.abs() > 0).any()):
        raise ValueError("espirit_maps: the calibration region is all zeros (is the centre sampled?)")

    # (1) calibration matrix: rows = patches, columns = (coil, ky, kx)
    patches = calib.unfold(1, k, 1).unfold(2, k, 1)  # (C, ny, nx, k, k)
    mat = patches.permute(1, 2, 0, 3, 4).reshape(-1, c * k * k)
    # (2) signal subspace
    _, s, vh = torch.linalg.svd(mat, full_matrices=False)
    keep = s > thresh * s[0]
    kernels = vh[keep].reshape(-1, c, k, k)  # (n, C, k, k), rows of V^H as in the calibration equations
    # (3) per-pixel G G^H with G(r) = ifft2c(zero-padded kernels)(r). Each entry is a product of two
    # band-limited images, so it is computed exactly from the kernels' cross-correlations
    # R_cd(delta) = sum_j sum_kappa v_jc(kappa) conj(v_jd(kappa - delta)) (support (2k-1)^2):
    # sum_j g_jc(r) conj(g_jd(r)) = ifft2c_ortho(R_cd)(r) / sqrt(HW). C^2 FFTs instead of n*C.
    lsz = 2 * k - 1
    vf = torch.fft.fft2(kernels, s=(lsz, lsz))  # (n, C, L, L)
    # (C, C, L, L), indexed by delta mod L
    r_small = torch.fft.ifft2(torch.einsum("jcab,jdab->cdab", vf, vf.conj()))
    d = torch.arange(-(k - 1), k, device=kspace.device)
    big = torch.zeros((c, c, h, w), dtype=work, device=kspace.device)
    big[:, :, (d % h)[:, None], (d % w)[None, :]] = r_small[:, :, (d % lsz)[:, None], (d % lsz)[None, :]]
    img = torch.fft.fftshift(torch.fft.ifft2(big, norm="ortho"), dim=(-2, -1))
    # G G^H scaled by HW / k^2 (eigenvalue ~1 on the maps): factor (HW / k^2) / sqrt(HW)
    aha = (img * (math.sqrt(h * w) / (k * k))).permute(2, 3, 0, 1).reshape(h * w, c, c)
    aha = 0.5 * (aha + aha.conj().transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(aha)  # ascending
    evals = evals.flip(-1)[:, :num_maps]  # (HW, m)
    evecs = evecs.flip(-1)[:, :, :num_maps]  # (HW, C, m)
    # phase reference: coil 0 real and non-negative
    ref = evecs[:, :1, :]
    mag = ref.abs()
    tiny = torch.finfo(mag.dtype).tiny
    phase = torch.where(mag > 0, ref.conj() / mag.clamp_min(tiny), torch.ones_like(ref))
    evecs = evecs * phase
    evecs = evecs * (evals[:, None, :] > crop)
    maps = evecs.permute(2, 1, 0).reshape(num_maps, c, h, w).to(kspace.dtype)
    eig = evals.T.reshape(num_maps, h, w).real.to(kspace.real.dtype)
    if num_maps == 1:
        maps = maps[0]
    return (maps, eig) if return_eigenvalues else maps


def lowres_phase(base: MultiCoilMRI, k: Tensor, calib: tuple[int, int]) -> Tensor:
    """Unit-modulus phase ``(H, W)`` of the SENSE-combined image of the calibration block of ``k`` (1, C, H, W).

    The block (``calib = (rows, cols)``, centred) is tapered by a Hann window before the inverse FFT, so
    the phase map is smooth. Multiplying the coil maps by it makes the object seen by a magnitude
    (real) prior nearly real (phase-constrained reconstruction; e.g. Noll, Nishimura, Macovski 1991,
    "Homodyne detection in magnetic resonance imaging", IEEE TMI 10:154, for the low-resolution phase).
    """
    h, w = k.shape[-2:]
    cy, cx = (max(1, min(int(c), n)) for c, n in zip(calib, (h, w)))
    win = torch.zeros((h, w), dtype=torch.float64)
    wy = torch.hann_window(cy + 2, periodic=False, dtype=torch.float64)[1:-1]
    wx = torch.hann_window(cx + 2, periodic=False, dtype=torch.float64)[1:-1]
    y0, x0 = h // 2 - cy // 2, w // 2 - cx // 2
    win[y0:y0 + cy, x0:x0 + cx] = wy[:, None] * wx[None, :]
    low = full_adjoint(base, k * win.to(k.real.dtype).to(k.device))  # (1, 2, H, W)
    z = torch.complex(low[0, 0], low[0, 1])
    mag = z.abs()
    tiny = 1e-6 * float(mag.max()) + 1e-30
    return torch.where(mag > tiny, z / mag.clamp_min(tiny), torch.ones_like(z)).to(base.maps.dtype)


def full_adjoint(base: MultiCoilMRI, k: Tensor) -> Tensor:
    """SENSE combination of fully sampled k-space ``k`` (1, C, H, W): ``S^H F^H k`` (no mask)."""
    full = MultiCoilMRI(base.maps, torch.ones(base.image_size[1], device=k.device))
    return full.adjoint(k)


def acs_combine(kspace: Tensor, coil_images: Tensor, acs_lines: int) -> Tensor:
    """Coil-combine ``coil_images`` ``(S, C, H, W)`` with sensitivities estimated from the central ``acs_lines``
    columns of ``kspace`` (same shape): low-resolution coil images divided by their root-sum-of-squares (a simple
    autocalibration estimate, not ESPIRiT), giving a complex image ``(S, H, W)`` whose magnitude approximates the
    RSS image."""
    ky = kspace.shape[-1]
    c, half = ky // 2, max(acs_lines // 2, 1)
    low = torch.zeros_like(kspace)
    low[..., c - half:c + half] = kspace[..., c - half:c + half]
    low_imgs = ifft2c(low)
    rss_low = low_imgs.abs().square().sum(dim=1, keepdim=True).sqrt()
    sens = low_imgs / torch.clamp(rss_low, min=1e-12 * float(rss_low.max()))
    return (sens.conj() * coil_images).sum(dim=1)
