"""The inputs of a batch: globs, manifests and lists of paths -> item specs with stable names and seeds (the
processor a config names is looked up in :mod:`sciprior.app.batch.registry`)."""

from __future__ import annotations

import csv
import glob as globlib
import os
from collections.abc import Sequence
from pathlib import Path, PurePath

from sciprior.app.batch.spec import ItemSpec, item_seed

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")
_PATH_COLUMNS = ("path", "input", "file")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def _strip_ext(fname: str) -> str:
    p = PurePath(fname)
    if p.suffix.lower() in _COMPRESSION and len(p.suffixes) >= 2:
        return p.name[: -len("".join(p.suffixes[-2:]))]
    return p.stem if p.suffix else p.name


def _check_name(name: str, where: str) -> str:
    bad = not name or name.startswith(".") or any(c in name for c in "/\\\0\n\r\t") or name in (".", "..")
    if bad:
        raise ValueError(f"inputs: {where}: item name {name!r} cannot be used as a file name "
                         "(empty, starts with '.', or contains a path separator or control character)")
    return name


def _default_names(paths: Sequence[str]) -> list[str]:
    """File names without extension; on clashes, paths relative to the common parent joined by ``__``."""
    names = [_strip_ext(os.path.basename(os.path.normpath(p))) for p in paths]
    if len(set(names)) == len(names):
        return names
    root = os.path.commonpath([os.path.dirname(os.path.normpath(p)) for p in paths])
    names = []
    for p in paths:
        rel = os.path.relpath(os.path.normpath(p), root)
        head, tail = os.path.split(rel)
        names.append("__".join([*PurePath(head).parts, _strip_ext(tail)]))
    seen: dict[str, str] = {}
    for n, p in zip(names, paths):
        if n in seen:
            raise ValueError(f"inputs: {seen[n]} and {p} both get the name {n!r}; give the items "
                             "explicit names with a CSV manifest (columns `path`, `name`)")
        seen[n] = p
    return names


def _read_manifest(path: Path) -> tuple[list[str], list[str | None], list[dict[str, str]]]:
    """Paths (absolute), names (or None) and extra columns of a manifest; see :func:`resolve_inputs`."""
    if not path.exists():
        raise FileNotFoundError(f"inputs: manifest {path} does not exist")
    if not path.is_file():
        raise ValueError(f"inputs: manifest {path} is not a regular file")
    try:
        return _parse_manifest(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"inputs: manifest {path} cannot be read as UTF-8 text / CSV: {e}") from e


def _parse_manifest(path: Path) -> tuple[list[str], list[str | None], list[dict[str, str]]]:
    base = path.parent
    paths: list[str] = []
    names: list[str | None] = []
    params: list[dict[str, str]] = []
    lines: list[int] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            cols = [c.strip() for c in (reader.fieldnames or [])]
            key = next((c for c in _PATH_COLUMNS if c in cols), None)
            if key is None:
                raise ValueError(f"inputs: manifest {path} needs a column named one of "
                                 f"{_PATH_COLUMNS}; its header is {cols}")
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row.get(key):
                    continue
                paths.append(row[key])
                names.append(row.get("name") or None)
                params.append({k: v for k, v in row.items() if k not in (key, "name") and k})
                lines.append(reader.line_num)
    else:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            paths.append(line)
            names.append(None)
            params.append({})
            lines.append(i)
    if not paths:
        raise ValueError(f"inputs: manifest {path} lists no inputs")
    resolved = [os.path.abspath(os.path.join(base, os.path.expanduser(p))) for p in paths]
    missing = [f"line {ln}: {p}" for ln, p in zip(lines, resolved) if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"inputs: manifest {path} lists {len(missing)} missing input(s): "
                                + "; ".join(missing[:5]) + more)
    return resolved, names, params


def _expand(pattern: str) -> list[str]:
    if not pattern.strip():
        raise ValueError("inputs: an empty path; give a glob, a manifest or a list of paths")
    pattern = os.path.expanduser(pattern)
    if globlib.has_magic(pattern):
        found = sorted(os.path.abspath(p) for p in globlib.glob(pattern, recursive=True))
        if not found:
            raise FileNotFoundError(f"inputs: the glob {pattern!r} matched no files")
        return found
    if not os.path.exists(pattern):
        raise FileNotFoundError(f"inputs: {pattern} does not exist")
    return [os.path.abspath(pattern)]


def resolve_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                   base_seed: int = 0) -> list[ItemSpec]:
    """The run's items, in a deterministic order.

    ``inputs`` is one of
    - a glob string (``"data/**/*.nii.gz"``, recursive ``**`` allowed), sorted;
    - a manifest path ending in ``.csv``/``.tsv`` (header with a ``path`` column, alias ``input`` or
      ``file``; optional ``name``; other columns become ``spec.params``) or ``.txt``/``.lst`` (one path a
      line, ``#`` comments); relative paths are relative to the manifest's directory; manifest order;
    - a single existing file or directory, or a list of paths / globs (list order).
    Names default to the file name without extension (``scan.nii.gz`` -> ``scan``), or the path relative
    to the inputs' common parent joined by ``__`` when file names clash.

    Raises:
        FileNotFoundError: naming the manifest / glob / path that is missing or matches nothing.
        ValueError: an empty manifest, duplicate inputs or names.
    """
    names: list[str | None]
    if isinstance(inputs, (str, os.PathLike)):
        s = os.fspath(inputs)
        if not globlib.has_magic(s) and PurePath(s).suffix.lower() in MANIFEST_SUFFIXES:
            paths, names, params = _read_manifest(Path(s).expanduser())
        else:
            paths = _expand(s)
            names, params = [None] * len(paths), [{} for _ in paths]
    else:
        if len(inputs) == 0:
            raise ValueError("inputs: the list of inputs is empty")
        paths = [p for item in inputs for p in _expand(os.fspath(item))]
        names, params = [None] * len(paths), [{} for _ in paths]
    dup = sorted({p for p in paths if paths.count(p) > 1}) if len(set(paths)) != len(paths) else []
    if dup:
        raise ValueError(f"inputs: listed more than once: {dup[:5]}")
    if all(n is None for n in names):
        final = _default_names(paths)
    else:
        defaults = _default_names(paths)
        final = [n if n is not None else d for n, d in zip(names, defaults)]
    final = [_check_name(n, p) for n, p in zip(final, paths)]
    if len(set(final)) != len(final):
        clash = sorted({n for n in final if final.count(n) > 1})
        raise ValueError(f"inputs: item names are not unique: {clash[:5]}")
    out = os.path.abspath(os.fspath(output_dir))
    return [ItemSpec(i, n, p, item_seed(n, base_seed), out, dict(prm))
            for i, (n, p, prm) in enumerate(zip(final, paths, params))]


__all__ = ["MANIFEST_SUFFIXES", "resolve_inputs"]
