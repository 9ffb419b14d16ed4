"""Number types with ranges, for the typed signatures that are sciprior's config schema.

A signature that says ``steps: PositiveInt`` makes a config with ``steps: 0`` (or ``-3``, ``true``, ``2.5``) fail
when it is parsed, naming the key, before any file is read or any prior loaded (jsonargparse checks these types).
The values are plain ``int`` / ``float`` subclasses, so Python callers pass ordinary numbers; the functions keep
their own checks for calls from Python. Floats here are finite: ``.nan`` and ``.inf`` are refused.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt, restricted_number_type

PositiveFloat = restricted_number_type("PositiveFiniteFloat", float, [(">", 0), ("<", math.inf)],
                                       docstring="a finite float > 0")
NonNegativeFloat = restricted_number_type("NonNegativeFiniteFloat", float, [(">=", 0), ("<", math.inf)],
                                          docstring="a finite float >= 0")
FiniteFloat = restricted_number_type("FiniteFloat", float, [(">", -math.inf), ("<", math.inf)],
                                     docstring="a finite float")
#: a float in [0, 1]
UnitInterval = ClosedUnitInterval
#: a reconstruction grid side in pixels (the largest grid any adapter supports is 8192 x 8192)
ImageSize = restricted_number_type("ImageSize", int, [(">=", 1), ("<=", 8192)], docstring="an int in [1, 8192]")

#: the range types (and plain types) in words, for messages
TYPE_WORDS = {
    "PositiveInt": "an int >= 1", "NonNegativeInt": "an int >= 0", "PositiveFiniteFloat": "a finite number > 0",
    "NonNegativeFiniteFloat": "a finite number >= 0", "FiniteFloat": "a finite number",
    "ClosedUnitInterval": "a number in [0, 1]", "ImageSize": "an int in [1, 8192]", "int": "an int",
    "float": "a number", "bool": "true or false", "str": "a string",
}


def describe_parse_error(msg: str) -> tuple[str | None, str]:
    """A jsonargparse ``Parser key "KEY": ...`` message as ``(KEY, "KEY: <what is wrong>; expected <type in
    words>")``; ``(None, msg in one line)`` for other messages."""
    m = re.search(r'Parser key "([^"]+)":\s*(.*)', msg, re.S)
    if m is None:
        return None, " ".join(msg.split())
    key, body = m.group(1), m.group(2)
    types = list(dict.fromkeys(re.findall(r"Not of type (\w+)", body)))
    first = re.search(r"Not of type \w+: ([^\n]*)", body)
    if not types or first is None:
        return key, f"{key}: {' '.join(body.split())}"
    words = [TYPE_WORDS.get(t, t) for t in types] + (["null"] if "NoneType" in body else [])
    return key, f"{key}: {first.group(1).strip()}; expected {' or '.join(words)}"


F = TypeVar("F", bound=Callable[..., Any])


Check = tuple[Callable[[Any], bool], str]


def _is_range(t: Any) -> bool:
    return isinstance(t, type) and hasattr(t, "_restrictions")


def _range_ok(t: type, v: Any) -> bool:
    try:
        return not isinstance(v, bool) and t(v) == v
    except (TypeError, ValueError):
        return False


def _check_for(annotation: Any) -> Check | None:
    """``(accepts(value), the accepted values in words)`` for an annotation built of range types, ``Literal``,
    ``None``, fixed tuples and unions of them; None for any other annotation (not checked here)."""
    if _is_range(annotation):
        return (lambda v, t=annotation: _range_ok(t, v)), TYPE_WORDS.get(annotation.__name__, annotation.__name__)
    if annotation is type(None):
        return (lambda v: v is None), "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return (lambda v, a=args: any(v == x and type(v) is type(x) for x in a)), \
            "one of " + ", ".join(repr(x) for x in args)
    if origin is tuple and args and Ellipsis not in args:
        parts = [_check_for(a) for a in args]
        if any(p is None for p in parts):
            return None
        return (lambda v, ps=parts: isinstance(v, (tuple, list)) and len(v) == len(ps)
                and all(ok(x) for (ok, _), x in zip(ps, v))), "(" + ", ".join(w for _, w in parts) + ")"  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        parts = [_check_for(a) for a in args]
        if any(p is None for p in parts):
            return None
        return (lambda v, ps=parts: any(ok(v) for ok, _ in ps)), " or ".join(w for _, w in parts)  # type: ignore[misc]
    return None


def checked(fn: F) -> F:
    """Check a function's range-typed and ``Literal`` parameters (``steps: PositiveInt``, ``sigma_max:
    PositiveFloat | None``, ``mode: Literal["a", "b"]``) on every call from Python, as the config parser does:
    ``ValueError`` naming the function, the parameter and what it accepts. The signature and type hints stay the
    function's own (configs are still parsed from them)."""
    sig = inspect.signature(fn)
    who = fn.__qualname__.removesuffix(".__init__")
    checks: dict[str, Check] | None = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal checks
        if checks is None:
            hints = typing.get_type_hints(fn)
            checks = {k: c for k, a in hints.items() if k != "return" and (c := _check_for(a)) is not None}
        for name, value in sig.bind_partial(*args, **kwargs).arguments.items():
            check = checks.get(name)
            if check is not None and not check[0](value):
                raise ValueError(f"{who}: {name}={value!r}; expected {check[1]}")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["TYPE_WORDS", "checked", "FiniteFloat", "ImageSize", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat",
           "PositiveInt", "UnitInterval", "describe_parse_error"]
