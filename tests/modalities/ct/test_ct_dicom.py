"""CT DICOM reader/writer: HU, padding, spacing, errors naming the file, geometry kept on output."""

import copy

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from sciprior.io.dicom import dicom_affine
from sciprior.io.nifti import write_nifti
from sciprior.modalities.ct.io import read_ct_dicom, read_ct_series, write_ct_dicom


def ct_small_path():
    return get_testdata_file("CT_small.dcm", download=False)


def test_reads_hu_and_spacing():
    path = ct_small_path()
    ds = pydicom.dcmread(path)
    sl = read_ct_dicom(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert sl.values.shape == (128, 128) and sl.values.dtype == np.float32
    assert np.array_equal(sl.values, np.maximum(expected, -1024).astype(np.float32))
    assert sl.pixel_spacing == (0.661468, 0.661468)
    assert "PixelData" not in sl.header and sl.path == str(path)


def test_padding_outside_the_field_of_view_is_masked_and_clipped(tmp_path):
    ds = pydicom.dcmread(ct_small_path())
    arr = ds.pixel_array.copy()
    arr[:5] = -2000                      # the file's PixelPaddingValue (raw) -> -3024 HU
    arr[-3:, :] = -1500                  # -2524 HU: below any physical value
    ds.PixelData = arr.tobytes()
    p = tmp_path / "padded.dcm"
    ds.save_as(p)
    sl = read_ct_dicom(p)
    assert sl.padding[:5].all() and sl.padding[-3:].all() and (~sl.padding[5:-3]).all()
    assert (sl.values[:5] == -1024).all() and (sl.values[-3:] == -1024).all()
    assert sl.values.min() >= -1024


def test_errors_name_the_file(tmp_path):
    mr = get_testdata_file("MR_small.dcm", download=False)
    with pytest.raises(ValueError, match=r"MR_small\.dcm is not a CT image \(Modality 'MR'\)"):
        read_ct_dicom(mr)
    ds = pydicom.dcmread(ct_small_path())
    del ds.PixelData
    nopix = tmp_path / "no_pixels.dcm"
    ds.save_as(nopix)
    with pytest.raises(ValueError, match=r"no_pixels\.dcm has no pixel data"):
        read_ct_dicom(nopix)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match=r"junk\.dcm is not a readable DICOM file"):
        read_ct_dicom(junk)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_ct_dicom(tmp_path / "missing.dcm")
    ds = pydicom.dcmread(ct_small_path())
    del ds.PixelSpacing
    nospacing = tmp_path / "no_spacing.dcm"
    ds.save_as(nospacing)
    with pytest.raises(ValueError, match=r"no_spacing\.dcm has no PixelSpacing"):
        read_ct_dicom(nospacing)


def test_dicom_round_trip_keeps_geometry(tmp_path):
    sl = read_ct_dicom(ct_small_path())
    rec = sl.values + 7.4
    out = write_ct_dicom(tmp_path / "out" / "rec.dcm", rec, sl)
    back = read_ct_dicom(out)
    assert np.abs(back.values - np.rint(rec)).max() == 0
    assert back.pixel_spacing == sl.pixel_spacing
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "StudyInstanceUID",
                "PatientID"):
        assert back.header.get(key) == sl.header.get(key), key
    assert back.header.SeriesInstanceUID != sl.header.SeriesInstanceUID
    assert back.header.SOPInstanceUID != sl.header.SOPInstanceUID
    assert [p.name for p in out.parent.iterdir()] == ["rec.dcm"]   # no temporary left behind
    # a resampled result keeps the new spacing
    half = write_ct_dicom(tmp_path / "half.dcm", rec[::2, ::2], sl, pixel_spacing=(1.322936, 1.322936))
    assert read_ct_dicom(half).pixel_spacing == (1.322936, 1.322936)
    with pytest.raises(ValueError, match="NaN"):
        write_ct_dicom(tmp_path / "bad.dcm", np.full((4, 4), np.nan), sl)


def test_nifti_keeps_spacing_and_position(tmp_path):
    sl = read_ct_dicom(ct_small_path())
    out = write_nifti(tmp_path / "rec.nii.gz", sl.values.T[:, :, None], sl.affine())  # (column, row, slice)
    img = nib.load(out)
    dr, dc = sl.pixel_spacing
    assert np.allclose(img.header.get_zooms(), (dc, dr, sl.slice_thickness))
    data = np.asarray(img.dataobj)[:, :, 0]
    assert np.array_equal(data.T, sl.values)
    # voxel (column c, row r) lands at the DICOM patient position (LPS -> RAS)
    ipp = np.array([float(v) for v in sl.header.ImagePositionPatient])
    iop = np.array([float(v) for v in sl.header.ImageOrientationPatient])
    c, r = 10, 20
    lps = ipp + c * dc * iop[:3] + r * dr * iop[3:]
    assert np.allclose(img.affine @ [c, r, 0, 1], [-lps[0], -lps[1], lps[2], 1])
    assert np.allclose(dicom_affine(sl.header, sl.pixel_spacing, sl.slice_thickness), img.affine)


def test_volume_sorts_slices(tmp_path):
    ds = pydicom.dcmread(ct_small_path())
    paths = []
    for k, z in enumerate([10.0, -5.0, 2.5]):
        d = copy.deepcopy(ds)
        pos = [float(v) for v in d.ImagePositionPatient]
        d.ImagePositionPatient = [pos[0], pos[1], z]
        d.PixelData = (d.pixel_array + k).astype(d.pixel_array.dtype).tobytes()
        d.SOPInstanceUID = pydicom.uid.generate_uid()
        paths.append(tmp_path / f"s{k}.dcm")
        d.save_as(paths[-1])
    vol = read_ct_series(paths)
    assert vol.data.shape == (128, 128, 3)
    assert [s.path for s in vol.slices] == [str(paths[i]) for i in (1, 2, 0)]   # z = -5, 2.5, 10
    assert np.isclose(vol.affine[2, 2], 7.5)
    mr = get_testdata_file("MR_small.dcm", download=False)
    with pytest.raises(ValueError, match="MR_small.dcm is not a CT image"):
        read_ct_series([paths[0], mr])
