"""Number types with ranges, for the typed signatures that are sciprior's config schema.

A signature that says ``steps: PositiveInt`` makes a config with ``steps: 0`` (or ``-3``, ``true``, ``2.5``) fail
when it is parsed, naming the key, before any file is read or any prior loaded (jsonargparse checks these types).
The values are plain ``int`` / ``float`` subclasses, so Python callers pass ordinary numbers; the functions keep
their own checks for calls from Python. Floats here are finite: ``.nan`` and ``.inf`` are refused.
"""

from __future__ import annotations

import math
import re

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


__all__ = ["TYPE_WORDS", "FiniteFloat", "ImageSize", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat",
           "PositiveInt", "UnitInterval", "describe_parse_error"]
