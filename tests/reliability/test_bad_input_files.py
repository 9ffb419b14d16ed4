"""Bad input files: ``sciprior reconstruct`` refuses each one naming the file (and what is wrong with it), before
the solver runs, and leaves nothing behind (tests/reliability/reliability_helpers.py states the four checks).

Every file is made here from a real one (pydicom's CT_small.dcm and MR_small.dcm, a NIfTI written by nibabel, a
fastMRI-layout HDF5) and then damaged the way files get damaged: truncated, emptied, misnamed, wrong kind, wrong
shape or dtype, a FIFO. Most are seen from the header during validation (exit status 2, nothing loaded); those that
need the data (a truncated gzip stream, NaN voxels) fail while loading (exit status 1), still before any solver step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from reliability_helpers import CT_TRAINED, MRI_TRAINED, Spy, refused, run_main, tiny_prior, tree

from sciprior.app.reconstruct import main


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {"ct": tiny_prior(root / "ct", metadata=CT_TRAINED), "mri": tiny_prior(root / "mri", metadata=MRI_TRAINED)}


def config(priors, modality: str, input: str, out: Path) -> dict:
    mod = ({"name": "ct", "n_views": 30, "image_size": 64, "i0": 1e6} if modality == "ct" else
           {"name": "mri", "acceleration": 4, "num_coils": 2, "image_size": 64, "slices": "middle"})
    return {"modality": mod, "input": input, "prior": {"checkpoint": str(priors[modality])},
            "solver": {"name": "dds", "steps": 2}, "device": "cpu", "progress": False, "output_dir": str(out)}


def _nifti(path: Path, shape=(32, 32, 4), fill=None) -> Path:
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    if fill is not None:
        fill(data)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _dicom(path: Path, change) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    change(ds)
    ds.save_as(str(path))
    return path


def _truncate(path: Path, keep) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[:keep(len(raw))])
    return path


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for name, spec in datasets.items():
            if isinstance(spec, tuple):  # (shape, dtype): declared, never written (no data on disk)
                f.create_dataset(name, shape=spec[0], dtype=spec[1], chunks=(1, 1, *spec[0][2:]))
            else:
                f[name] = spec
    return path


def _set_nan(a: np.ndarray) -> None:
    a[3, 4, 1] = np.nan


def _del_rows(ds) -> None:
    del ds.Rows


def _short_pixels(ds) -> None:
    ds.PixelData = ds.PixelData[:100]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _dir_with(path: Path, files: dict) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


K = np.complex64
# id: (modality, how to make the input in a directory, exit status, message pattern; the file is always named)
CASES = {
    # DICOM
    "dicom-without-rows": ("ct", lambda d: _dicom(d / "norows.dcm", _del_rows), 2,
                           r"input: the DICOM file '.*norows\.dcm' has no \(0028,0010\) Rows: it holds no image"),
    "dicom-pixels-truncated": ("ct", lambda d: _dicom(d / "short.dcm", _short_pixels), 2,
                               r"input: the DICOM file '.*short\.dcm' holds 100 bytes of pixel data but its header "
                               r"declares 128 x 128 x 1 frame\(s\) at 16 bits \(32768 bytes\)"),
    "dicom-file-truncated": ("ct", lambda d: _truncate(_dicom(d / "cut.dcm", lambda ds: None), lambda n: n // 2), 2,
                             r"input: the DICOM file '.*cut\.dcm' ends at byte \d+ inside its pixel data .*truncated"),
    "dicom-of-another-modality": ("ct", lambda d: Path(shutil.copy(get_testdata_file("MR_small.dcm", download=False),
                                                                   d / "mr.dcm")), 2,
                                  r"input: the DICOM file '.*mr\.dcm' is not a CT image \(Modality 'MR'\)"),
    "dicom-to-mri": ("mri", lambda d: _dicom(d / "ct.dcm", lambda ds: None), 2,
                     r"input: the mri modality cannot read dicom input '.*ct\.dcm'; it reads nifti, hdf5"),
    # NIfTI
    "nifti-header-truncated": ("ct", lambda d: _truncate(_nifti(d / "a.nii"), lambda n: 200), 2,
                               r"input: cannot tell what '.*a\.nii' is: .*named as NIfTI but holds only 200 bytes, "
                               r"less than a NIfTI header of 348 bytes"),
    "nifti-data-truncated": ("ct", lambda d: _truncate(_nifti(d / "a.nii"), lambda n: 400), 2,
                             r"input: the NIfTI file '.*a\.nii' is 400 bytes long but its header declares 32x32x4 "
                             r"float32 voxels after byte 352 \(16736 bytes\): the file is truncated"),
    "nifti-gzip-truncated": ("ct", lambda d: _truncate(_nifti(d / "a.nii.gz"), lambda n: n // 2), 1,
                             r"input: cannot read the data of NIfTI file '.*a\.nii\.gz': Compressed file ended"),
    "text-named-nifti": ("ct", lambda d: (d / "notes.nii").write_text("not an image\n" * 40) and d / "notes.nii", 2,
                         r"input: cannot tell what '.*notes\.nii' is: .*named as NIfTI but is not"),
    "empty-file": ("ct", lambda d: (d / "e.nii").write_bytes(b"") or d / "e.nii", 2,
                   r"input: cannot tell what '.*e\.nii' is: .*the file is empty"),
    "nifti-4d-several-volumes": ("ct", lambda d: _nifti(d / "t.nii.gz", (16, 16, 4, 3)), 2,
                                 r"input: '.*t\.nii\.gz' has shape \(16, 16, 4, 3\); expected a 2D or 3D image"),
    "nifti-empty-axis": ("ct", lambda d: _nifti(d / "z.nii", (16, 0, 4)), 2,
                         r"input: '.*z\.nii' has shape \(16, 0, 4\): an empty axis"),
    "nifti-with-nan": ("ct", lambda d: _nifti(d / "n.nii.gz", fill=_set_nan), 1,
                       r"input: '.*n\.nii\.gz' contains 1 NaN/Inf voxels"),
    # directories and special files
    "directory-without-dicom": ("ct", lambda d: _dir_with(d / "docs", {"readme.txt": "x"}), 2,
                                r"input: cannot tell what '.*docs/readme\.txt' is"),
    "empty-directory": ("ct", lambda d: _dir_with(d / "nothing", {}), 2,
                        r"input: directory '.*nothing' contains no files"),
    "fifo": ("ct", lambda d: _fifo(d / "pipe.nii"), 2,
             r"input: '.*pipe\.nii' is not a regular file or directory \(a FIFO or device cannot be read\)"),
    # HDF5 k-space
    "hdf5-to-ct": ("ct", lambda d: _h5(d / "k.h5", kspace=np.zeros((1, 2, 8, 8), K)), 2,
                   r"input: the ct modality cannot read hdf5 input '.*k\.h5'; it reads nifti, dicom"),
    "hdf5-corrupt": ("mri", lambda d: (d / "c.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
                     and d / "c.h5", 2, r"input: cannot open the HDF5 file '.*c\.h5' \(corrupt or truncated\?\)"),
    "hdf5-without-kspace": ("mri", lambda d: _h5(d / "r.h5", reconstruction_rss=np.zeros((1, 8, 8), np.float32)), 2,
                            r"input: '.*r\.h5' is an HDF5 file without a 'kspace' dataset"),
    "kspace-not-complex": ("mri", lambda d: _h5(d / "f.h5", kspace=np.zeros((2, 4, 32, 32), np.float32)), 2,
                           r"input: '.*f\.h5': 'kspace' must be complex, got float32"),
    "kspace-two-dims": ("mri", lambda d: _h5(d / "2d.h5", kspace=np.zeros((4, 4), K)), 2,
                        r"input: '.*2d\.h5': 'kspace' must be \(slices, coils, H, W\) or \(slices, H, W\), "
                        r"got shape \(4, 4\)"),
    "kspace-of-another-size": ("mri", lambda d: _h5(d / "b.h5", kspace=((2, 4, 640, 368), K)), 2,
                               r"modality\.image_size=64 but the k-space in '.*b\.h5' is 640x368"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_file_is_refused_naming_it(case, priors, tmp_path, monkeypatch):
    modality, make, rc, pattern = CASES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config(priors, modality, str(path), tmp_path / "out")))
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    outcome = run_main(main, [str(cfg)])
    refused(outcome, rc, pattern, watched=tmp_path, before=before, spy=spy)
    if rc == 2:
        assert spy.calls == [], f"seen in the header, yet compute started: {spy.calls}"


def test_kspace_that_would_not_fit_in_memory_is_refused_from_its_declared_shape(priors, tmp_path, monkeypatch):
    """An HDF5 whose kspace is declared 2000 x 32 x 640 x 368 complex64 (60 GiB; nothing stored): refused from the
    header naming the key, the shape and the memory, with image_size null (the scan's own size)."""
    path = _h5(tmp_path / "huge.h5", kspace=((2000, 32, 640, 368), K))
    assert path.stat().st_size < 1_000_000  # declared, not stored
    cfg = config(priors, "mri", str(path), tmp_path / "out")
    cfg["modality"].update(image_size=None, slices="all")
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    outcome = run_main(main, [str(tmp_path / "c.yaml"), "--modality.slices", "all"])
    refused(outcome, 2, r"huge\.h5.*GiB", watched=tmp_path, before=before, spy=spy)
    assert spy.calls == []
