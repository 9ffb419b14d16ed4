"""MRI: Cartesian multi-coil SENSE operator, fastMRI-style masks, coil maps (ESPIRiT), baselines.

Image domain: real ``(B, 2, H, W)`` = (real, imag). Measurement: complex ``(B, coils, H, W)`` centred
k-space with zeros where unsampled. Noise: complex Gaussian, ``sigma`` per real/imaginary part.
File I/O for fastMRI HDF5 lives in :mod:`sciprior.datasets.fastmri`; real sample images in
:mod:`sciprior.datasets.sample_mri`.
"""

from __future__ import annotations

import torch

from sciprior.modalities.base import register_operator
from sciprior.modalities.mri.coils import birdcage_maps, espirit_maps, rss, sense_combine
from sciprior.modalities.mri.fourier import fft2c, ifft2c, to_channels, to_complex
from sciprior.modalities.mri.masks import (
    calibration_shape,
    column_mask,
    equispaced_mask,
    poisson_disc_mask,
    random_mask,
)
from sciprior.modalities.mri.operator import MultiCoilMRI, SingleCoilMRI, as_mask_2d
from sciprior.modalities.mri.recon import (
    cg_sense,
    check_kspace,
    estimate_noise_sigma,
    image_to_channels,
    problem_from_kspace,
    simulate_kspace,
    simulate_problem,
    zero_filled,
    zero_filled_rss,
)

__all__ = [
    "MultiCoilMRI", "SingleCoilMRI", "as_mask_2d", "fft2c", "ifft2c", "to_channels", "to_complex",
    "column_mask", "random_mask", "equispaced_mask", "poisson_disc_mask", "calibration_shape",
    "birdcage_maps", "espirit_maps", "rss", "sense_combine",
    "cg_sense", "check_kspace", "estimate_noise_sigma", "image_to_channels", "problem_from_kspace",
    "simulate_kspace", "simulate_problem", "zero_filled", "zero_filled_rss",
]


# --- small examples for the shared adjointness test ---------------------------------------------

def _random_maps(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn((c, h, w), generator=g), torch.randn((c, h, w), generator=g))


register_operator("mri_multicoil_column_mask")(
    lambda: MultiCoilMRI(_random_maps(4, 12, 10, 11), random_mask(10, 4, 0.2, seed=3)))
register_operator("mri_multicoil_poisson_odd")(
    lambda: MultiCoilMRI(birdcage_maps(3, (11, 9)),
                         poisson_disc_mask((11, 9), 2.0, calib=4, seed=1, tol=0.3)))
register_operator("mri_singlecoil_equispaced")(
    lambda: SingleCoilMRI(equispaced_mask(10, 4, 0.2, seed=0), (8, 10)))
