"""Centred orthonormal 2D Fourier transforms and complex <-> 2-channel conversions.

Convention (as fastMRI): ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two
axes, so the k-space centre (DC) sits at index ``(H // 2, W // 2)`` and the transform is unitary.
Images in the prior's domain are real ``(B, 2, H, W)`` tensors holding ``(real, imag)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_DIMS = (-2, -1)


def fft2c(x: Tensor) -> Tensor:
    """Centred, orthonormal 2D FFT over the last two axes (complex in, complex out)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: Tensor) -> Tensor:
    """Centred, orthonormal 2D inverse FFT over the last two axes; the exact inverse/adjoint of fft2c."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def crop_readout(k: Tensor, rows: int) -> Tensor:
    """k-space ``(..., H, W)`` of the image centre-cropped to ``rows`` along the readout (first image) axis, as
    fastMRI crops its 2x oversampled readout (640 -> 320 rows) to the reconSpace: centred inverse FFT along H, centre
    crop (fastMRI's offset ``(H - rows) // 2``), centred FFT. Exact for data whose readout is fully sampled in
    every measured column (Cartesian column masks); both FFTs are unitary, so white noise keeps its level."""
    h = k.shape[-2]
    if not 0 < rows <= h:
        raise ValueError(f"crop_readout: cannot crop {h} readout rows to {rows}")
    if rows == h:
        return k
    img = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=-2), dim=-2, norm="ortho"), dim=-2)
    y0 = (h - rows) // 2
    img = img[..., y0:y0 + rows, :]
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(img, dim=-2), dim=-2, norm="ortho"), dim=-2)


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real one (float64 -> complex128, else complex64)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def to_complex(x: Tensor) -> Tensor:
    """``(B, 2, H, W)`` real ``(real, imag)`` channels -> ``(B, H, W)`` complex."""
    if x.dim() < 3 or x.shape[1] != 2:
        raise ValueError(f"to_complex: expected a real (B, 2, H, W) tensor, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"to_complex: expected a real tensor, got {x.dtype}")
    return torch.complex(x[:, 0], x[:, 1])


def to_channels(z: Tensor) -> Tensor:
    """``(B, H, W)`` complex -> ``(B, 2, H, W)`` real ``(real, imag)`` channels."""
    if not z.is_complex():
        z = z.to(complex_dtype_for(z.dtype))
    return torch.stack((z.real, z.imag), dim=1)


def shift_modulation(shape: tuple[int, int], dtype: torch.dtype = torch.complex64,
                     device: torch.device | str | None = None) -> Tensor:
    """Diagonal phase ``phi`` with ``fftshift(fft2(u)) == fft2(phi * u)`` (any size, even or odd).

    ``fftshift`` rolls the spectrum by ``N // 2``, which is a modulation of the input by
    ``exp(2 pi i (N // 2) n / N)`` per axis (``(-1)^n`` for even ``N``). Folding it into the coil
    maps saves one roll of the (B, coils, H, W) array per operator application.
    """
    out = None
    for ax, n in enumerate(shape):
        idx = torch.arange(n, dtype=torch.float64, device=device)
        ph = torch.exp(2j * math.pi * (n // 2) * idx / n)
        ph = ph.reshape(-1, 1) if ax == 0 else ph.reshape(1, -1)
        out = ph if out is None else out * ph
    return out.to(dtype)
