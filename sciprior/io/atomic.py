"""Atomic file output: the one writer every output goes through (reports, NIfTI, HDF5, checkpoints, batch
records, benchmark tables).

A file is first written to a hidden temp file ``.tmp-<token>-<name>`` in the target directory (plus
``.part`` when the content is given in memory, so an in-flight file never looks like an output), then
renamed into place: readers see the old file or the whole new one, a killed job leaves at most a
``.tmp-*`` file (which :func:`remove_stale` deletes), and on error the temp file is removed. Results get
the usual ``0666 & ~umask`` permissions. ``fsync=True`` also flushes the file and its directory to disk
before and after the rename (the batch engine's commit protocol needs that across machines).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"  #: prefix of in-flight files and directories; never a final output

#: what can be written: bytes, a UTF-8 string, or a writer ``f(path)`` that creates exactly ``path`` (it gets a
#: temp path ending in the final name, so format detection by extension works)
FileContent = bytes | str | Callable[[Path], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh hidden temp path next to ``path``: ``.tmp-<token>-<name><suffix>``."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}-{path.name}{suffix}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry to disk (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, content: FileContent, *, fsync: bool = False) -> Path:
    """Write ``content`` to ``path`` atomically (see the module docstring); returns ``path``.

    ``content``: bytes, a str (UTF-8) or a writer ``f(temp_path)``. The parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    in_memory = isinstance(content, (bytes, bytearray, memoryview, str))
    tmp = temp_name(path, ".part" if in_memory else "")
    try:
        if in_memory:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            with open(tmp, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        elif callable(content):
            content(tmp)
            if not tmp.is_file():
                raise FileNotFoundError(f"the writer for {path.name} did not create the file it was given ({tmp})")
            if fsync:
                _fsync_file(tmp)
        else:
            raise TypeError(f"cannot write a {type(content).__name__} to {path.name}: "
                            "expected bytes, str or a writer function f(path)")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        for q in path.parent.glob(f"{tmp.name}*"):  # also what a writer created under a changed name
            q.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, text)


def remove(path: str | os.PathLike) -> None:
    """Delete a file or a directory tree (missing is fine)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit_dir(scratch: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the filled directory ``scratch`` to ``target`` with one rename (its files fsynced first); an
    existing ``target`` is moved aside first and deleted after, so ``target`` is always whole."""
    scratch, target = Path(scratch), Path(target)
    for root, _, files in os.walk(scratch):
        for f in files:
            _fsync_file(Path(root, f))
        fsync_dir(root)
    old = None
    if target.exists():
        old = temp_name(target, ".old")
        os.replace(target, old)
    os.replace(scratch, target)
    fsync_dir(target.parent)
    if old is not None:
        remove(old)


def remove_stale(directory: str | os.PathLike) -> int:
    """Delete the in-flight ``.tmp-*`` files and directories an interrupted run left in ``directory``;
    returns how many."""
    directory = Path(directory)
    n = 0
    if directory.is_dir():
        for p in directory.glob(f"{TMP_PREFIX}*"):
            remove(p)
            n += 1
    return n


__all__ = ["FileContent", "TMP_PREFIX", "atomic_write", "commit_dir", "fsync_dir", "remove", "remove_stale",
           "temp_name", "write_text_atomic"]
