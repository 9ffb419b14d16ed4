"""NIfTI files (nibabel): the one reader and the one writer.

:func:`read_nifti` returns the image as an LPS :class:`~sciprior.io.grid.VolumeGrid` (voxel axes Left,
Posterior, Superior; the affine kept), for training readers and reconstruction adapters alike;
:func:`nifti_shape` reads only the header. :func:`write_nifti` writes float32 NIfTI-1 with the affine in
both sform and qform (scanner coordinates), atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from sciprior.io.atomic import atomic_write
from sciprior.io.grid import VolumeGrid, lps_shape_from_file
from sciprior.io.paths import InputError


def _load(path: Path, key: str):
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types; name the file
        raise InputError(f"{key}: cannot read NIfTI file {str(path)!r}: {e}") from e


def read_nifti(path: str | os.PathLike, key: str = "input") -> VolumeGrid:
    """A NIfTI image (2D or 3D; a 4D file must have one volume) as an LPS :class:`VolumeGrid` (float32,
    ``scl_slope``/``scl_inter`` applied)."""
    path = Path(path)
    img = _load(path, key)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated data, bad compression, ...
        raise InputError(f"{key}: cannot read the data of NIfTI file {str(path)!r}: {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{key}: {str(path)!r} has shape {data.shape}; expected a 2D or 3D image")
    if data.size == 0:
        raise InputError(f"{key}: {str(path)!r} has shape {data.shape}: an empty axis")
    if not np.isfinite(data).all():
        raise InputError(f"{key}: {str(path)!r} contains {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    affine = img.affine if img.affine is not None else np.eye(4)
    return VolumeGrid.from_array(data, affine, header=img.header,
                                 meta={"source": "nifti", "file": str(path),
                                       "file_axcodes": "".join(nib.aff2axcodes(affine))})


def nifti_shape(path: str | os.PathLike, key: str = "input") -> tuple[int, int, int]:
    """``(X, Y, Z)`` of a NIfTI file in LPS voxel order, from its header only (a 2D file has ``Z = 1``)."""
    img = _load(Path(path), key)
    full = tuple(int(s) for s in img.shape)
    if len(full) not in (2, 3) and not (len(full) == 4 and full[3] == 1):
        raise InputError(f"{key}: {str(path)!r} has shape {full}; expected a 2D or 3D image")
    if min(full) < 1:
        raise InputError(f"{key}: {str(path)!r} has shape {full}: an empty axis")
    _check_data_length(Path(path), img, full, key)
    shape = tuple(full[:3]) + (1,) * max(0, 3 - len(full))
    return lps_shape_from_file(shape, img.affine if img.affine is not None else np.eye(4))


def _check_data_length(path: Path, img: Any, shape: tuple[int, ...], key: str) -> None:
    """An uncompressed .nii shorter than its header's vox_offset + shape x dtype (a truncated file) is refused from
    its size alone; a gzipped file is checked when its data are read."""
    if path.name.lower().endswith(".gz") or not hasattr(img, "dataobj") or not hasattr(img.dataobj, "offset"):
        return
    needed = int(img.dataobj.offset) + int(np.prod(shape)) * np.dtype(img.get_data_dtype()).itemsize
    size = path.stat().st_size
    if size < needed:
        raise InputError(f"{key}: the NIfTI file {str(path)!r} is {size} bytes long but its header declares "
                         f"{'x'.join(map(str, shape))} {np.dtype(img.get_data_dtype())} voxels after byte "
                         f"{int(img.dataobj.offset)} ({needed} bytes): the file is truncated")


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
                header: Any | None = None, description: str = "") -> Path:
    """Write ``data`` as NIfTI-1 (float32) with ``affine`` in both sform and qform, atomically.

    With the input's ``header`` its sform/qform codes are kept (an image in MNI space stays in MNI space); else,
    or where a code is 0, the affine is scanner coordinates (code 1)."""
    arr = np.asarray(data, dtype=np.float32)
    hdr = header.copy() if header is not None else None
    codes = [int(header[k]) if header is not None and k in header else 0 for k in ("sform_code", "qform_code")]
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(np.float32)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.set_sform(np.asarray(affine, dtype=np.float64), code=codes[0] or 1)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=codes[1] or 1)
    if description:
        img.header["descrip"] = description[:79].encode("ascii", "replace")
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


__all__ = ["nifti_shape", "read_nifti", "write_nifti"]
