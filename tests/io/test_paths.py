"""Inputs: errors that name the key and path, and file kinds recognised by content (also by the adapters)."""

import os

import nibabel as nib
import numpy as np
import pytest

from sciprior.io.paths import resolve_input
from sciprior.modalities import sample_table
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.modalities.mri.adapter import MRIAdapter


def test_resolve_input_names_the_key_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="input: no such file.*missing.nii.gz"):
        resolve_input(str(tmp_path / "missing.nii.gz"))
    with pytest.raises(FileNotFoundError, match="unknown sample 'sample:nope'; known samples: .*sample:head_ct"):
        resolve_input("sample:nope", samples=sample_table)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell what .*x.txt.* is: its content is none of NIfTI"):
        resolve_input(str(tmp_path / "x.txt"))


def test_input_kinds_are_recognised_by_content_not_by_name(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    (tmp_path / "renamed.data").write_bytes((tmp_path / "a.nii.gz").read_bytes())
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "plain.nii"))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "k.bin", "w") as f:
        f["kspace"] = np.zeros((1, 4, 4), np.complex64)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["image"] = np.zeros((4, 4))
    np.save(tmp_path / "arr.npy", np.zeros(3))
    kinds = {p: resolve_input(str(tmp_path / p))[0] for p in ("a.nii.gz", "renamed.data", "plain.nii", "k.bin",
                                                               "other.h5", "arr.npy")}
    assert kinds == {"a.nii.gz": "nifti", "renamed.data": "nifti", "plain.nii": "nifti", "k.bin": "hdf5",
                     "other.h5": "hdf5", "arr.npy": "npy"}
    assert resolve_input("sample:head_ct", samples=sample_table)[0] == "dicom"
    from pydicom.data import get_testdata_file

    assert resolve_input(get_testdata_file("CT_small.dcm", download=False))[0] == "dicom"  # TIFF header in its preamble
    # the MRI adapter reads HDF5 only with a kspace dataset (the fastMRI layout), whatever the name says
    MRIAdapter().check_input(str(tmp_path / "k.bin"))
    with pytest.raises(ValueError, match="other.h5.*HDF5 file without a 'kspace' dataset"):
        MRIAdapter().check_input(str(tmp_path / "other.h5"))
    with pytest.raises(ValueError, match="the ct modality cannot read hdf5 input"):
        CTAdapter().check_input(str(tmp_path / "k.bin"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="fifo.* is not a regular file or directory"):
        resolve_input(str(tmp_path / "fifo"))
