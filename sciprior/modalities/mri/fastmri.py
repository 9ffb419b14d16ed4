"""fastMRI-layout HDF5 files: reader and (atomic) writer.

Layout (Zbontar et al. 2018, arXiv:1811.08839; facebookresearch/fastMRI ``fastmri/data/mri_data.py``):

- ``kspace``: complex64, ``(slices, coils, H, W)`` multi-coil or ``(slices, H, W)`` single-coil,
  centred (DC at ``(H//2, W//2)``); ``H`` is the readout (ISMRMRD encoded ``x``), ``W`` the phase
  encoding (``y``), along which column masks act.
- ``reconstruction_rss`` (multi-coil) / ``reconstruction_esc`` (single-coil): float32
  ``(slices, rH, rW)``, the reference cropped to the recon matrix.
- ``ismrmrd_header``: ISMRMRD XML (namespace ``http://www.ismrm.org/ISMRMRD``); we read
  ``encoding/encodedSpace/matrixSize``, ``encoding/reconSpace/matrixSize`` (x, y, z) and
  ``encoding/encodingLimits/kspace_encoding_step_1`` (center, maximum) with ``xml.etree``.
- ``mask`` (test/challenge files): the sampled columns, ``(W,)``; we also accept ``(H, W)``.
- attributes: ``acquisition``, ``max``, ``norm``, ``patient_id`` (plus ``acceleration``,
  ``num_low_frequency`` in test files), all kept as a dict.

:func:`write_fastmri` writes the same layout (temp file in the target directory, then an atomic
rename), so simulated data and a user's fastMRI files go through the same reader.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from sciprior.io import atomic_write
from sciprior.io.limits import check_allocation

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
RECONSTRUCTION_KEYS = ("reconstruction_rss", "reconstruction_esc")


@dataclass
class FastMRIHeader:
    """What the ISMRMRD header says about the matrix sizes (each ``(x, y, z)``)."""

    encoded_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float] | None = None
    recon_fov_mm: tuple[float, float, float] | None = None
    encoding_limits_center: int | None = None
    encoding_limits_max: int | None = None
    xml: str = ""

    @property
    def padding(self) -> tuple[int, int] | None:
        """fastMRI's ``(padding_left, padding_right)`` of the sampled phase-encoding range, when known."""
        if self.encoding_limits_center is None or self.encoding_limits_max is None:
            return None
        left = self.encoded_size[1] // 2 - self.encoding_limits_center
        return left, left + self.encoding_limits_max + 1


@dataclass
class FastMRIVolume:
    """One fastMRI file (or a subset of its slices) in memory.

    ``kspace`` is complex64 ``(S, C, H, W)`` (single-coil files get ``C = 1``; ``multicoil`` records
    which it was). ``reconstruction`` holds ``reconstruction_rss``/``_esc`` when present, ``mask``
    the file's mask (``(W,)`` or ``(H, W)``) when present.
    """

    path: Path
    kspace: Tensor
    multicoil: bool
    header: FastMRIHeader
    attrs: dict[str, Any] = field(default_factory=dict)
    reconstruction: Tensor | None = None
    reconstruction_key: str | None = None
    mask: Tensor | None = None

    @property
    def num_slices(self) -> int:
        return int(self.kspace.shape[0])


# --------------------------------------------------------------------------------------------
# ISMRMRD header
# --------------------------------------------------------------------------------------------


def _find(root: ET.Element, path: Sequence[str]) -> ET.Element | None:
    query = "." + "".join(f"//{{{ISMRMRD_NS}}}{p}" for p in path)
    return root.find(query)


