"""``sciprior reconstruct``: config validation before compute, end-to-end runs on the real samples with tiny
(untrained) checkpoints, output files with their metadata, the report, and the Python API."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sciprior import cli
from sciprior.app.config import ConfigError, PriorSpec, check_solver_settings, parse_args, parse_config
from sciprior.app.reconstruct import main, reconstruct, run_reconstruction
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.priors.checkpoint import save_checkpoint
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet


def _tiny_prior(path: Path, channels: int, size: int | None, metadata=None) -> Path:
    torch.manual_seed(0)
    net = build_unet(in_channels=channels, channels=(8, 8), attention_levels=(False, False), num_head_channels=8,
                     norm_num_groups=8)
    shape = (channels, size, size) if size is not None else None
    return save_checkpoint(EDMDenoiser(net, image_shape=shape), path, metadata=metadata)


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {"1x64": _tiny_prior(root / "p1_64", 1, 64), "2x64": _tiny_prior(root / "p2_64", 2, 64),
            "1x32": _tiny_prior(root / "p1_32", 1, 32), "1xany": _tiny_prior(root / "p1_any", 1, None),
            "ct_1024": _tiny_prior(root / "ct_1024", 1, 64, metadata={"data": {  # as earlier versions recorded it
                "reader": "SliceReader", "reader_args": {"intensity": "hu_window", "window": [-1024.0, 3071.0]}}}),
            "mri_slices": _tiny_prior(root / "mri_slices", 1, 64, metadata={"data": {
                "modality": "mri", "reader": {"name": "slices", "percentiles": [0.5, 99.5]}}})}


def ct_config(prior, out=None, **init):
    return {"modality": {"name": "ct", "n_views": 30, "image_size": 64, "i0": 1e6, **init},
            "input": "sample:head_ct", "prior": {"checkpoint": str(prior)}, "solver": {"name": "dds", "steps": 4},
            "device": "cpu", "progress": False, "output_dir": None if out is None else str(out)}


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if any adapter starts loading/simulating data."""
    def boom(self, input):
        raise AssertionError("compute started before the config was validated")

    monkeypatch.setattr(CTAdapter, "load", boom)
    monkeypatch.setattr(MRIAdapter, "load", boom)


# ---------------------------------------------------------------------------------------------
# Validation before any compute
# ---------------------------------------------------------------------------------------------


def test_solver_typo_fails_naming_the_key(priors, no_compute, tmp_path, capsys):
    cfg = ct_config(priors["1x64"])
    cfg["solver"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"solver\.stepz.*dds.*steps"):
        parse_config(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(ct_config(priors["1x64"], tmp_path / "out")))
    assert cli.main(["reconstruct", str(path), "--solver.stepz", "3"]) == 2
    assert "solver.stepz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wrong_types_and_unknown_keys_fail_naming_the_key(priors, no_compute):
    with pytest.raises(ConfigError, match=r"solver\.steps"):
        parse_config(ct_config(priors["1x64"]), {"solver.steps": "many"})
    with pytest.raises(ConfigError, match=r"modality\.n_viewz: unknown setting for the ct modality; it accepts: "
                                          r".*n_views"):
        parse_config(ct_config(priors["1x64"]), {"modality.n_viewz": 3})
    with pytest.raises(ConfigError, match=r"modality\.name: unknown modality 'cat'; choose from .*ct.*mri"):
        parse_config(ct_config(priors["1x64"]), {"modality.name": "cat"})
    with pytest.raises(ConfigError, match=r"modality\.name: the hyperspectral modality has no reconstruction adapter"):
        parse_config(ct_config(priors["1x64"]), {"modality": {"name": "hyperspectral"}})
    with pytest.raises(ConfigError, match=r"modality\.n_views: 0 does not conform .*; expected an int >= 1"):
        parse_config(ct_config(priors["1x64"], n_views=0))
    with pytest.raises(ConfigError, match=r"inptu"):
        parse_config(ct_config(priors["1x64"]), {"inptu": "x"})
    with pytest.raises(ConfigError, match=r"solver\.name: unknown solver 'ddz'"):
        parse_config(ct_config(priors["1x64"]), {"solver.name": "ddz"})
    with pytest.raises(ConfigError, match=r"angular_range"):
        parse_config(ct_config(priors["1x64"], angular_range=500))


