"""The per-input processors a batch may name: ``reconstruct`` and the entry-point group ``sciprior.processors``.

A batch config's ``process_item`` (and ``--process_item`` on the command line, and a string given to
:func:`~sciprior.app.batch.run_batch`) is a registered NAME, never an import path: nothing is imported for a
name that is not registered, so a config cannot run code of its choosing (``subprocess:Popen``,
``builtins:eval``, a ``.py`` file in the working directory are all refused before anything runs).

- built in: ``reconstruct`` (:class:`~sciprior.app.batch.reconstruct_item.ReconstructItem`: a
  ``sciprior reconstruct`` config per input);
- installed on purpose: a package declares, in its ``pyproject.toml``::

      [project.entry-points."sciprior.processors"]
      myname = "my_pkg.module:MyProcessor"

  and a config says ``process_item: myname``. :func:`names` lists the entry points without loading any; only
  the one asked for is loaded. A built-in name cannot be taken over by an entry point.

A processor is a function ``f(spec: ItemSpec, **process_kwargs) -> ItemOutput`` or a class built once per
process with ``**process_kwargs`` whose instances are called with each :class:`~sciprior.app.batch.ItemSpec`.
``process_kwargs`` are checked against its signature before any compute (unknown keys and missing required
ones are named). A class may define a classmethod ``check_config(kwargs, inputs)`` that validates its settings
against the batch's input paths before any item runs (raising :class:`BatchConfigError`).
The Python API also takes the processor itself (a callable): that is code the user runs, not a config.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from sciprior.app.batch.spec import BatchConfigError, ProcessItem

#: entry-point group of processors installed by other packages
ENTRY_POINT_GROUP = "sciprior.processors"

#: the default processor
DEFAULT = "reconstruct"

#: built-in processors: name -> (module, attribute); the module is imported only when the name is asked for
BUILTIN: dict[str, tuple[str, str]] = {"reconstruct": ("sciprior.app.batch.reconstruct_item", "ReconstructItem")}

KEY = "process_item"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every processor name: the built-in ones and the installed entry points (nothing is imported)."""
    return sorted(set(BUILTIN) | set(_entry_points()))


def _unknown(name: str) -> BatchConfigError:
    hint = ""
    if any(c in name for c in ":./\\") or name.strip() != name:
        hint = (" (a config names a registered processor, never an import path; register your own with an "
                f"entry point in the group {ENTRY_POINT_GROUP!r}, or pass the function to run_batch from Python)")
    return BatchConfigError(f"{KEY}: unknown processor {name!r}; registered: {', '.join(names())}{hint}", key=KEY)


def get(name: str) -> Any:
    """The processor registered as ``name`` (a function or class); imports only that one.

    Raises:
        BatchConfigError: naming ``process_item`` and listing the registered names, for a name that is not
            registered (nothing is imported) or an entry point that cannot be loaded.
    """
    if not isinstance(name, str) or not name:
        raise BatchConfigError(f"{KEY}: expected the name of a registered processor ({', '.join(names())}), "
                               f"got {name!r}", key=KEY)
    if name in BUILTIN:
        module, attr = BUILTIN[name]
        return getattr(importlib.import_module(module), attr)
    eps = _entry_points()
    if name not in eps:
        raise _unknown(name)
    ep = eps[name]
    try:
        obj = ep.load()
    except Exception as e:  # an installed plugin that is broken: name it, do not crash with its traceback
        raise BatchConfigError(f"{KEY}: processor {name!r} (entry point {ep.value!r} of the group "
                               f"{ENTRY_POINT_GROUP!r}) cannot be loaded: {type(e).__name__}: {e}", key=KEY) from e
    if not callable(obj):
        raise BatchConfigError(f"{KEY}: processor {name!r} (entry point {ep.value!r}) is a "
                               f"{type(obj).__name__}, not a function or class", key=KEY)
    return obj


def resolve(process_item: str | ProcessItem) -> tuple[Any, str]:
    """``(processor, label)`` of a registered name or a callable given from Python."""
    if isinstance(process_item, str):
        return get(process_item), process_item
    if not callable(process_item):
        raise BatchConfigError(f"{KEY}: expected a registered name ({', '.join(names())}) or a callable, got "
                               f"{type(process_item).__name__}", key=KEY)
    label = getattr(process_item, "__qualname__", None) or type(process_item).__name__
    return process_item, label


def _parameters(obj: Any) -> list[inspect.Parameter] | None:
    """The parameters ``process_kwargs`` may fill (a class: its constructor's; a function: all but the spec)."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # e.g. some builtins: nothing to check against
        return None
    if not isinstance(obj, type) and params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD):
        params = params[1:]  # the ItemSpec
    return params


def check_kwargs(obj: Any, kwargs: Any, label: str) -> dict[str, Any]:
    """``process_kwargs`` checked against the processor's signature: a mapping with string keys, no unknown key
    (unless it takes ``**kwargs``), every required one given. Raises :class:`BatchConfigError` naming
    ``process_kwargs.<key>``; nothing runs."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise BatchConfigError(f"process_kwargs: expected a mapping of settings of processor {label!r}, got "
                               f"{type(kwargs).__name__}", key="process_kwargs")
    for k in kwargs:
        if not isinstance(k, str) or not k.isidentifier():
            raise BatchConfigError(f"process_kwargs: {k!r} is not a setting name", key="process_kwargs")
    params = _parameters(obj)
    if params is None:
        return dict(kwargs)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    allowed = [p.name for p in params if p.kind in kinds]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        for k in kwargs:
            if k not in allowed:
                raise BatchConfigError(f"process_kwargs.{k}: unknown setting of processor {label!r}; it accepts: "
                                       f"{', '.join(allowed) or 'none'}", key=f"process_kwargs.{k}")
    for p in params:
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in kwargs:
            raise BatchConfigError(f"process_kwargs.{p.name}: processor {label!r} needs this setting (it accepts: "
                                   f"{', '.join(allowed)})", key=f"process_kwargs.{p.name}")
    return dict(kwargs)


def prepare(process_item: str | ProcessItem, kwargs: Any, inputs: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """Everything about the processor that can be checked before any compute: the name (registered), its
    ``process_kwargs`` (signature) and, when it defines the classmethod ``check_config``, its settings against
    the inputs. Returns the processor and its keyword arguments."""
    obj, label = resolve(process_item)
    kw = check_kwargs(obj, kwargs, label)
    hook = inspect.getattr_static(obj, "check_config", None) if isinstance(obj, type) else None
    if isinstance(hook, (classmethod, staticmethod)):
        obj.check_config(kw, list(inputs))
    return obj, kw


def load_process_item(target: str | ProcessItem, kwargs: Mapping[str, Any] | None = None) -> ProcessItem:
    """The per-input callable of a registered name (:func:`get`) or of a function / class given from Python.

    A class is instantiated once with ``kwargs`` (its instance is the callable, so a model is loaded once per
    process); a function gets ``kwargs`` bound with ``functools.partial``.
    """
    obj, label = resolve(target)
    kwargs = dict(kwargs or {})
    if isinstance(obj, type):
        return obj(**kwargs)
    return functools.partial(obj, **kwargs) if kwargs else obj


__all__ = ["BUILTIN", "DEFAULT", "ENTRY_POINT_GROUP", "check_kwargs", "get", "load_process_item", "names", "prepare",
           "resolve"]
