"""The user's own k-space at its own resolution (issue 16): fastMRI-layout files written independently of sciprior
(own_kspace_files: numpy FFT, own coils, own header) from real 1 mm MR slices, reconstructed with
configs/mri/own_kspace.yaml (DDS, the 1 mm complex patch prior builtin:mri/native_complex over the whole slice).
The magnitude model (builtin:mri/native, the calibration phase folded into the maps) is not held to this: on slice
86 at 4x with 8 coils it gave 23.95 dB against CG-SENSE's 26.69 (docs/mri_own_kspace.md).

On every file the reconstruction beats zero-filled RSS and CG-SENSE in fastMRI's PSNR (reconSpace-cropped magnitude
against the file's reconstruction_rss), and the result does not depend on the file's k-space scale.
The slices (MNI152 axial 78, 82, 86, 90) lie in the slab held out from the prior's training."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from own_kspace_files import equispaced_mask, mni_slice, write_kspace_file

from sciprior.app.reconstruct import main

CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "mri" / "own_kspace.yaml")

#: name: (MNI slice, size (H, W), coils, k-space scale, oversampled readout, file mask (accel, centre), retro accel)
CASES = {
    "256px_8coils_4x_scale1e-6": (78, (256, 256), 8, 1e-6, False, None, 4),
    "256px_8coils_4x_scale1e3": (78, (256, 256), 8, 1e3, False, None, 4),
    "320px_15coils_oversampled_4x": (86, (320, 320), 15, 3e-5, True, None, 4),
    "odd_241x203_4coils_4x": (90, (241, 203), 4, 1.0, False, None, 4),
    "256px_8coils_file_mask_4x": (82, (256, 256), 8, 2e-3, False, (4, 22), None),
    "256px_15coils_8x": (82, (256, 256), 15, 10.0, False, None, 8),
}
#: further overrides of a case: 8x with the solver settings the config's comment gives for 8x (tuned on the
#: benchmark's 8x tuning slice)
EXTRA = {"256px_15coils_8x": ["--solver.cg_iters", "5", "--solver.sigma_max", "null"]}


def _reconstruct(tmp: Path, name: str) -> tuple[dict, Path]:
    index, size, coils, scale, over, file_mask, accel = CASES[name]
    mask = equispaced_mask(size[1], *file_mask) if file_mask else None
    path = write_kspace_file(tmp / f"{name}.h5", mni_slice(index, size), coils, scale=scale, noise=1.0,
                             oversample=over, mask=mask, seed=index)
    out = tmp / f"out_{name}"
    args = [CONFIG, "--input", str(path), "--output_dir", str(out), "--progress", "false"]
    if accel is not None:
        args += ["--modality.acceleration", str(accel), "--modality.center_fraction", str(0.32 / accel)]
    assert main(args + EXTRA.get(name, [])) == 0
    return json.loads((out / "report.json").read_text()), out / f"{name}.h5"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    tmp = tmp_path_factory.mktemp("own_kspace_native")
    return {name: _reconstruct(tmp, name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_beats_zero_filled_rss_and_cg_sense(results, name):
    report, _ = results[name]
    fm = report["metrics"]["fastmri"]
    assert fm["target"] == "reconstruction_rss in the file"
    rec, zf, cg = fm["reconstruction"]["psnr"], fm["zero_filled_rss"]["psnr"], fm["cg_sense_10"]["psnr"]
    assert rec > max(zf, cg) + 1.0, fm
    # SSIM in the prior's domain against the SENSE-combined reference (fastMRI's SSIM is not asserted: over the
    # whole reconSpace it rewards keeping the RSS noise floor of the background, which zero-filled RSS does;
    # docs/mri_own_kspace.md)
    # (retrospective masks; a file with its own mask has only its RSS as the reference, with the same floor)
    m = report["metrics"]
    if CASES[name][5] is None:
        assert m["reconstruction"]["ssim"] > m["baseline"]["ssim"], m
    size = CASES[name][1]
    assert fm["crop"] == list(size)  # the reconSpace of the header: readout oversampling cropped away


def test_result_does_not_depend_on_the_kspace_scale(results):
    (small, f_small), (large, f_large) = results["256px_8coils_4x_scale1e-6"], results["256px_8coils_4x_scale1e3"]
    for key in ("psnr", "ssim", "nmse"):
        assert large["metrics"]["fastmri"]["reconstruction"][key] == pytest.approx(
            small["metrics"]["fastmri"]["reconstruction"][key], rel=1e-4, abs=1e-4)
    assert large["modality"]["scale"] == pytest.approx(1e9 * small["modality"]["scale"], rel=1e-5)
    with h5py.File(f_small) as a, h5py.File(f_large) as b:
        ra, rb = a["reconstruction_rss"][()].astype(np.float64), b["reconstruction_rss"][()].astype(np.float64)
    assert np.abs(rb / 1e9 - ra).max() <= 1e-4 * ra.max()


def test_oversampled_readout_is_cropped_and_written_as_fastmri(results):
    report, out = results["320px_15coils_oversampled_4x"]
    assert report["modality"]["readout_cropped_to"] == 320 and report["image_shape"] == [2, 320, 320]
    with h5py.File(out) as f:
        assert f["kspace"].shape == (1, 15, 640, 320)  # the file's own k-space, under the mask
        assert f["reconstruction_rss"].shape == (1, 320, 320)
        assert f["mask"].shape == (320,)


def test_file_mask_is_used_and_the_report_says_so(results):
    report, _ = results["256px_8coils_file_mask_4x"]
    assert report["modality"]["mask"] == "file"
    assert report["modality"]["acceleration_actual"] == pytest.approx(256 / equispaced_mask(256, 4, 22).sum())