def test_missing_files_are_named(priors, no_compute, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"input: no such file.*nothere\.nii\.gz"):
        parse_config(ct_config(priors["1x64"]), {"input": str(tmp_path / "nothere.nii.gz")})
    with pytest.raises(ConfigError, match=r"prior\.checkpoint: no such checkpoint.*noprior"):
        parse_config(ct_config(tmp_path / "noprior"))
    import dataclasses

    from sciprior import modalities
    from sciprior.app import config

    assert (config.resolve_checkpoint("builtin:ct") / "model.safetensors").is_file()  # the shipped prior
    ct = modalities.get("ct")
    monkeypatch.setattr(modalities, "get", lambda name: dataclasses.replace(ct, prior=tmp_path / "empty")
                        if name == "ct" else ct)  # a CT modality whose prior was not trained yet
    with pytest.raises(ConfigError, match=r"builtin:ct not found at .*empty.*sciprior train configs/ct/train.yaml"):
        config.resolve_checkpoint("builtin:ct")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"unknown builtin prior 'builtin:hyperspectral'; choose from builtin:ct"):
        config.resolve_checkpoint("builtin:hyperspectral")
    with pytest.raises(ConfigError, match=r"prior\.checkpoint: solver 'dds' needs a prior"):
        parse_config(ct_config(priors["1x64"]), {"prior.checkpoint": None})


def test_prior_that_does_not_fit_the_modality_is_rejected(priors, no_compute):
    with pytest.raises(ConfigError, match=r"p2_64.*2 channel\(s\).*1-channel"):
        parse_config(ct_config(priors["2x64"]))
    mri = {"modality": {"name": "mri", "image_size": 64}, "input": "sample:mni152",
           "prior": {"checkpoint": str(priors["1x64"])}, "solver": {"name": "dds"}}
    with pytest.raises(ConfigError, match=r"1 channel\(s\) but the modality produces 2-channel images \(set by "
                                          r"modality\.image_model\)"):
        parse_config(mri, {"modality.image_model": "complex"})
    with pytest.raises(ConfigError, match=r"prior\.wrap: 'full'.*\(32, 32\).*\(64, 64\).*image_size"):
        parse_config(ct_config(priors["1x32"]), {"prior.wrap": "full"})
    with pytest.raises(ConfigError, match=r"modality\.image_size.*\(63, 63\).*multiple of 2"):
        parse_config(ct_config(priors["1xany"], image_size=63))  # a prior of any size, but a UNet
    with pytest.raises(ConfigError, match=r"modality\.hu_window=\[-1000\.0, 1000\.0\].*-1024.*ct_1024"):
        parse_config(ct_config(priors["ct_1024"], hu_window=[-1000.0, 1000.0]))
    with pytest.raises(ConfigError, match=r"the prior was trained on mri data .*use a prior trained for the ct"):
        parse_config(ct_config(priors["mri_slices"]))
    job = parse_config(ct_config(priors["1x32"]))  # auto: patch-wise with the prior's size as window
    assert job.plan.wrap == "patch" and job.plan.roi == (32, 32)


def test_solver_settings_are_checked_against_the_signature():
    assert check_solver_settings("dds", {"steps": 7, "eta": 0.5}) == {"steps": 7, "eta": 0.5}
    with pytest.raises(ConfigError, match=r"solver\.cg_iterz.*cg_iters"):
        check_solver_settings("dds", {"cg_iterz": 3})
    with pytest.raises(ConfigError, match=r"solver\.(num_samples|progress)"):
        check_solver_settings("dps", {"num_samples": 3})  # set by the runner, not the solver section


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _no_temp_files(out: Path) -> bool:
    here = [p.name for p in [*out.iterdir(), *out.parent.iterdir()]]
    return not [n for n in here if n.startswith(".tmp") or ".tmp-" in n]


