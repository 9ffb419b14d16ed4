"""Config files as plain data: the one strict YAML reader of sciprior.

:func:`load_yaml` reads a config or a checkpoint's ``config.yaml`` and refuses, naming the file (and the line):

- anything but plain data: YAML tags such as ``!!python/object/apply:os.system`` are never constructed (safe
  loading) and are reported as such;
- a key that appears twice in one mapping (YAML parsers silently keep the last one);
- an empty file, or a file whose top level is not a mapping (a list, a scalar);
- a file that is not UTF-8 text, is not valid YAML, or cannot be read (a FIFO or a device is not opened).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


class YAMLFileError(ValueError):
    """A config file that is not a plain YAML mapping; the message names the file (and line) at fault."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]}; YAML would keep only the last)",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def parse_yaml(text: str, where: str) -> Any:
    """Plain data from YAML ``text`` (any top level); :class:`YAMLFileError` naming ``where`` otherwise."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        problem = str(e.problem or "")
        if "could not determine a constructor for the tag" in problem:
            tag = problem.split("tag", 1)[1].strip(" '")
            raise YAMLFileError(f"{where}: uses the YAML tag {tag!r}{_where(e.problem_mark)}; configs hold plain "
                                "data only (sciprior never constructs objects from a file)") from None
        raise YAMLFileError(f"{where}: {problem}{_where(e.problem_mark)}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise YAMLFileError(f"{where}: not valid YAML: {problem}{_where(mark)}") from None


def read_text(path: str | os.PathLike, key: str) -> str:
    """The UTF-8 text of the regular file ``path``; :class:`YAMLFileError` naming ``key`` and the file otherwise."""
    p = Path(path)
    if not p.exists():
        raise YAMLFileError(f"{key}: no such file {str(p)!r}")
    if not p.is_file():
        raise YAMLFileError(f"{key}: {str(p)!r} is not a regular file")
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise YAMLFileError(f"{key}: {str(p)!r} is not UTF-8 text (byte {e.start}); is it a YAML file?") from None
    except OSError as e:
        raise YAMLFileError(f"{key}: cannot read {str(p)!r}: {e.strerror or e}") from None


def load_yaml(path: str | os.PathLike, key: str = "config") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (see the module docstring for what is refused).

    ``key``: the config key or command-line option that named the file, for the messages.
    """
    where = f"{key} {str(path)!r}" if key else repr(str(path))
    data = parse_yaml(read_text(path, key), where)
    if data is None:
        raise YAMLFileError(f"{where} is empty; expected a YAML mapping of settings")
    if not isinstance(data, dict):
        raise YAMLFileError(f"{where} holds a YAML {type(data).__name__} at the top level; expected a mapping of "
                            "settings (key: value)")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise YAMLFileError(f"{where}: top-level keys must be strings, got {bad[:3]!r}")
    return data


__all__ = ["YAMLFileError", "load_yaml", "parse_yaml", "read_text"]
