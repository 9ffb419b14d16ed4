"""Where inputs come from: files, DICOM directories, globs, ``sample:NAME`` and ``pkg:DIST/path``, and what
kind of file each is (recognised by content, not by name).

- :func:`resolve_input` (``sciprior reconstruct``): one input -> ``(kind, paths)``;
- :func:`resolve_paths` (training sets): a path, glob, ``sample:NAME``, ``pkg:DIST/path`` or a list -> paths;
- :func:`file_kind`: ``nifti`` (NIfTI-1/2, plain or gzipped), ``dicom``, ``hdf5`` (also MATLAB v7.3), ``npy``
  (NumPy), ``netcdf`` (NetCDF-3; NetCDF-4 files are HDF5), ``png``, ``jpeg``, ``tiff``, from the first bytes of
  the file.

Samples are named, never imported by path: the caller passes the table ``name -> function returning the
path(s)`` (the modality registry builds it from every modality's bundled samples; the files ship inside
installed packages, nothing is downloaded). Errors name the config key and the path.
"""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: ``name -> function returning the sample's path or paths``, or a function building that table on demand
SampleTable = Mapping[str, Callable[[], "str | os.PathLike | Sequence[str | os.PathLike]"]]
Samples = SampleTable | Callable[[], SampleTable] | None

KINDS = ("nifti", "dicom", "hdf5", "npy", "netcdf", "png", "jpeg", "tiff")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048)


class InputError(ValueError):
    """A problem with an input file or sample (the message names the file and the config key)."""


# ---------------------------------------------------------------------------------------------
# samples and package files
# ---------------------------------------------------------------------------------------------
def sample_paths(name: str, key: str = "input", samples: Samples = None) -> list[Path]:
    """Paths of the bundled sample ``name`` (``sample:NAME``); FileNotFoundError naming ``key`` if unknown."""
    table = samples() if callable(samples) else (samples or {})
    if name not in table:
        known = ", ".join(f"sample:{k}" for k in sorted(table)) or "none"
        raise FileNotFoundError(f"{key}: unknown sample 'sample:{name}'; known samples: {known}")
    try:
        out = table[name]()
    except (ImportError, AttributeError, FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(f"{key}: sample 'sample:{name}' is not available ({e})") from e
    paths = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    return [Path(p) for p in paths]


def package_path(spec: str, key: str) -> Path:
    """``DIST/relative/path`` (the part after ``pkg:``): a file shipped inside the installed distribution DIST (as
    listed by ``importlib.metadata``; nothing is downloaded)."""
    from importlib import metadata

    dist_name, _, rel = spec.partition("/")
    if not dist_name or not rel:
        raise FileNotFoundError(f"{key}: 'pkg:{spec}' must be pkg:DISTRIBUTION/path/inside/it")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"{key}: 'pkg:{spec}': the package {dist_name!r} is not installed") from e
    return Path(str(dist.locate_file(rel)))


# ---------------------------------------------------------------------------------------------
# file kinds
# ---------------------------------------------------------------------------------------------
def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def sniff(path: str | os.PathLike) -> str | None:
    """The kind of one regular file from its content (:data:`KINDS`), or None when it is none of them."""
    path = Path(path)
    head = _head(path)
    if head[128:132] == b"DICM":  # first: a DICOM preamble may itself hold a TIFF header (dual-format files)
        return "dicom"
    if any(head[o:o + 8] == _HDF5_SIGNATURE for o in _HDF5_OFFSETS):
        return "hdf5"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:4] in (b"CDF\x01", b"CDF\x02", b"CDF\x05"):
        return "netcdf"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"\x1f\x8b":  # gzip: a .nii.gz is a gzipped header + data
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(544)
        except (OSError, EOFError):
            return None
        return "nifti" if _is_nifti_header(inner) else None
    if _is_nifti_header(head):
        return "nifti"
    if path.suffix.lower() == ".dcm":  # DICOM without the 128-byte preamble (allowed by the standard for media)
        return "dicom"
    return None