def parse_ismrmrd_header(xml: bytes | str, where: str = "ismrmrd_header") -> FastMRIHeader:
    """Parse the fields fastMRI uses from an ISMRMRD XML header (``xml.etree``)."""
    text = xml.decode("utf-8") if isinstance(xml, (bytes, bytearray, np.bytes_)) else str(xml)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"{where}: the ISMRMRD header is not valid XML ({exc})") from exc

    def size(space: str) -> tuple[int, int, int]:
        vals = []
        for ax in ("x", "y", "z"):
            el = _find(root, ["encoding", space, "matrixSize", ax])
            if el is None or el.text is None:
                raise ValueError(f"{where}: ISMRMRD header has no encoding/{space}/matrixSize/{ax}")
            vals.append(int(el.text))
        return tuple(vals)

    def fov(space: str) -> tuple[float, float, float] | None:
        vals = []
        for ax in ("x", "y", "z"):
            el = _find(root, ["encoding", space, "fieldOfView_mm", ax])
            if el is None or el.text is None:
                return None
            vals.append(float(el.text))
        return tuple(vals)

    def limit(name: str) -> int | None:
        el = _find(root, ["encoding", "encodingLimits", "kspace_encoding_step_1", name])
        return int(el.text) if el is not None and el.text is not None else None

    return FastMRIHeader(size("encodedSpace"), size("reconSpace"), fov("encodedSpace"), fov("reconSpace"),
                         limit("center"), limit("maximum"), text)


