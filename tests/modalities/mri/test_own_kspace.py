"""A user's own fastMRI-layout k-space, written independently of sciprior (numpy's FFT, a coil model of its own,
an arbitrary k-space scale), from a real MR image (the MNI152 template slice nilearn ships, at the shipped prior's
64 x 64).

Before: ESPIRiT ran its default 6 x 6 kernel on any ACS block; on a 64 x 8 block with 8 coils the calibration
matrix has 177 rows for 288 columns, the maps were wrong (the fully sampled reference itself did not fit the data:
residual 0.64) and DDS gave 6.0 dB against 26.0 dB zero-filled at 4x.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from own_kspace_files import fft2c, surface_coils

from sciprior.app.reconstruct import main
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.modalities.mri.coils import MIN_ROWS_PER_COLUMN, espirit_maps, fit_kernel_width, full_adjoint
from sciprior.modalities.mri.operator import MultiCoilMRI, as_mask_2d


@pytest.fixture(scope="module")
def mni_slice() -> np.ndarray:
    pb, _ = MRIAdapter(num_coils=1, acceleration=1.0, sigma=0.0, image_size=64, slices=82).load("sample:mni152")
    return (pb.reference[0, 0].double().numpy() + 1.0) / 2.0  # the real slice, >= 0


def write_own_file(path, image: np.ndarray, coils: int = 8, scale: float = 1.0, noise: float = 0.002) -> None:
    h, w = image.shape
    phase = np.exp(1j * 0.3 * np.sin(np.linspace(0, 3, h)))[:, None]  # a smooth object phase
    k = fft2c(surface_coils(coils, h, w) * (image * phase)[None])
    rng = np.random.default_rng(0)
    k = (k + noise * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))) * scale
    with h5py.File(path, "w") as f:
        f["kspace"] = k[None].astype(np.complex64)


def test_fit_kernel_width_keeps_the_calibration_matrix_determined():
    assert fit_kernel_width((64, 8), 8, 6) == 3 and fit_kernel_width((320, 26), 15, 6) == 6
    for calib, coils in [((64, 8), 8), ((320, 26), 15), ((24, 24), 8), ((64, 12), 4)]:
        k = fit_kernel_width(calib, coils, 6)
        rows = (calib[0] - k + 1) * (calib[1] - k + 1)
        assert rows >= MIN_ROWS_PER_COLUMN * coils * k * k
        if k < 6:
            k1 = k + 1
            assert (calib[0] - k1 + 1) * (calib[1] - k1 + 1) < MIN_ROWS_PER_COLUMN * coils * k1 * k1
    with pytest.raises(ValueError, match=r"centre \(64x3\) is too small to estimate 8 coil maps"):
        fit_kernel_width((64, 3), 8, 6)


def test_fitted_kernel_gives_maps_that_explain_the_data(mni_slice, tmp_path):
    write_own_file(tmp_path / "k.h5", mni_slice)
    with h5py.File(tmp_path / "k.h5") as f:
        k = torch.from_numpy(f["kspace"][0])
    c, h, w = k.shape
    full = as_mask_2d(torch.ones(w), (h, w))

    def residual(kernel: int) -> float:
        op = MultiCoilMRI(espirit_maps(k, (h, 8), kernel_width=kernel), full)
        return float((op(full_adjoint(op, k[None])) - k[None]).abs().norm() / k.abs().norm())

    fitted = fit_kernel_width((h, 8), c, 6)
    assert fitted == 3
    assert residual(fitted) < 0.04  # the noise floor of this file is about 0.022
    assert residual(6) > 0.5  # the unfitted default: the maps cannot explain fully sampled data


CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "mri" / "accel_4x.yaml")


def _run(path, out) -> dict:
    rc = main([CONFIG, "--input", str(path), "--modality.image_size", "null", "--modality.slices", "middle",
               "--modality.center_fraction", "0.12", "--output_dir", str(out), "--progress", "false",
               "--solver.steps", "30"])
    assert rc == 0
    return json.loads((out / "report.json").read_text())


def test_own_file_beats_zero_filled_and_ignores_the_kspace_scale(mni_slice, tmp_path):
    """4x, 8 coils, an 8-column ACS block: DDS with the shipped prior beats zero-filled SENSE (it gave 6.0 dB against
    26.0 before), fits the data as well as the fully sampled reference does, and does not change with the file's
    k-space scale (1e-6 and 1e3: the mapping to the prior's units comes from the data themselves)."""
    reports = {}
    for scale in (1e-6, 1e3):
        write_own_file(tmp_path / f"k_{scale:g}.h5", mni_slice, scale=scale)
        reports[scale] = _run(tmp_path / f"k_{scale:g}.h5", tmp_path / f"out_{scale:g}")
    small, large = reports[1e-6], reports[1e3]
    m = small["metrics"]
    assert m["reconstruction"]["psnr"] > m["baseline"]["psnr"] + 4.0, m  # measured 27.9 vs 21.1 dB at 50 steps
    dc = small["data_consistency"]
    assert dc["reconstruction"] <= 1.1 * dc["reference"], dc
    assert small["modality"]["espirit_kernel"] == 3
    # the noise level is reported; even the reference is above it here (the magnitude model's low-resolution
    # phase from 8 ACS columns does not hold this object's phase exactly), so the report says so
    assert dc["noise_level"] > 0 and ("warning" in dc) == (dc["reconstruction"] > 3.0 * dc["noise_level"])
    for key in ("psnr", "ssim"):
        assert large["metrics"]["reconstruction"][key] == pytest.approx(m["reconstruction"][key], abs=1e-3)
    assert large["modality"]["scale"] == pytest.approx(1e9 * small["modality"]["scale"], rel=1e-4)
