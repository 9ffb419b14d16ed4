"""Number types with ranges, for the typed signatures that are sciprior's config schema.

A signature that says ``steps: PositiveInt`` makes a config with ``steps: 0`` (or ``-3``, ``true``, ``2.5``) fail
when it is parsed, naming the key, before any file is read or any prior loaded (jsonargparse checks these types).
The values are plain ``int`` / ``float`` subclasses, so Python callers pass ordinary numbers; the functions keep
their own checks for calls from Python. Floats here are finite: ``.nan`` and ``.inf`` are refused.
"""

from __future__ import annotations

import math

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

__all__ = ["FiniteFloat", "ImageSize", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt",
           "UnitInterval"]
