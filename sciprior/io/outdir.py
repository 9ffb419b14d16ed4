"""Output directories written as a whole: checked before any compute, filled in a staging directory, committed
by one rename.

A run (``sciprior reconstruct``) that writes several files into ``output_dir``:

1. :func:`check_output_dir` before any compute (creates nothing): the path is not empty, no component is longer
   than the file system allows, the first existing ancestor is a writable directory (not a regular file), and
   ``output_dir`` itself is missing, empty, or the output of an earlier run (its manifest lists every file in
   it). An earlier run's directory is replaced only with ``overwrite``; a directory holding anything else is
   never replaced (sciprior deletes only what it wrote).
2. :class:`StagedOutput`: the files go to a hidden sibling ``.tmp-<token>-<name>.d``; :meth:`StagedOutput.commit`
   writes the manifest ``.sciprior-run.json`` (every file of the run) and renames the staging directory onto
   ``output_dir`` (an earlier run's directory is moved aside first and deleted after), so ``output_dir`` holds
   either the old run or the whole new one, never a mix. On an error the staging directory (and any parent
   directory the run created) is removed: nothing is left behind.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sciprior.io.atomic import TMP_PREFIX, commit_dir, remove, temp_name

MANIFEST = ".sciprior-run.json"


class OutputDirError(ValueError):
    """An output directory that cannot be used; the message names the config key and the path."""


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - platforms without pathconf
        return 255


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _first_existing(path: Path) -> Path:
    p = path
    while not _exists(p) and p != p.parent:
        p = p.parent
    return p


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of an earlier run in ``directory`` if every entry of the directory is listed in it."""
    d = Path(directory)
    try:
        data = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return None
    present = {p.name for p in d.iterdir()}
    return data if present <= {*map(str, files), MANIFEST} else None


def check_writable_dir(path: str | os.PathLike, key: str) -> bool:
    """Refuse a directory path that cannot be created or written, without creating anything: an empty path, a name
    longer than the file system allows, a path under a regular file, no write permission. Returns whether the
    directory exists already."""
    s = os.fspath(path)
    if not s.strip():
        raise OutputDirError(f"{key}: is empty; give a directory for the outputs")
    p = Path(os.path.expanduser(s))
    base = _first_existing(p.absolute())
    limit = _name_max(base if base.is_dir() else base.parent)
    for part in p.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputDirError(f"{key}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; this file "
                                 f"system allows {limit}")
    if not base.is_dir():
        raise OutputDirError(f"{key}: {s!r} cannot be created: {str(base)!r} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputDirError(f"{key}: {s!r} cannot be written: no write permission in {str(base)!r}")
    return base == p.absolute()


def check_output_dir(path: str | os.PathLike | None, key: str = "output_dir", overwrite: bool = False) -> None:
    """Refuse an output directory that a run could not write or must not replace (see the module docstring)."""
    if path is None:
        return
    if not check_writable_dir(path, key):
        return  # the directory does not exist yet
    s = os.fspath(path)
    p = Path(os.path.expanduser(s))
    entries = sorted(q.name for q in p.iterdir())
    if not entries:
        return
    previous = read_manifest(p)
    if previous is None:
        listed = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputDirError(f"{key}: {s!r} already holds files that no sciprior run wrote ({listed}); sciprior "
                             "replaces only its own output directories: choose a new or empty directory")
    if not overwrite:
        when = previous.get("created", "an earlier run")
        raise OutputDirError(f"{key}: {s!r} holds the results of another run ({when}); set overwrite: true "
                             "(--overwrite true) to replace them, or choose another output_dir")


class StagedOutput:
    """Write a run's files into a staging directory and commit them to ``target`` as a whole.

    Use as a context manager; :attr:`path` is where to write; :meth:`commit` (inside the block) publishes it.
    Leaving the block without a commit, or with an exception, removes everything the run created.
    """

    def __init__(self, target: str | os.PathLike, key: str = "output_dir", overwrite: bool = False):
        self.target = Path(os.path.expanduser(os.fspath(target)))
        self.key, self.overwrite = key, overwrite
        self.path: Path | None = None
        self._created: list[Path] = []
        self.committed = False

    def __enter__(self) -> StagedOutput:
        check_output_dir(self.target, self.key, self.overwrite)
        parent = self.target.absolute().parent
        missing = []
        p = parent
        while not _exists(p):
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self._created.append(d)
            self.path = temp_name(self.target.absolute(), ".d")
            self.path.mkdir()
        except OSError as e:
            self._cleanup()
            raise OutputDirError(f"{self.key}: cannot create {str(self.target)!r}: {e.strerror or e}") from e
        return self

    def final(self, written: Path) -> Path:
        """Where the staged file ``written`` ends up after the commit."""
        assert self.path is not None
        return self.target / Path(written).relative_to(self.path)

    def commit(self, extra: dict[str, Any] | None = None) -> list[Path]:
        """Write the manifest (every file of the run) and rename the staging directory onto the target; returns
        the final paths of the files."""
        assert self.path is not None, "StagedOutput.commit outside its with-block"
        names = sorted(str(q.relative_to(self.path)) for q in self.path.iterdir() if q.name != MANIFEST)
        manifest = {"files": [*names, MANIFEST], "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **(extra or {})}
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        check_output_dir(self.target, self.key, self.overwrite)  # nothing else wrote there meanwhile
        commit_dir(self.path, self.target)
        self.committed = True
        return [self.target / n for n in names]

    def _cleanup(self) -> None:
        if self.path is not None and self.path.exists():
            remove(self.path)
        for d in reversed(self._created):  # parents this run created, deepest first, if still empty
            try:
                d.rmdir()
            except OSError:
                break

    def __exit__(self, *exc: Any) -> None:
        if not self.committed:
            self._cleanup()


def planned_names(names: list[str]) -> list[str]:
    """The file list a committed run's manifest will hold for the files ``names`` (sorted, plus the manifest)."""
    return [*sorted(n for n in names if not n.startswith(TMP_PREFIX)), MANIFEST]


__all__ = ["MANIFEST", "OutputDirError", "StagedOutput", "check_output_dir", "check_writable_dir", "planned_names",
           "read_manifest"]
