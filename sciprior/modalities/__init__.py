"""The modality registry: a modality is one subpackage, found by name.

Each built-in modality is a folder ``sciprior/modalities/<name>/`` whose ``__init__`` defines ``MODALITY``, a
:class:`Modality`; :func:`names` lists the folders (nothing is imported) and :func:`get` imports only the one
asked for. Third-party modalities join through the entry-point group ``sciprior.modalities`` (an installed
package declares ``[project.entry-points."sciprior.modalities"] mymodality = "my_package:MODALITY"``), see
``docs/adding_a_modality.md``. Configs name modalities and their readers by these names, never by import path.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sciprior.modalities.adapter import ModalityAdapter

#: entry-point group of modalities installed by other packages
ENTRY_POINT_GROUP = "sciprior.modalities"


@dataclass(frozen=True)
class Modality:
    """What a modality provides (every part but the name is optional).

    Attributes:
        name: the registry name (the ``name`` of a config's ``modality`` section and of ``data.modality``).
        adapter: the :class:`~sciprior.modalities.adapter.ModalityAdapter` subclass of ``sciprior reconstruct``
            (raw file -> Problem -> output file); its ``__init__`` signature is the config schema.
        readers: training readers by name (``data.reader.name``; the first one is the default): classes whose
            keyword arguments are the ``data.reader`` settings and whose instances map a file path to
            ``(N, C, H, W)`` float32 examples in the prior's domain.
        samples: ``sample:NAME`` inputs: name -> function returning the path(s) of data shipped by an installed
            package (nothing is downloaded).
        prior: directory of the shipped prior (``builtin:<name>``), or None.
        prior_variants: directories of further shipped priors by variant name (``builtin:<name>/<variant>``).
        examples: module with the adjoint-test examples of the modality's operators (imported by the tests).
        description: one line for ``sciprior info``.
        legacy_class_paths: ``class_path`` spellings of old configs that mean this modality's adapter.
    """

    name: str
    adapter: type[ModalityAdapter] | None = None
    readers: Mapping[str, type] = field(default_factory=dict)
    samples: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    prior: Path | None = None
    prior_variants: Mapping[str, Path] = field(default_factory=dict)
    examples: str | None = None
    description: str = ""
    legacy_class_paths: tuple[str, ...] = ()

    def reader(self, name: str | None = None) -> type:
        """The training reader class called ``name`` (default: the first one); KeyError naming the choices."""
        if not self.readers:
            raise KeyError(f"modality {self.name!r} has no training reader")
        if name is None:
            return next(iter(self.readers.values()))
        if name not in self.readers:
            raise KeyError(f"modality {self.name!r} has no reader {name!r}; choose from {', '.join(self.readers)}")
        return self.readers[name]

    def reader_name(self, cls: type) -> str:
        """The registry name of the reader class ``cls``."""
        for key, value in self.readers.items():
            if value is cls:
                return key
        raise KeyError(f"{cls.__name__} is not a reader of modality {self.name!r}")


def _builtin_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg and not m.name.startswith("_"))


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every modality name: the built-in folders and the installed entry points (nothing is imported)."""
    return sorted(set(_builtin_names()) | set(_entry_points()))


@cache
def get(name: str) -> Modality:
    """The :class:`Modality` called ``name`` (imports only that modality); KeyError naming the choices."""
    if not isinstance(name, str) or not name:
        raise KeyError(f"a modality name is needed; choose from {', '.join(names())}")
    if name in _builtin_names():
        mod = importlib.import_module(f"{__name__}.{name}")
        found = getattr(mod, "MODALITY", None)
    elif name in (eps := _entry_points()):
        obj = eps[name].load()
        found = getattr(obj, "MODALITY", obj)
    else:
        raise KeyError(f"unknown modality {name!r}; choose from {', '.join(names())}")
    if not isinstance(found, Modality):
        raise TypeError(f"modality {name!r} does not define a Modality (got {type(found).__name__})")
    if found.name != name:
        raise ValueError(f"modality {name!r} is registered under that name but calls itself {found.name!r}")
    return found


def sample_table() -> dict[str, Callable[[], Any]]:
    """``sample:NAME`` -> path function, over every modality (imports them all; names must be unique)."""
    table: dict[str, Callable[[], Any]] = {}
    owner: dict[str, str] = {}
    for name in names():
        for sample, fn in get(name).samples.items():
            if sample in table:
                raise ValueError(f"sample:{sample} is defined by both modality {owner[sample]!r} and {name!r}")
            table[sample], owner[sample] = fn, name
    return table


def from_class_path(class_path: str) -> str | None:
    """The modality an old config's ``modality.class_path`` meant (its legacy spellings), or None. Nothing named
    by ``class_path`` is imported."""
    for name in names():
        if class_path in get(name).legacy_class_paths:
            return name
    return None


@dataclass(frozen=True)
class TrainedReader:
    """How a prior's training data were read: the modality, its reader's name and the reader's settings."""

    modality: str
    reader: str
    args: dict[str, Any]


def trained_reader(data: Mapping[str, Any] | None) -> TrainedReader | None:
    """The :class:`TrainedReader` recorded in a checkpoint's ``metadata.data`` (written by ``sciprior train``).

    Current checkpoints record ``modality`` and ``reader: {name, ...}``. Checkpoints of earlier versions recorded
    the reader's class and arguments (``reader: SliceReader``, ``reader_args: {...}``): each modality's readers
    recognise their own (``from_legacy``). None when the record says nothing usable.
    """
    if not isinstance(data, Mapping):
        return None
    reader = data.get("reader")
    if isinstance(data.get("modality"), str) and isinstance(reader, Mapping):
        args = {k: v for k, v in reader.items() if k != "name"}
        return TrainedReader(data["modality"], str(reader.get("name", "")), args)
    if isinstance(reader, str) and isinstance(data.get("reader_args"), Mapping):
        for name in names():
            mod = get(name)
            for key, cls in mod.readers.items():
                legacy = getattr(cls, "from_legacy", None)
                args = legacy(reader, dict(data["reader_args"])) if legacy is not None else None
                if args is not None:
                    return TrainedReader(name, key, args)
    return None


def from_legacy_data_section(section: Mapping[str, Any]) -> dict[str, Any] | None:
    """The current ``data`` section of an earlier version's training config
    (``data: {class_path: ...<DataModule>, init_args: {...}}``): ``{modality, reader: {name, ...}, ...}`` from the
    reader that recognises it (its ``legacy_data_module``, ``legacy_args`` and ``from_legacy``), or None. Nothing
    named by ``class_path`` is imported."""
    if not isinstance(section, Mapping) or "class_path" not in section:
        return None
    module = str(section["class_path"]).rsplit(".", 1)[-1]
    args = dict(section.get("init_args") or {})
    for name in names():
        mod = get(name)
        for key, cls in mod.readers.items():
            if getattr(cls, "legacy_data_module", None) != module:
                continue
            old = {k: args[k] for k in cls.legacy_args if k in args}
            new = cls.from_legacy(cls.legacy_reader, old)
            if new is not None:
                rest = {k: v for k, v in args.items() if k not in cls.legacy_args}
                return {"modality": name, "reader": {"name": key, **new}, **rest}
    return None


__all__ = ["ENTRY_POINT_GROUP", "Modality", "TrainedReader", "from_class_path", "from_legacy_data_section", "get",
           "names", "sample_table", "trained_reader"]
