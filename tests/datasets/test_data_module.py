"""The training set (one data module for every modality): split by file, the modalities' readers, deterministic
views, samplers, caches, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import write_volumes

from sciprior.datasets.module import PriorDataModule
from sciprior.datasets.sampling import EpochSampler
from sciprior.datasets.views import RandomAffine, random_affine, random_view
from sciprior.io.paths import resolve_paths
from sciprior.modalities import sample_table
from sciprior.modalities.ct.data import CTSlices
from sciprior.modalities.mri.data import KSpaceSlices, MRSlices


def slices(paths, percentiles=(0.5, 99.5), **kw) -> PriorDataModule:
    """MR magnitude slices of NIfTI volumes, normalised by their percentiles (0, 100: min and max)."""
    return PriorDataModule("mri", paths, reader={"name": "slices", "percentiles": list(percentiles)}, **kw)


def identity_slices(paths, **kw) -> PriorDataModule:
    """Slices with the values as stored: the CT reader with the window [-1, 1], unclipped, is the identity map."""
    return PriorDataModule("ct", paths, reader={"window": [-1.0, 1.0], "clip": False}, **kw)


def _paths(items: list[dict]) -> set[str]:
    return {it["path"] for it in items}


def test_split_is_by_file(tmp_path: Path):
    files = write_volumes(tmp_path, 5, shape=(8, 8, 3))
    dm = slices([str(f) for f in files], val_fraction=0.4, batch_size=2, seed=3)
    dm.setup("fit")
    train, val = _paths(dm.train_items), _paths(dm.val_items)
    assert len(val) == 2 and len(train) == 3 and not train & val
    assert train | val == {str(f) for f in files}
    assert len(dm.train_set) == 3 * 3 and len(dm.val_set) == 2 * 3  # every slice of a file stays with it
    # the split is reproducible from the seed
    again = slices([str(f) for f in files], val_fraction=0.4, batch_size=2, seed=3)
    assert {*map(str, again.val_files)} == val
    with pytest.raises(ValueError, match="in both paths and val_paths"):
        slices([str(f) for f in files], val_paths=[str(files[0])])


def test_holdout_slab_of_a_single_volume(tmp_path: Path):
    (f,) = write_volumes(tmp_path, 1, shape=(8, 8, 10))
    dm = slices(str(f), holdout=(4, 6), holdout_margin=1, batch_size=2)
    dm.setup("fit")
    assert sorted(it["index"] for it in dm.train_items) == [0, 1, 2, 7, 8, 9]
    assert sorted(it["index"] for it in dm.val_items) == [4, 5]


def test_slices_of_a_dicom_file_match_pydicom(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    dm = PriorDataModule("ct", path, reader={"window": [-1000, 1000], "clip": True}, val_fraction=0.0, batch_size=1,
                         flips=False)
    dm.setup("fit")
    x = dm.train_set[0]
    assert x.shape == (1, 128, 128)
    np.testing.assert_allclose(x[0].numpy(), np.clip(np.maximum(hu, -1024) / 1000, -1, 1), atol=1e-6)


def test_pixel_spacing_resamples_with_the_affine(tmp_path: Path):
    import nibabel as nib

    vol = np.zeros((40, 20, 3), np.float32)
    vol[10:30, 5:15] = 1.0  # a 20 x 10 voxel block = 10 mm x 10 mm at (0.5, 1.0) mm voxels
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 1.0, 2.0, 1.0])), str(tmp_path / "v.nii.gz"))
    dm = PriorDataModule("ct", str(tmp_path / "v.nii.gz"),
                         reader={"window": [-1.0, 1.0], "clip": False, "pixel_spacing": 1.0},
                         val_fraction=0.0, batch_size=1, flips=False)
    dm.setup("fit")
    x = dm.train_set[0][0]
    assert x.shape == (20, 20)  # (y, x): 20 mm x 20 mm at 1 mm
    assert float(x.sum()) == pytest.approx(100.0, rel=1e-5)  # the 10 x 10 mm block keeps its area


def test_package_paths_are_resolved_without_download():
    (p,) = resolve_paths("pkg:pydicom/pydicom/data/test_files/CT_small.dcm")
    assert p.is_file() and p.name == "CT_small.dcm"
    with pytest.raises(FileNotFoundError, match="no-such-dist"):
        resolve_paths("pkg:no-such-dist/x.dcm", "data.paths")


def test_views_are_deterministic_per_epoch_and_index(tmp_path: Path):
    files = write_volumes(tmp_path, 2, shape=(16, 12, 2))
    dm = slices([str(f) for f in files], val_fraction=0.0, patch_size=(8, 8), rot90=True, repeats=3, batch_size=2)
    dm.setup("fit")
    ds = dm.train_set
    assert len(ds) == 4 * 3 and ds[(5, 0)].shape == (1, 8, 8)
    assert torch.equal(ds[(5, 0)], ds[(5, 0)])
    assert not torch.equal(ds[(5, 0)], ds[(5, 1)]), "views should change with the epoch"
    # a view is a patch of the example, possibly flipped/rotated: its sorted values are a subset
    full = ds.base[5 % 4].flatten()
    patch = ds[(5, 0)].flatten()
    assert all(bool((full == v).any()) for v in patch)


def test_flips_on_one_axis_only():
    """"horizontal" mirrors columns only, "vertical" rows only, True both; the coins are the same draws in
    every mode (so True reproduces the views of earlier runs and one-axis modes are the same coins, masked)."""
    x = torch.arange(12.0).reshape(1, 3, 4)
    seen: dict[object, set[str]] = {mode: set() for mode in (True, "horizontal", "vertical", False)}
    for seed in range(40):
        coins = np.random.default_rng(seed).random(2) < 0.5
        for mode in seen:
            y = random_view(x, np.random.default_rng(seed), None, mode, False, -1.0)
            h = bool(coins[0]) and mode in (True, "horizontal")
            v = bool(coins[1]) and mode in (True, "vertical")
            want = x.flip(-1) if h else x
            want = want.flip(-2) if v else want
            assert torch.equal(y, want), (seed, mode)
            seen[mode].add("h" * h + "v" * v)
    assert seen[True] == {"", "h", "v", "hv"} and seen["horizontal"] == {"", "h"}
    assert seen["vertical"] == {"", "v"} and seen[False] == {""}
    for bad in ("diagonal", 1, 0):
        with pytest.raises(ValueError, match="data.flips"):
            slices("sample:mni152_t1", flips=bad)


class _Draws:
    """A stand-in generator whose uniform draws are fixed (u in [-1, 1]: rotation, zoom, shift rows, shift cols)."""

    def __init__(self, u):
        self.u = np.asarray(u, dtype=float)

    def uniform(self, low, high, size):
        assert (low, high, size) == (-1.0, 1.0, 4)
        return self.u


def test_random_affine_is_exact_on_the_pixel_grid():
    x = torch.rand(2, 8, 8) * 2 - 1
    aff = RandomAffine(rotate=90.0, scale=0.5, translate=0.25)
    assert torch.allclose(random_affine(x, _Draws([0, 0, 0, 0]), aff, -1.0), x, atol=1e-5)  # identity
    turned = random_affine(x, _Draws([1, 0, 0, 0]), aff, -1.0)  # 90 degrees: pixel centres onto pixel centres
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5) for k in (1, 3))
    # a shift by 0.25 of the size = 2 pixels; the uncovered pixels get the pad value
    shifted = random_affine(x, _Draws([0, 0, 1, 0]), aff, -1.0)
    cols = random_affine(x, _Draws([0, 0, 0, 1]), aff, -1.0)
    moved = [s for s in (shifted, cols) if not torch.allclose(s, x)]
    assert len(moved) == 2
    expect_a = torch.full_like(x, -1.0)
    expect_a[:, :, 2:] = x[:, :, :-2]
    expect_b = torch.full_like(x, -1.0)
    expect_b[:, :, :-2] = x[:, :, 2:]
    expect_c, expect_d = expect_a.transpose(-1, -2).clone(), expect_b.transpose(-1, -2).clone()
    expect_c[:, 2:, :], expect_c[:, :2, :] = x[:, :-2, :], -1.0
    expect_d[:, :-2, :], expect_d[:, -2:, :] = x[:, 2:, :], -1.0
    for out in moved:
        assert any(torch.allclose(out, e, atol=1e-5) for e in (expect_a, expect_b, expect_c, expect_d))
    # a 1.5x zoom (scale 0.5, u = 1): bicubic overshoot is clipped to the range of the view and the pad value
    noisy = x * 0.5  # in [-0.5, 0.5]
    zoomed = random_affine(noisy, _Draws([0, 1, 0, 0]), aff, -1.0)
    assert zoomed.min() >= -1.0 and zoomed.max() <= noisy.max() + 1e-6 and not torch.allclose(zoomed, noisy)


def test_random_affine_rotates_non_square_images_without_shear():
    """A disc stays a disc under rotation on a non-square grid (rotation in pixels, not normalised units)."""
    h, w = 32, 48
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = torch.where(yy**2 + xx**2 <= 10.0**2, 1.0, -1.0)[None]
    out = random_affine(disc, _Draws([1, 0, 0, 0]), RandomAffine(rotate=37.0), -1.0)
    assert (out - disc).abs().mean() < 0.02


def test_affine_jitter_in_training_views_only_and_bad_values_fail(tmp_path: Path):
    dm = slices("sample:mni152_t1", spatial_size=(32, 32), holdout=(74, 91), flips=False,
                affine={"rotate": 10.0, "scale": 0.1, "translate": 0.05}, min_foreground=0.05)
    plain = slices("sample:mni152_t1", spatial_size=(32, 32), holdout=(74, 91), flips=False, min_foreground=0.05)
    dm.setup("fit")
    plain.setup("fit")
    assert isinstance(dm.affine, RandomAffine)
    a, b = dm.train_set[(5, 0)], dm.train_set[(5, 1)]
    assert not torch.allclose(a, b) and torch.equal(a, dm.train_set[(5, 0)])  # new draw per epoch, reproducible
    assert not torch.allclose(a, plain.train_set[(5, 0)])
    assert a.min() >= -1.0 - 1e-6 and a.shape == plain.train_set[(5, 0)].shape and type(a) is torch.Tensor
    assert all(torch.equal(dm.val_set[i], plain.val_set[i]) for i in range(len(plain.val_set)))  # val untouched
    for bad in ({"rotate": -1.0}, {"scale": 1.0}, {"translate": float("nan")}):
        with pytest.raises(ValueError, match="affine." + next(iter(bad))):
            RandomAffine(**bad)
    with pytest.raises(ValueError, match="data.affine: .*rotat"):
        slices("sample:mni152_t1", affine={"rotat": 3.0})


def _slab_volume(folder: Path) -> Path:
    """40 axial slices of 32 x 32: background -1, a head block whose training slices hold -0.5 + 0.01 z
    (<= 0), margin slices 16..17 / 22..23 hold 0.5 and held-out slices 18..21 hold 1."""
    import nibabel as nib

    vol = np.full((32, 32, 40), -1.0, dtype=np.float32)
    z = np.arange(40, dtype=np.float32)
    vol[4:28, 6:26, :] = -0.5 + 0.01 * z
    vol[4:28, 6:26, 16:24] = 0.5
    vol[4:28, 6:26, 18:22] = 1.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slab.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path


def test_oblique_views_never_reach_the_held_out_slab(tmp_path: Path):
    path = _slab_volume(tmp_path)
    kw = dict(holdout=(18, 22), holdout_margin=2, flips=False, batch_size=4)
    dm = identity_slices(str(path), tilt=30.0, spin=20.0, **kw)
    dm.setup("fit")
    assert type(dm.train_set).__name__ == "ObliqueSliceViews"
    assert sorted(it["index"] for it in dm.train_items) == [*range(16), *range(24, 40)]
    far_tilted = 0
    for epoch in range(6):
        for i, item in enumerate(dm.train_items):
            x = dm.train_set[(i, epoch)]
            assert x.shape == (1, 32, 32)
            assert float(x.max()) <= 1e-5, (item["index"], epoch)  # nothing of slices 16..23, even interpolated
            head = x[0, 6:26, 8:24]  # rows/columns inside the block for small tilts
            if item["index"] in (2, 36) and float(head.max() - head.min()) > 0.02:
                far_tilted += 1  # tilted through several slices of the z ramp
    assert far_tilted >= 6  # far from the slab the views are really oblique
    torch.testing.assert_close(dm.train_set[(3, 1)], dm.train_set[(3, 1)], rtol=0, atol=0)  # reproducible
    assert not torch.equal(dm.train_set[(3, 1)], dm.train_set[(3, 2)])  # new angles every epoch
    # the slice next to the margin gets no tilt at all: the room is zero
    i15 = next(i for i, it in enumerate(dm.train_items) if it["index"] == 15)
    plain = identity_slices(str(path), spin=20.0, **kw)
    plain.setup("fit")
    assert type(plain.train_set).__name__ == "ObliqueSliceViews"
    torch.testing.assert_close(dm.train_set[(i15, 4)], plain.train_set[(i15, 4)], rtol=0, atol=1e-6)


def test_oblique_views_with_tiny_angles_are_the_cached_examples():
    kw = dict(spatial_size=(48, 48), holdout=(74, 91), flips=False, min_foreground=0.05)
    dm = slices("sample:mni152_t1", tilt=1e-7, spin=1e-7, **kw)
    ref = slices("sample:mni152_t1", **kw)
    dm.setup("fit")
    ref.setup("fit")
    assert len(dm.train_set) == len(ref.train_set)
    for i in (0, 40, len(ref.train_set) - 1):
        torch.testing.assert_close(dm.train_set[(i, 0)], ref.train_set[(i, 0)], rtol=0, atol=1e-4)
    assert all(torch.equal(dm.val_set[i], ref.val_set[i]) for i in range(len(ref.val_set)))  # validation: stored slices
    assert all(torch.equal(dm.train_set.base[i], ref.train_set.base[i]) for i in (0, 50))  # stored examples kept


def test_bad_tilt_or_spin_fails_naming_the_key():
    for key, value in (("tilt", 45.0), ("tilt", -1.0), ("spin", float("nan")), ("spin", 200.0)):
        with pytest.raises(ValueError, match=f"data.{key}"):
            slices("sample:mni152_t1", **{key: value})


def test_epoch_sampler_shards_are_disjoint_and_reshuffled():
    data = list(range(21))
    per_rank = []
    for rank in range(3):
        s = EpochSampler(data, num_replicas=3, rank=rank, seed=1)
        s.set_epoch(0)
        per_rank.append([i for i, _ in s])
    assert all(len(p) == 7 for p in per_rank)
    assert len(set().union(*map(set, per_rank))) == 21
    s = EpochSampler(data, num_replicas=3, rank=0, seed=1)
    s.set_epoch(1)
    keys = list(s)
    assert {e for _, e in keys} == {1} and [i for i, _ in keys] != per_rank[0]
    s = EpochSampler(data, num_replicas=3, rank=0, seed=1, position_fn=lambda: (0, 4))
    assert [i for i, _ in s] == per_rank[0][4:]  # mid-epoch resume skips what was consumed


def test_bad_paths_name_key_and_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"data\.paths: no such file.*missing\.nii"):
        slices(str(tmp_path / "missing.nii"))
    with pytest.raises(FileNotFoundError, match=r"val_paths: the pattern .*\*\.h5.* matches no file"):
        (f,) = write_volumes(tmp_path, 1)
        slices(str(f), val_paths=str(tmp_path / "*.h5"))
    with pytest.raises(FileNotFoundError, match="unknown sample 'sample:nope'"):
        resolve_paths("sample:nope", "data.paths", sample_table)
    with pytest.raises(ValueError, match="data.modality: unknown modality 'mir'; choose from"):
        PriorDataModule("mir", str(f))
    with pytest.raises(ValueError, match="data.reader.name: modality 'mri' has no reader 'slice'"):
        PriorDataModule("mri", str(f), reader={"name": "slice"})
    with pytest.raises(ValueError, match="data.reader.*percentile"):  # a misspelt reader setting
        PriorDataModule("mri", str(f), reader={"percentile": [1, 99]})
    with pytest.raises(ValueError, match="data.reader.*percentiles must satisfy"):  # a reader's own check
        PriorDataModule("mri", str(f), reader={"percentiles": [99, 1]})
    with pytest.raises(ValueError, match="data.tilt/data.spin: oblique re-slicing needs a reader of volume slices"):
        PriorDataModule("mri", str(f), reader={"name": "kspace"}, tilt=5.0)


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_fastmri_single_and_multi_coil(tmp_path: Path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    img = (rng.normal(size=(3, 32, 32)) + 1j * rng.normal(size=(3, 32, 32))) * (xx**2 + yy**2 < 0.8)
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f["kspace"] = _fft2c(img).astype(np.complex64)
    out = KSpaceSlices(crop=None)(str(tmp_path / "single.h5"))
    assert out.shape == (3, 2, 32, 32)
    scale = np.percentile(np.abs(img), 99.0)
    np.testing.assert_allclose(out[:, 0] + 1j * out[:, 1], img / scale, atol=1e-5)

    sens = np.stack([np.exp(-((xx - c) ** 2 + yy**2)) * np.exp(1j * c * yy) for c in (-1.0, 0.0, 1.0, 0.5)])
    smooth = np.exp(-(xx**2 + yy**2) * 2) * (1 + 0.2 * np.cos(3 * xx))  # a smooth object
    coils = sens[None] * smooth[None, None]
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["kspace"] = _fft2c(coils).astype(np.complex64)
    out = KSpaceSlices(crop=(16, 16), acs_lines=32)(str(tmp_path / "multi.h5"))
    assert out.shape == (1, 2, 16, 16)
    rss = np.sqrt((np.abs(coils) ** 2).sum(1))[0, 8:24, 8:24]
    mag = np.hypot(out[0, 0], out[0, 1])
    np.testing.assert_allclose(mag / mag.max(), rss / rss.max(), atol=1e-3)

    dm = PriorDataModule("mri", str(tmp_path / "single.h5"), reader={"name": "kspace", "crop": None},
                         val_fraction=0.0, batch_size=2)
    dm.setup("fit")
    assert dm.example_shape == (2, 32, 32) and dm.pad_value == 0.0  # the complex background pads
    assert dm.domain()["reader"] == {"name": "kspace", "output": "complex", "crop": None, "scale_percentile": 99.0,
                                     "acs_lines": 24} and dm.domain()["modality"] == "mri"


def test_hyperspectral_patches_are_crops_of_the_cube(tmp_path: Path):
    rng = np.random.default_rng(1)
    cubes = [rng.uniform(0, 1, size=(24, 20, 5)).astype(np.float32) for _ in range(3)]  # (H, W, bands)
    for i, c in enumerate(cubes):
        np.save(tmp_path / f"cube{i}.npy", c)
    dm = PriorDataModule("hyperspectral", str(tmp_path / "cube*.npy"),
                         reader={"band_axis": 2, "bands": [0, 2, 4], "intensity": "max"},
                         patch_size=(8, 8), repeats=4, val_repeats=4, flips=False, rot90=False, val_fraction=0.34,
                         batch_size=2)
    dm.setup("fit")
    assert len(dm.train_files) == 2 and len(dm.val_files) == 1
    assert len(dm.train_set) == 8 and len(dm.val_set) == 4
    x = dm.train_set[(3, 0)].numpy()
    assert x.shape == (3, 8, 8)
    cube = np.load(dm.train_items[3 % 2]["path"])
    ref = np.moveaxis(cube, 2, 0)[[0, 2, 4]]
    ref = ref / (float(ref.max()) / 2) - 1.0  # [0, max] -> [-1, 1]
    hits = [
        (t, s) for t in range(24 - 7) for s in range(20 - 7)
        if np.allclose(ref[:, t : t + 8, s : s + 8], x, rtol=0, atol=1e-6)  # float32 rounding of the map
    ]
    assert len(hits) == 1


def test_fields_use_training_statistics(tmp_path: Path):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(2)
    for i in range(3):
        ds = xr.Dataset(
            {
                "t": (("time", "level", "lat", "lon"), rng.normal(250 + 10 * i, 5, size=(4, 3, 8, 16))),
                "sp": (("time", "lat", "lon"), rng.normal(1e5, 100, size=(4, 8, 16))),
            },
            coords={"level": [500.0, 850.0, 1000.0], "time": np.arange(4)},
        )
        ds["sp"][0, 0, 0] = np.nan
        ds.to_netcdf(tmp_path / f"f{i}.nc")
    files = [str(tmp_path / f"f{i}.nc") for i in range(3)]
    dm = PriorDataModule("atmospheric", files[:2], val_paths=files[2:],
                         reader={"variables": ["t", "sp"], "levels": [500.0, 1000.0]}, batch_size=2)
    dm.setup("fit")
    assert dm.example_shape == (3, 8, 16)
    train = torch.stack([dm.train_set[(i, 0)] for i in range(len(dm.train_set))])
    assert train.shape == (8, 3, 8, 16)
    # standardised with the training files' statistics: mean 0, std std_scale (NaN filled with 0)
    torch.testing.assert_close(train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=2e-3, rtol=0)
    torch.testing.assert_close(train.std(dim=(0, 2, 3)), torch.full((3,), 0.5), atol=2e-3, rtol=0)
    val = torch.stack([dm.val_set[i] for i in range(len(dm.val_set))])
    assert float(val[:, 0].mean()) > 0.3  # the held-out file is warmer: not re-standardised on itself
    assert dm.domain()["reader"]["mean"][0] == pytest.approx(255.0, abs=1.0)
    assert dm.flips is False and dm.pad_value == 0.0  # the field reader's defaults: no flips, pad with the mean
    with pytest.raises(ValueError, match="lacks level"):
        PriorDataModule("atmospheric", files, reader={"variables": ["t"], "levels": [700.0]}).setup("fit")
    with pytest.raises(ValueError, match="data.reader.*variables must name at least one"):
        PriorDataModule("atmospheric", files, reader={"variables": []})


def test_disk_cache_round_trip(tmp_path: Path):
    files = write_volumes(tmp_path / "d", 2, shape=(8, 8, 3))
    kw = dict(val_fraction=0.0, batch_size=2, cache="disk", cache_dir=str(tmp_path / "cache"), flips=False)
    a = slices([str(f) for f in files], **kw)
    a.setup("fit")
    xs = [a.train_set[i] for i in range(len(a.train_set))]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 6
    b = slices([str(f) for f in files], **kw)
    b.setup("fit")
    for i, x in enumerate(xs):
        assert torch.equal(b.train_set[i], x)
    c = slices([str(f) for f in files], percentiles=(0.0, 100.0), **kw)  # other reader settings: new keys
    c.setup("fit")
    c.train_set[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 7


def test_slice_reader_reports_the_voxel_size(tmp_path: Path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((40, 20, 3), np.float32), np.diag([0.5, 1.0, 2.0, 1.0])),
             str(tmp_path / "v.nii.gz"))
    vol, size = MRSlices().read(str(tmp_path / "v.nii.gz"))
    assert vol.shape == (3, 1, 20, 40) and size == (2.0, 1.0, 0.5)  # (slice, row, column) mm
    _, size = CTSlices(pixel_spacing=1.0).read(str(tmp_path / "v.nii.gz"))
    assert size == (2.0, 1.0, 1.0)


def test_oblique_views_tilt_by_physical_angles(tmp_path: Path):
    # the same volume (value = -0.5 + 0.01 slice index inside a block) saved with 1 mm and 3 mm slices: the same
    # seeds draw the same angles, and a plane tilted by them crosses a third as many 3 mm slices
    import nibabel as nib

    vol = np.full((32, 32, 40), -1.0, dtype=np.float32)
    vol[4:28, 6:26, :] = -0.5 + 0.01 * np.arange(40, dtype=np.float32)
    spread = {}
    for thickness in (1.0, 3.0):
        path = tmp_path / f"t{thickness:g}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, thickness, 1.0])), str(path))
        dm = identity_slices(str(path), tilt=20.0, spin=10.0, flips=False, batch_size=4, val_fraction=0.0)
        dm.setup("fit")
        i20 = next(i for i, it in enumerate(dm.train_items) if it["index"] == 20)
        centre = torch.stack([dm.train_set[(i20, epoch)][0, 12:20, 12:20] for epoch in range(4)])
        spread[thickness] = centre.amax(dim=(1, 2)) - centre.amin(dim=(1, 2))  # z range seen, x 0.01
    assert bool((spread[1.0] > 0.01).all())  # really tilted (an untilted view would have spread 0)
    torch.testing.assert_close(spread[3.0], spread[1.0] / 3, rtol=1e-3, atol=1e-5)


def test_oblique_views_memory_map_their_volumes_from_the_disk_cache(tmp_path: Path):
    path = _slab_volume(tmp_path / "data")
    kw = dict(holdout=(18, 22), holdout_margin=2, flips=False, batch_size=4, tilt=20.0, spin=10.0)
    memory = identity_slices(str(path), **kw)
    memory.setup("fit")
    disk = identity_slices(str(path), cache="disk", cache_dir=str(tmp_path / "cache"), **kw)
    disk.setup("fit")
    keys = [(i, e) for e in range(3) for i in range(0, len(memory.train_items), 7)]
    for k in keys:  # the same views as from memory (bitwise: the same computation on the same voxels)
        torch.testing.assert_close(disk.train_set[k], memory.train_set[k], rtol=0, atol=0)
    cached = sorted(p.name.split(".")[-1] for p in (tmp_path / "cache" / "oblique").iterdir())
    assert cached == ["json", "npy"]  # one volume: its array and its record, no temp files left
    item = disk.train_items[0]
    assert isinstance(disk.train_set._load(item["path"], item["key"])[0], np.memmap)  # mapped, not held in RAM

    # a new run takes the volumes from the cache instead of reading the file again
    again = identity_slices(str(path), cache="disk", cache_dir=str(tmp_path / "cache"), **kw)
    again.setup("fit")

    def no_read(p):
        raise AssertionError(f"read {p} again")

    again.train_set.read = no_read
    for k in keys:
        torch.testing.assert_close(again.train_set[k], memory.train_set[k], rtol=0, atol=0)