_SUFFIX_KINDS = {".nii": ("NIfTI", 348), ".nii.gz": ("gzipped NIfTI", 18), ".h5": ("HDF5", 8), ".hdf5": ("HDF5", 8),
                 ".npy": ("NumPy", 10), ".nc": ("NetCDF", 4), ".png": ("PNG", 8)}


def _named_like(path: Path) -> str:
    """For a file whose name promises a kind its content does not have: its size and what that kind needs."""
    name = path.name.lower()
    for suffix, (kind, header) in _SUFFIX_KINDS.items():
        if name.endswith(suffix):
            size = path.stat().st_size
            if size == 0:
                return f" (the file is empty although named as {kind})"
            if size < header:
                return (f" (it is named as {kind} but holds only {size} bytes, less than a {kind} header of {header} "
                        "bytes: truncated?)")
            return f" (it is named as {kind} but is not: damaged, truncated or misnamed?)"
    return ""


def file_kind(paths: Sequence[Path], key: str = "input") -> str:
    """The kind of an input (one file, or the files of a DICOM series), recognised by content."""
    first = Path(paths[0])
    kind = sniff(first)
    if kind is None:
        raise InputError(f"{key}: cannot tell what {str(first)!r} is: its content is none of NIfTI, DICOM, HDF5, "
                         f"NumPy .npy, NetCDF, PNG, JPEG or TIFF{_named_like(first)}")
    if len(paths) > 1 and kind != "dicom":
        raise InputError(f"{key}: expected one {kind} file, got {len(paths)} files")
    return kind


def _check_regular(p: Path, key: str) -> None:
    if not p.exists():
        raise FileNotFoundError(f"{key}: no such file or directory: {str(p)!r}")
    if not (p.is_file() or p.is_dir()):
        raise InputError(f"{key}: {str(p)!r} is not a regular file or directory (a FIFO or device cannot be read)")


def resolve_input(spec: str, key: str = "input", samples: Samples = None) -> tuple[str, list[Path]]:
    """``(kind, paths)`` of an input: ``sample:NAME``, a file, or a directory (of DICOM files).

    Raises FileNotFoundError naming ``key`` and the path when it does not exist, InputError when its kind
    cannot be recognised.
    """
    s = os.path.expanduser(str(spec))
    if s.startswith("sample:"):
        paths = sample_paths(s[len("sample:"):], key, samples)
    else:
        p = Path(s)
        _check_regular(p, key)
        if p.is_dir():
            paths = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not paths:
                raise InputError(f"{key}: directory {str(p)!r} contains no files")
        else:
            paths = [p]
    return file_kind(paths, key), paths


def resolve_paths(paths: str | Sequence[str], key: str = "paths", samples: Samples = None) -> list[Path]:
    """Expand a path, a glob pattern, ``sample:NAME``, ``pkg:DIST/path`` or a list of them into a list of paths
    (globs sorted; duplicates dropped).

    Raises ``FileNotFoundError`` naming ``key`` and the first path that does not exist or matches nothing.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError(f"{key}: the list of paths is empty")
    out: list[Path] = []
    for item in items:
        s = os.path.expanduser(str(item))
        if s.startswith("sample:"):
            found = sample_paths(s[len("sample:"):], key, samples)
        elif s.startswith("pkg:"):
            found = [package_path(s[len("pkg:"):], key)]
        elif glob.has_magic(s):
            found = [Path(p) for p in sorted(glob.glob(s, recursive=True))]
            if not found:
                raise FileNotFoundError(f"{key}: the pattern {s!r} matches no file")
        else:
            found = [Path(s)]
        for p in found:
            _check_regular(p, key)
        out.extend(found)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


__all__ = ["InputError", "KINDS", "SampleTable", "Samples", "file_kind", "package_path", "resolve_input",
           "resolve_paths", "sample_paths", "sniff"]
