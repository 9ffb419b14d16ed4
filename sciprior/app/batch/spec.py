"""What the batch engine hands a per-input processor and what it gets back (picklable, no tensors in specs)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sciprior.io.atomic import FileContent

Scalar = float | int | str | bool | None


class BatchConfigError(ValueError):
    """A batch config that cannot run; raised before any item is processed. The message names the key (and
    file) at fault; ``key`` is that key (``process_item``, ``process_kwargs.config``, ``output_dir``, ...)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------------------
# the job description


@dataclass(frozen=True)
class ItemSpec:
    """One input of a batch, as ``process_item`` receives it (picklable, no tensors).

    Attributes:
        index: position in the run's full (sorted) input list.
        name: unique key of the input; output files are ``<output_dir>/<name><suffix>``.
        path: absolute path of the input file (or directory, e.g. a DICOM series).
        seed: ``item_seed(name, base_seed)``: seed ALL randomness of this item from it.
        output_dir: absolute output directory.
        params: extra manifest columns for this item (strings), e.g. a per-item acceleration.
        rank: global rank of the process running the item; world_size: number of processes.
        device: the device this process runs on (``"cpu"``, ``"cuda:1"``, ...): put tensors there.
        scratch_dir: an empty private directory (hidden, inside ``output_dir``). Whatever
            ``process_item`` writes there is committed as the directory ``<output_dir>/<name>/`` by one
            atomic rename after the item succeeds (for runners that write several files into an output
            directory, e.g. ``reconstruct``); it is deleted if the item fails.
    """

    index: int
    name: str
    path: str
    seed: int
    output_dir: str
    params: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    scratch_dir: str = ""

    def output_path(self, suffix: str) -> Path:
        """Final path of the output with ``suffix`` (e.g. ``".nii.gz"``, ``"_std.npy"``)."""
        return Path(self.output_dir) / f"{self.name}{suffix}"

    def generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A fresh ``torch.Generator`` seeded with :attr:`seed`."""
        return torch.Generator(device=device).manual_seed(self.seed)


@dataclass
class ItemOutput:
    """What ``process_item`` returns for one input.

    Attributes:
        arrays: ``suffix -> array`` (numpy array or tensor), written as ``<name><suffix>.npy``:
            ``{"": x}`` gives ``case1.npy``, ``{"_std": s}`` gives ``case1_std.npy``.
        files: ``suffix -> content`` written as ``<name><suffix>``; content is ``bytes``, ``str``
            (UTF-8) or a writer ``f(path)`` that creates exactly ``path`` (it gets a temp path with the
            same suffix, so format detection by extension works): ``{".nii.gz": lambda p: nib.save(img, p)}``.
        metrics: scalars for the summary (floats, ints, strings, bools; 1-element tensors are converted).
    """

    arrays: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, FileContent] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


ProcessItem = Callable[[ItemSpec], ItemOutput]


def input_problem(path: str) -> str | None:
    """Why ``path`` cannot be an input (it is missing, a FIFO, a socket or a device: reading those may block
    forever or never end), or None for a regular file or a directory. Only ``stat``-s it, never opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"input {path!r} cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "not a regular file")
    return f"input {path!r} is {kind}, not a regular file or directory; it is not read"


def item_seed(name: str, base_seed: int = 0) -> int:
    """``(base_seed + blake2b-64(name)) mod 2**63``: stable across processes, machines and Python runs
    (unlike ``hash()``), independent of rank, batch position and device count."""
    h = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")
    return (int(base_seed) + h) % (2**63)


__all__ = ["BatchConfigError", "FileContent", "ItemOutput", "ItemSpec", "ProcessItem", "Scalar", "input_problem",
           "item_seed"]