def make_ismrmrd_header(encoded_size: Sequence[int], recon_size: Sequence[int],
                        fov_mm: Sequence[float] | None = None) -> str:
    """A minimal ISMRMRD XML header with the fields fastMRI's loaders query.

    ``encoded_size``/``recon_size``: ``(x, y)`` or ``(x, y, z)`` (``x`` = k-space rows ``H``,
    ``y`` = columns ``W``). The phase-encoding limits say every column ``0..y-1`` was acquired.
    """
    enc = [int(v) for v in encoded_size] + [1] * (3 - len(encoded_size))
    rec = [int(v) for v in recon_size] + [1] * (3 - len(recon_size))
    fov = [float(v) for v in (fov_mm if fov_mm is not None else (enc[0], enc[1], 1.0))]
    rfov = [f * r / e for f, r, e in zip(fov, rec, enc)]  # same pixel spacing as the encoded matrix

    def space(tag: str, size: list[int], fv: list[float]) -> str:
        ms = "".join(f"<{a}>{v}</{a}>" for a, v in zip("xyz", size))
        fm = "".join(f"<{a}>{v:g}</{a}>" for a, v in zip("xyz", fv))
        return f"<{tag}><matrixSize>{ms}</matrixSize><fieldOfView_mm>{fm}</fieldOfView_mm></{tag}>"

    return (f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="{ISMRMRD_NS}"><encoding>'
            + space("encodedSpace", enc, fov) + space("reconSpace", rec, rfov)
            + "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum>"
            + f"<maximum>{enc[1] - 1}</maximum><center>{enc[1] // 2}</center>"
            + "</kspace_encoding_step_1></encodingLimits><trajectory>cartesian</trajectory>"
            + "</encoding></ismrmrdHeader>")


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_fastmri(path: str | os.PathLike, slices: int | slice | Sequence[int] | None = None) -> FastMRIVolume:
    """Read a fastMRI-layout HDF5 file (all slices, or the ``slices`` selection: an int, a slice, or
    a list of indices, read in increasing order).

    Raises FileNotFoundError / ValueError naming the file and the key or shape at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_fastmri: no such file {path}")
    try:
        hf = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"read_fastmri: {path} is not a readable HDF5 file ({exc})") from exc
    with hf:
        if "kspace" not in hf:
            raise ValueError(f"read_fastmri: {path} has no 'kspace' dataset (keys: {sorted(hf.keys())})")
        ds = hf["kspace"]
        if ds.ndim not in (3, 4):
            raise ValueError(f"read_fastmri: {path}: 'kspace' must be (slices, coils, H, W) or "
                             f"(slices, H, W), got shape {ds.shape}")
        if ds.dtype.kind != "c":
            raise ValueError(f"read_fastmri: {path}: 'kspace' must be complex, got dtype {ds.dtype}")
        n = ds.shape[0]
        sel = _slice_selection(slices, n, path)
        count = len(range(n)[sel]) if isinstance(sel, slice) else (1 if np.ndim(sel) == 0 else len(sel))
        check_allocation(count * int(np.prod(ds.shape[1:])) * 8,
                         f"the k-space of {str(path)!r} ({count} of {n} slices of {tuple(ds.shape[1:])}, complex64)",
                         "read_fastmri")
        kspace = np.asarray(ds[sel], dtype=np.complex64)
        if kspace.ndim == ds.ndim - 1:  # a single int slice
            kspace = kspace[None]
        multicoil = ds.ndim == 4
        if not multicoil:
            kspace = kspace[:, None]
        h, w = kspace.shape[-2:]
        if "ismrmrd_header" in hf:
            header = parse_ismrmrd_header(hf["ismrmrd_header"][()], where=f"{path}: ismrmrd_header")
        else:
            header = FastMRIHeader((h, w, 1), (h, w, 1))
        recon, recon_key = None, None
        for key in RECONSTRUCTION_KEYS:
            if key in hf:
                r = hf[key]
                if r.ndim != 3 or r.shape[0] != n:
                    raise ValueError(f"read_fastmri: {path}: '{key}' must be (slices={n}, H, W), "
                                     f"got {r.shape}")
                arr = np.asarray(r[sel], dtype=np.float32)
                recon, recon_key = torch.from_numpy(arr if arr.ndim == 3 else arr[None]), key
                break
        mask = None
        if "mask" in hf:
            m = np.asarray(hf["mask"][()])
            if not (m.shape == (w,) or m.shape == (h, w)):
                raise ValueError(f"read_fastmri: {path}: 'mask' of shape {m.shape} does not match k-space "
                                 f"(..., {h}, {w}); expected ({w},) or ({h}, {w})")
            mask = torch.from_numpy(m.astype(np.float32))
        attrs = {k: _attr_value(v) for k, v in hf.attrs.items()}
    kt = torch.from_numpy(kspace)
    if not torch.isfinite(torch.view_as_real(kt)).all():
        bad = int((~torch.isfinite(torch.view_as_real(kt))).any(-1).sum())
        raise ValueError(f"read_fastmri: {path}: 'kspace' contains {bad} NaN/Inf values")
    return FastMRIVolume(path, kt, multicoil, header, attrs, recon, recon_key, mask)


def _slice_selection(slices, n: int, path: Path):
    if slices is None:
        return slice(None)
    if isinstance(slices, slice):
        return slices
    if isinstance(slices, (int, np.integer)):
        if not -n <= int(slices) < n:
            raise ValueError(f"read_fastmri: {path} has {n} slices; slice {slices} is out of range")
        return int(slices) % n
    if any(not -n <= int(s) < n for s in slices):
        raise ValueError(f"read_fastmri: {path} has {n} slices; slices {list(slices)} are out of range")
    return sorted({int(s) % n for s in slices})  # h5py reads increasing, unique indices


def center_crop(image: Tensor, shape: Sequence[int]) -> Tensor:
    """Crop the last two axes of ``image`` to ``shape = (rH, rW)`` around the centre, as fastMRI does
    before comparing with ``reconstruction_rss`` (e.g. ``header.recon_size[:2]``)."""
    h, w = image.shape[-2:]
    rh, rw = int(shape[0]), int(shape[1])
    if rh > h or rw > w:
        raise ValueError(f"center_crop: crop {(rh, rw)} is larger than the image {(h, w)}")
    y0, x0 = (h - rh) // 2, (w - rw) // 2
    return image[..., y0:y0 + rh, x0:x0 + rw]


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _to_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


def write_fastmri(path: str | os.PathLike, kspace: Tensor | np.ndarray, *,
                  reconstruction_rss: Tensor | np.ndarray | None = None,
                  reconstruction_esc: Tensor | np.ndarray | None = None,
                  mask: Tensor | np.ndarray | None = None, attrs: Mapping[str, Any] | None = None,
                  ismrmrd_header: str | None = None, recon_size: Sequence[int] | None = None,
                  fov_mm: Sequence[float] | None = None) -> Path:
    """Write a fastMRI-layout HDF5 file atomically (temp file in the same directory, then rename).

    Args:
        kspace: complex ``(slices, coils, H, W)`` or ``(slices, H, W)``, stored as complex64.
        reconstruction_rss / reconstruction_esc: float ``(slices, rH, rW)`` references.
        mask: ``(W,)`` or ``(H, W)`` 0/1, stored as bool (fastMRI test files store ``(W,)``).
        attrs: file attributes; ``acquisition``, ``max``, ``norm``, ``patient_id`` get defaults
            (``"SIMULATED"``, the reconstruction's max and Frobenius norm, ``""``) when missing.
        ismrmrd_header: XML to store verbatim; by default one is made from the k-space size and
            ``recon_size`` (``(x, y)``, default the reconstruction's shape, else ``(H, W)``).
    Returns the final path.
    """
    path = Path(path)
    k = _to_numpy(kspace)
    if not np.iscomplexobj(k):
        raise ValueError(f"write_fastmri: {path}: kspace must be complex, got dtype {k.dtype}")
    if k.ndim not in (3, 4):
        raise ValueError(f"write_fastmri: {path}: kspace must be (slices, coils, H, W) or (slices, H, W), "
                         f"got shape {k.shape}")
    if not np.isfinite(k).all():
        bad = int((~np.isfinite(k)).sum())
        raise ValueError(f"write_fastmri: {path}: kspace contains {bad} NaN/Inf values")
    n, h, w = k.shape[0], k.shape[-2], k.shape[-1]
    recons = {}
    for key, r in (("reconstruction_rss", reconstruction_rss), ("reconstruction_esc", reconstruction_esc)):
        if r is None:
            continue
        r = _to_numpy(r).astype(np.float32)
        if r.ndim != 3 or r.shape[0] != n:
            raise ValueError(f"write_fastmri: {path}: {key} must be (slices={n}, H, W), got {r.shape}")
        recons[key] = r
    m = None
    if mask is not None:
        m = _to_numpy(mask)
        if m.ndim > 1 and m.shape != (h, w):
            m = m.squeeze()
        if not (m.shape == (w,) or m.shape == (h, w)):
            raise ValueError(f"write_fastmri: {path}: mask of shape {m.shape} does not match k-space "
                             f"(..., {h}, {w}); expected ({w},) or ({h}, {w})")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"write_fastmri: {path}: mask values must be 0 or 1")
        m = m.astype(bool)
    if ismrmrd_header is None:
        if recon_size is None:
            recon_size = next(iter(recons.values())).shape[1:] if recons else (h, w)
        ismrmrd_header = make_ismrmrd_header((h, w, 1), tuple(recon_size), fov_mm)
    else:
        parse_ismrmrd_header(ismrmrd_header, where=f"write_fastmri: {path}: ismrmrd_header")
    all_attrs = dict(attrs or {})
    ref = next(iter(recons.values())) if recons else None
    all_attrs.setdefault("acquisition", "SIMULATED")
    all_attrs.setdefault("patient_id", "")
    if ref is not None:
        all_attrs.setdefault("max", float(ref.max()))
        all_attrs.setdefault("norm", float(np.linalg.norm(ref)))

    path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as hf:
            hf.create_dataset("kspace", data=k.astype(np.complex64))
            for key, r in recons.items():
                hf.create_dataset(key, data=r)
            if m is not None:
                hf.create_dataset("mask", data=m)
            hf.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header.encode("utf-8")))
            for key, v in all_attrs.items():
                hf.attrs[key] = v

    atomic_write(path, write)
    return path
