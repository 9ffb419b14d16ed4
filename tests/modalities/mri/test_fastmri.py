"""fastMRI-layout HDF5: round trips, header parsing, atomic writes, errors naming file and key."""

import os

import h5py
import numpy as np
import pytest
import torch

from sciprior.modalities.mri import (
    MultiCoilMRI,
    birdcage_maps,
    column_mask,
    problem_from_kspace,
    simulate_kspace,
)
from sciprior.modalities.mri.fastmri import (
    ISMRMRD_NS,
    center_crop,
    make_ismrmrd_header,
    parse_ismrmrd_header,
    read_fastmri,
    write_fastmri,
)


def _kspace(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def test_multicoil_round_trip(tmp_path):
    k = _kspace((3, 4, 20, 16))
    rss = torch.rand(3, 12, 12)
    mask, _ = column_mask("random", 16, 4, 0.25, seed=1)
    attrs = {"acquisition": "CORPD_FBK", "patient_id": "abc123", "max": 0.5, "norm": 2.0}
    path = write_fastmri(tmp_path / "vol.h5", k * mask, reconstruction_rss=rss, mask=mask, attrs=attrs)
    vol = read_fastmri(path)
    assert vol.multicoil and vol.num_slices == 3
    assert vol.kspace.dtype == torch.complex64 and torch.equal(vol.kspace, k * mask)
    assert vol.reconstruction_key == "reconstruction_rss" and torch.equal(vol.reconstruction, rss)
    assert torch.equal(vol.mask, mask)
    assert vol.attrs == attrs
    assert vol.header.encoded_size == (20, 16, 1) and vol.header.recon_size == (12, 12, 1)
    assert vol.header.encoding_limits_center == 8 and vol.header.encoding_limits_max == 15
    with h5py.File(path, "r") as hf:  # the fastMRI layout itself
        assert hf["kspace"].dtype == np.complex64 and hf["kspace"].shape == (3, 4, 20, 16)
        assert hf["mask"].dtype == bool and hf["mask"].shape == (16,)
        assert isinstance(hf["ismrmrd_header"][()], bytes)
    # a subset of slices
    assert torch.equal(read_fastmri(path, slices=1).kspace, (k * mask)[1:2])
    assert torch.equal(read_fastmri(path, slices=[2, 0]).kspace, (k * mask)[[0, 2]])
    assert torch.equal(read_fastmri(path, slices=slice(1, 3)).reconstruction, rss[1:3])


def test_singlecoil_round_trip_with_2d_mask_and_default_attrs(tmp_path):
    k = _kspace((2, 10, 8), seed=3)
    esc = torch.rand(2, 10, 8)
    mask = (torch.rand(10, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    path = write_fastmri(tmp_path / "sc.h5", k, reconstruction_esc=esc, mask=mask)
    vol = read_fastmri(path)
    assert not vol.multicoil and vol.kspace.shape == (2, 1, 10, 8)
    assert torch.equal(vol.kspace[:, 0], k) and torch.equal(vol.mask, mask)
    assert vol.reconstruction_key == "reconstruction_esc"
    assert vol.attrs["acquisition"] == "SIMULATED"
    assert vol.attrs["max"] == pytest.approx(float(esc.max()))
    assert vol.attrs["norm"] == pytest.approx(float(np.linalg.norm(esc.numpy())), rel=1e-5)


def test_simulated_mri_round_trips_into_the_same_problem(tmp_path):
    h, w = 32, 24
    img = torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(0))
    maps = birdcage_maps(4, (h, w))
    mask, _ = column_mask("equispaced", w, 2, 0.25, seed=0)
    op = MultiCoilMRI(maps, mask)
    y = simulate_kspace(op, img, 0.01, torch.Generator().manual_seed(1))
    path = write_fastmri(tmp_path / "sim.h5", y, mask=mask,
                         reconstruction_rss=torch.linalg.vector_norm(img, dim=1))
    vol = read_fastmri(path)
    prob = problem_from_kspace(vol.kspace[0], vol.mask, maps=maps, sigma=0.01, scale=1.0)
    assert torch.equal(prob.y, y)
    assert torch.equal(prob.operator.mask, op.mask)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a.h5"
    write_fastmri(path, _kspace((1, 2, 8, 8)))
    before = path.read_bytes()
    with pytest.raises(TypeError):  # h5py cannot store a dict attribute: the write fails midway
        write_fastmri(path, _kspace((1, 2, 8, 8), seed=5), attrs={"bad": {"nested": 1}})
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["a.h5"]  # and no temp file is left


def test_header_parsing_of_a_fastmri_style_header():
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="{ISMRMRD_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <studyInformation><studyTime>12:00:00</studyTime></studyInformation>
  <encoding>
    <encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>280</x><y>140</y><z>4.5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>
    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>366</maximum>
      <center>184</center></kspace_encoding_step_1></encodingLimits>
  </encoding>
</ismrmrdHeader>"""
    hdr = parse_ismrmrd_header(xml.encode())
    assert hdr.encoded_size == (640, 368, 1) and hdr.recon_size == (320, 320, 1)
    assert hdr.encoded_fov_mm == (280.0, 140.0, 4.5) and hdr.recon_fov_mm == (140.0, 140.0, 3.0)
    assert hdr.padding == (0, 367)  # fastMRI: 368 // 2 - 184, + 366 + 1
    made = parse_ismrmrd_header(make_ismrmrd_header((640, 368), (320, 320)))
    assert made.encoded_size == (640, 368, 1) and made.recon_size == (320, 320, 1)
    with pytest.raises(ValueError, match="reconSpace/matrixSize/x"):
        parse_ismrmrd_header(xml.replace("<x>320</x>", ""))
    with pytest.raises(ValueError, match="not valid XML"):
        parse_ismrmrd_header("<ismrmrdHeader>")


def test_reader_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "nokspace.h5"
    with h5py.File(bad, "w") as hf:
        hf.create_dataset("image", data=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"nokspace\.h5 has no 'kspace' dataset \(keys: \['image'\]\)"):
        read_fastmri(bad)
    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as hf:
        hf.create_dataset("kspace", data=np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"real\.h5: 'kspace' must be complex"):
        read_fastmri(real)
    mism = tmp_path / "mask.h5"
    with h5py.File(mism, "w") as hf:
        hf.create_dataset("kspace", data=np.zeros((1, 2, 8, 6), dtype=np.complex64))
        hf.create_dataset("mask", data=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match=r"mask\.h5: 'mask' of shape \(5,\) does not match k-space"):
        read_fastmri(mism)
    nan = tmp_path / "nan.h5"
    arr = np.zeros((1, 2, 4, 4), dtype=np.complex64)
    arr[0, 1, 2, 3] = np.nan
    with h5py.File(nan, "w") as hf:
        hf.create_dataset("kspace", data=arr)
    with pytest.raises(ValueError, match=r"nan\.h5: 'kspace' contains 1 NaN/Inf"):
        read_fastmri(nan)
    noth5 = tmp_path / "text.h5"
    noth5.write_text("hello")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_fastmri(noth5)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_fastmri(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="out of range"):
        read_fastmri(mism, slices=3)


def test_writer_validates_inputs(tmp_path):
    k = _kspace((1, 2, 8, 6))
    with pytest.raises(ValueError, match=r"mask of shape \(5,\) does not match k-space"):
        write_fastmri(tmp_path / "x.h5", k, mask=torch.ones(5))
    with pytest.raises(ValueError, match="must be complex"):
        write_fastmri(tmp_path / "x.h5", k.real)
    bad = k.clone()
    bad[0, 0, 0, 0] = complex(float("nan"), 0)
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        write_fastmri(tmp_path / "x.h5", bad)
    with pytest.raises(ValueError, match=r"reconstruction_rss must be \(slices=1, H, W\)"):
        write_fastmri(tmp_path / "x.h5", k, reconstruction_rss=torch.zeros(2, 4, 4))
    assert os.listdir(tmp_path) == []


def test_center_crop_matches_fastmri_convention():
    x = torch.arange(6 * 8).reshape(1, 6, 8)
    c = center_crop(x, (4, 4))
    assert c.shape == (1, 4, 4) and int(c[0, 0, 0]) == x[0, 1, 2]
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop(x, (7, 4))
