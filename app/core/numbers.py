"""Number hygiene shared by every layer: the one "finite float or nothing" rule.

Owns `finite_or_none`: metrics, reports and JSON documents store a float only when it is
a real, finite number (no NaN/inf, no booleans posing as 0/1); anything else is None.
And `number_or_none`, for judging metrics (gate, score): any float a value stands for,
infinities and NaN included (an infinite profit factor clears a threshold; NaN fails
every comparison), booleans and non-numbers None.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite_or_none", "number_or_none"]


def finite_or_none(value: Any) -> float | None:
    """`value` as a finite float, or None (None, booleans, non-numbers, NaN, ±inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def number_or_none(value: Any) -> float | None:
    """`value` as a float (inf and NaN kept), or None (None, booleans, non-numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
