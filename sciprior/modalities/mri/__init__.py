"""MRI: Cartesian multi-coil SENSE operator, fastMRI-style masks, coil maps (ESPIRiT), baselines, the adapter.

Image domain: real ``(B, 2, H, W)`` = (real, imag). Measurement: complex ``(B, coils, H, W)`` centred
k-space with zeros where unsampled. Noise: complex Gaussian, ``sigma`` per real/imaginary part.
fastMRI-layout HDF5 I/O: :mod:`~sciprior.modalities.mri.fastmri`; the MNI152 sample:
:mod:`~sciprior.modalities.mri.samples`;
the adapter (``modality: {name: mri}``): :mod:`~sciprior.modalities.mri.adapter`; the training readers
(``data: {modality: mri, reader: {name: slices | kspace}}``): :mod:`~sciprior.modalities.mri.data`;
``prior/``: the shipped demo prior (``builtin:mri``, 64 x 64 whole slices at 3.6 mm), trained by ``sciprior train
configs/mri/train.yaml``; ``prior_native/``: the 1 mm patch prior for scans at their own resolution
(``builtin:mri/native``), trained by ``sciprior train configs/mri/train_native.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from sciprior.modalities import Modality
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.modalities.mri.coils import birdcage_maps, espirit_maps, rss, sense_combine
from sciprior.modalities.mri.data import KSpaceSlices, MRSlices
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
from sciprior.modalities.mri.samples import SAMPLES

MODALITY = Modality(
    name="mri",
    adapter=MRIAdapter,
    readers={"slices": MRSlices, "kspace": KSpaceSlices},
    samples=SAMPLES,
    prior=Path(__file__).parent / "prior",
    prior_variants={"native": Path(__file__).parent / "prior_native",
                    "native_complex": Path(__file__).parent / "prior_native_complex"},
    examples="sciprior.modalities.mri.examples",
    description="Cartesian multi-coil MRI: simulated from images or measured fastMRI k-space",
    legacy_class_paths=("MRIAdapter", "sciprior.modalities.mri_adapter.MRIAdapter"),
)

__all__ = [
    "MODALITY", "KSpaceSlices", "MRIAdapter", "MRSlices",
    "MultiCoilMRI", "SingleCoilMRI", "as_mask_2d", "fft2c", "ifft2c", "to_channels", "to_complex",
    "column_mask", "random_mask", "equispaced_mask", "poisson_disc_mask", "calibration_shape",
    "birdcage_maps", "espirit_maps", "rss", "sense_combine",
    "cg_sense", "check_kspace", "estimate_noise_sigma", "image_to_channels", "problem_from_kspace",
    "simulate_kspace", "simulate_problem", "zero_filled", "zero_filled_rss",
]