def test_ct_sparse_view_end_to_end_on_the_real_head_ct(priors, tmp_path):
    from sciprior.modalities.ct.io import read_ct_series
    from sciprior.modalities.ct.samples import ct_head_paths

    out = tmp_path / "ct"
    cfg = tmp_path / "ct.yaml"
    cfg.write_text(json.dumps(ct_config(priors["1x64"], out)))
    assert main([str(cfg), "--solver.steps", "5", "--num_samples", "2"]) == 0
    names = [".sciprior-run.json", "reconstruction.nii.gz", "report.json", "report.png", "std.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert _no_temp_files(out)
    # report.json and the manifest list every file of the run
    assert sorted(Path(f).name for f in json.loads((out / "report.json").read_text())["outputs"]) == names
    assert json.loads((out / ".sciprior-run.json").read_text())["files"] == names[1:] + names[:1]
    # NIfTI on the 64 x 64 grid of the 512 x 512 DICOM slice: spacing x8, same world coordinates
    dcm = read_ct_series(ct_head_paths())
    img = nib.load(out / "reconstruction.nii.gz")
    assert img.shape == (64, 64, 1)
    scale = np.diag([8.0, 8.0, 1.0, 1.0])
    scale[:2, 3] = 3.5  # output voxel 0 covers input voxels 0..7, centre 3.5
    np.testing.assert_allclose(img.affine, dcm.affine @ scale, atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms()[:2], [8 * 0.478516] * 2, rtol=1e-5)
    hu = img.get_fdata()
    assert -1500 < hu.mean() < 500 and hu.max() > 300  # HU, not the prior's [-1, 1]
    rep = json.loads((out / "report.json").read_text())
    assert rep["nfe"] == 5 and rep["num_samples"] == 2 and rep["device"] == "cpu"
    assert rep["solver"] == {"name": "dds", "settings": {"steps": 5, "eta": 0.85, "cg_iters": 5, "gamma": None,
                                                         "sigma_data": None, "sigma_max": None, "sigma_min": None,
                                                         "rho": 7.0}}
    m = rep["metrics"]
    assert "HU window" in m["domain"]["description"] and m["domain"]["data_range"] == 2.0
    assert set(m["reconstruction"]) == {"psnr", "ssim", "nmse"} and m["baseline"]["psnr"] > 15
    assert rep["baseline"]["name"] == "FBP" and rep["uncertainty"]["num_samples"] == 2
    assert rep["data_consistency"]["reference"] < rep["data_consistency"]["baseline"]
    assert rep["config"]["modality"]["n_views"] == 30 and rep["config"]["solver"]["steps"] == 5
    assert rep["timings_s"]["solve"] > 0 and rep["modality"]["dicom_series_description"] == "5/5mm Plain"


def test_dds_output_is_consistent_with_the_data(priors):
    """Noiseless sparse-view CT: DDS's conjugate-gradient steps fit the sinogram far better than FBP."""
    out = reconstruct(ct_config(priors["1x64"], i0=None, sigma=0.0), {"solver.steps": 6, "solver.cg_iters": 20})
    dc = out.report["data_consistency"]
    assert dc["reference"] < 1e-6
    assert dc["reconstruction"] < 0.01 and dc["reconstruction"] < 0.1 * dc["baseline"]
    assert out.files == [] and out.physical.shape == (1, 1, 64, 64)


def test_mri_from_the_mni_template_keeps_the_template_affine(priors, tmp_path):
    from sciprior.modalities.mri.samples import load_mni152_t1

    out = tmp_path / "mri"
    res = reconstruct({"modality": {"name": "mri", "sigma": 0.01, "slices": 82},
                       "input": "sample:mni152", "prior": {"checkpoint": str(priors["1x32"]), "overlap": 0.0},
                       "solver": {"name": "dds", "steps": 2}, "device": "cpu", "progress": False,
                       "output_dir": str(out)})
    assert res.report["prior"]["wrap"] == "patch" and res.report["image_shape"] == [1, 233, 197]
    vol, aff = load_mni152_t1()
    img = nib.load(out / "reconstruction.nii.gz")
    assert img.shape == (197, 233, 1)
    shift = np.eye(4)
    shift[2, 3] = 82
    np.testing.assert_allclose(img.affine, aff @ shift)
    # the reconstruction is in the template's intensity units (0..~255)
    assert 20 < img.get_fdata().mean() < 150
    assert _no_temp_files(out)
    ref = res.context.intensity.to_physical(res.problem.reference)[0, 0].numpy()
    # the plane as the training slices see it: LPS axes, rows anterior -> posterior, columns right -> left
    np.testing.assert_allclose(ref, vol[::-1, ::-1, 82].T, atol=1e-3)


def test_mri_from_fastmri_kspace_writes_the_fastmri_layout(priors, tmp_path):
    from sciprior.modalities.mri import birdcage_maps, fft2c
    from sciprior.modalities.mri.fastmri import make_ismrmrd_header, read_fastmri, write_fastmri
    from sciprior.modalities.mri.samples import mni152_axial_slice

    imgs = torch.stack([mni152_axial_slice(z, size=64) for z in (0.0, 10.0, 20.0)]).to(torch.complex64)
    phase = torch.exp(1j * torch.linspace(0, 1.0, 64))[None, None, :]
    k = fft2c(birdcage_maps(8, (64, 64))[None] * (imgs * phase)[:, None]) * 1e-3
    src = tmp_path / "file1000001.h5"
    header = make_ismrmrd_header((64, 64, 1), (48, 48, 1), (220.0, 220.0, 3.0))
    write_fastmri(src, k, ismrmrd_header=header, attrs={"patient_id": "p1", "acquisition": "AXT1"})
    out = tmp_path / "out"
    res = reconstruct({"modality": {"name": "mri", "acceleration": 4, "center_fraction": 0.25, "sigma": None,
                                    "espirit_crop": 0.8},
                       "input": str(src), "prior": {"checkpoint": str(priors["1x64"])},
                       "solver": {"name": "dds", "steps": 3}, "device": "cpu", "progress": False,
                       "output_dir": str(out)})
    assert sorted(p.name for p in out.iterdir()) == [".sciprior-run.json", "file1000001.h5", "report.json",
                                                     "report.png"]
    vol = read_fastmri(out / "file1000001.h5")
    assert vol.reconstruction_key == "reconstruction_rss" and vol.reconstruction.shape == (1, 48, 48)
    mask = vol.mask
    assert mask.shape == (64,) and 3 < 64 / float(mask.sum()) < 5
    np.testing.assert_allclose(vol.kspace[0].numpy(), (k[1] * mask).numpy(), rtol=1e-5, atol=1e-12)
    assert vol.header.xml == header and vol.attrs["patient_id"] == "p1" and vol.attrs["acquisition"] == "AXT1"
    assert list(vol.attrs["sciprior_slices"]) == [1, 2]
    rep = res.report
    assert rep["modality"]["mask"] == "random (retrospective)" and rep["metrics"] is not None
    # with the low-resolution phase folded into the ESPIRiT maps the magnitude model fits the data
    assert rep["data_consistency"]["reference"] < 0.1
    assert _no_temp_files(out)


def test_python_api_with_objects_and_a_slice_stack(priors, tmp_path):
    out = run_reconstruction(MRIAdapter(image_size=32, sigma=0.0, slices=(80, 83)), "sample:mni152",
                             prior=PriorSpec(checkpoint=str(priors["1x32"])), solver="dds",
                             solver_settings={"steps": 3}, device="cpu", progress=False,
                             output_dir=str(tmp_path / "stack"))
    assert out.report["prior"]["wrap"] == "slice" and out.result.mean.shape == (1, 1, 3, 32, 32)
    img = nib.load(tmp_path / "stack" / "reconstruction.nii.gz")
    assert img.shape == (32, 32, 3) and img.affine[2, 3] == pytest.approx(-72 + 80)
    with pytest.raises(ConfigError, match=r"solver\.stepz"):
        run_reconstruction(MRIAdapter(image_size=32), "sample:mni152", prior=str(priors["1x32"]),
                           solver_settings={"stepz": 3})


def test_classical_solver_without_a_prior_and_cli_help(priors, capsys):
    out = reconstruct(ct_config(priors["1x64"]), {"prior.checkpoint": None,
                                                  "solver": {"name": "tv", "lam": 0.02, "iters": 30}})
    assert out.result.nfe == 0 and out.report["prior"]["checkpoint"] is None
    assert out.report["metrics"]["reconstruction"]["psnr"] > 15
    assert main(["--help"]) == 0
    assert "--solver.steps" in capsys.readouterr().out
    job = parse_args(["--modality.name", "ct", "--input", "sample:head_ct",
                      "--prior.checkpoint", str(priors["1x64"]), "--modality.image_size", "64"])
    assert job.solver == "dds" and job.modality.image_size == 64
    assert main(["--modality.name", "mri", "--help"]) == 0
    assert "--modality.acceleration" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Earlier config spellings
# ---------------------------------------------------------------------------------------------


def test_the_earlier_class_path_spelling_still_reads_with_a_note(priors, no_compute, tmp_path):
    old = {"modality": {"class_path": "sciprior.modalities.ct_adapter.CTAdapter",
                        "init_args": {"n_views": 30, "image_size": 64, "i0": 1e6}},
           "input": "sample:head_ct", "prior": {"checkpoint": str(priors["1x64"])}, "solver": {"name": "dds"},
           "device": "cpu", "progress": False}
    with pytest.warns(FutureWarning, match=r"write modality: \{name: ct, n_views: \.\.\."):
        job = parse_config(old, {"modality.init_args.n_views": 20})
    assert type(job.modality) is CTAdapter and job.modality.n_views == 20
    path = tmp_path / "old.yaml"
    path.write_text(json.dumps(old))
    with pytest.warns(FutureWarning):
        job = parse_args([str(path), "--modality.init_args.n_views", "12", "--solver.steps", "3"])
    assert job.modality.n_views == 12 and job.solver_settings["steps"] == 3
    job = parse_args(["--modality", "MRIAdapter", "--input", "sample:mni152", "--prior.checkpoint",
                      str(priors["1x64"]), "--modality.init_args.image_size", "64"])
    assert type(job.modality) is MRIAdapter and job.modality.image_size == 64


def test_a_class_path_that_is_not_a_modality_imports_nothing(priors, no_compute, tmp_path):
    import sys

    for class_path in ("this.Zen", "os.system", "mri_adapter_of_mine.Adapter"):
        cfg = {"modality": {"class_path": class_path, "init_args": {}}, "input": "sample:head_ct",
               "prior": {"checkpoint": str(priors["1x64"])}}
        with pytest.raises(ConfigError, match=r"modality\.class_path: .* is not read \(configs never name code\); "
                                              r"name a registered modality instead: modality: \{name: <.*ct.*mri"):
            parse_config(cfg)
    assert "this" not in sys.modules and "mri_adapter_of_mine" not in sys.modules
    (tmp_path / "evil.py").write_text("open('marker', 'w').write('ran')\n")
    path = tmp_path / "evil.yaml"
    path.write_text(json.dumps({"modality": {"class_path": "evil.Adapter"}, "input": "sample:head_ct"}))
    assert main([str(path), "--output_dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "marker").exists() and "evil" not in sys.modules


def test_the_shipped_priors_old_training_records_are_checked(no_compute):
    """The shipped checkpoints record their data in the earlier spelling (reader class + arguments): still read."""
    from sciprior import modalities
    from sciprior.priors.checkpoint import read_config

    for name, reader, key in (("ct", "slices", "window"), ("mri", "slices", "percentiles")):
        trained = modalities.trained_reader(read_config(modalities.get(name).prior)["metadata"]["data"])
        assert (trained.modality, trained.reader) == (name, reader) and key in trained.args
    with pytest.raises(ConfigError, match=r"hu_window=\[-1000\.0, 1000\.0\] but the prior was trained with the HU "
                                          r"window \[-1024\.0, 3071\.0\]"):
        parse_config("configs/ct/sparse_view.yaml", {"modality.hu_window": [-1000.0, 1000.0]})
    with pytest.raises(ConfigError, match=r"percentiles=\[1\.0, 99\.0\] but the prior was trained with percentiles"):
        parse_config("configs/mri/accel_4x.yaml", {"modality.percentiles": [1.0, 99.0]})
    with pytest.raises(ConfigError, match=r"trained on mri data"):
        parse_config("configs/ct/sparse_view.yaml", {"prior.checkpoint": "builtin:mri", "modality.image_size": 64})


# ---------------------------------------------------------------------------------------------
# NIfTI volumes (3D stacks, the file's own grid)
# ---------------------------------------------------------------------------------------------


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    return np.array([[0.9 * c, -1.1 * s, 0.0, -12.5], [0.9 * s, 1.1 * c, 0.0, 30.0], [0.0, 0.0, 2.5, -7.0],
                     [0.0, 0.0, 0.0, 1.0]])


def test_a_nifti_volume_comes_back_on_its_own_grid_and_affine(priors, tmp_path):
    """A fully sampled, noiseless MRI volume reconstructed with DDS-3D: the data term alone determines the image
    (the untrained prior cannot spoil it), so the written NIfTI equals the input in the file's own voxel order,
    units and affine (sform code kept)."""
    rng = np.random.default_rng(0)
    vol = (50.0 + 40.0 * rng.random((10, 8, 4))).astype(np.float32)  # (I, J, K) voxels, 4 slices
    img = nib.Nifti1Image(vol, _oblique_affine())
    img.set_sform(_oblique_affine(), code=4)  # MNI
    nib.save(img, str(tmp_path / "scan.nii.gz"))
    out = run_reconstruction(MRIAdapter(acceleration=1.0, sigma=0.0, num_coils=4, slices="all"),
                             str(tmp_path / "scan.nii.gz"), prior=str(priors["1xany"]), solver="dds_volume",
                             solver_settings={"steps": 3, "tv_z": 0.0, "cg_iters": 5}, device="cpu", progress=False,
                             output_dir=str(tmp_path / "out"))
    assert out.report["prior"]["wrap"] == "slice" and out.result.mean.shape[2] == 4
    back = nib.load(tmp_path / "out" / "reconstruction.nii.gz")
    np.testing.assert_allclose(back.affine, _oblique_affine(), atol=1e-6)
    assert back.shape == vol.shape and int(back.header["sform_code"]) == 4
    np.testing.assert_allclose(back.get_fdata(), vol, rtol=0, atol=1e-3 * vol.max())


def test_a_ct_nifti_volume_keeps_its_affine(priors, tmp_path):
    rng = np.random.default_rng(1)
    vol = np.full((16, 16, 3), -1000.0, np.float32)
    vol[4:12, 4:12] = 40.0 + 20 * rng.random((8, 8, 3))
    nib.save(nib.Nifti1Image(vol, _oblique_affine()), str(tmp_path / "ct.nii.gz"))
    out = run_reconstruction(CTAdapter(n_views=12, i0=None, sigma=0.0, slices=(0, 3), pixel_size=1.0),
                             str(tmp_path / "ct.nii.gz"), prior=str(priors["1xany"]), solver="dds_volume",
                             solver_settings={"steps": 2}, device="cpu", progress=False,
                             output_dir=str(tmp_path / "out"))
    back = nib.load(tmp_path / "out" / "reconstruction.nii.gz")
    np.testing.assert_allclose(back.affine, _oblique_affine(), atol=1e-6)
    assert back.shape == vol.shape and np.isfinite(back.get_fdata()).all()
    assert out.report["modality"]["slices"] == [0, 3]
