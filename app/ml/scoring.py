"""Promotion score: one 0-100 number summarising a metrics object (seed weights).

Owns the score formula only (no gate, no comparison). Pure Python so the CLI,
API and workers can import it without numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.core.numbers import number_or_none

__all__ = ["SCORE_RAMPS", "SCORE_WEIGHTS", "promotion_score", "ramp"]

# Seed weights: Sharpe 50%, win rate 30%, profit factor 20%.
SCORE_WEIGHTS: dict[str, float] = {"sharpe": 0.5, "win_rate": 0.3, "profit_factor": 0.2}
# (value scoring 0, value scoring 1) for each metric; linear in between, clipped outside.
SCORE_RAMPS: dict[str, tuple[float, float]] = {
    "sharpe": (0.0, 3.0),
    "win_rate": (0.40, 0.70),
    "profit_factor": (1.0, 3.0),
}


def ramp(value: float | None, low: float, high: float) -> float:
    """Linear map of ``value`` from [low, high] onto [0, 1], clipped; NaN → 0."""
    if value is None or math.isnan(value):
        return 0.0
    if value <= low:
        return 0.0
    if value >= high:
        return 1.0
    return (value - low) / (high - low)


def promotion_score(metrics: Mapping[str, Any]) -> float:
    """Score a metrics object 0-100.

    score = 100 × (0.5·ramp(sharpe, 0, 3) + 0.3·ramp(win_rate, 0.40, 0.70)
                   + 0.2·ramp(profit_factor, 1.0, 3.0))

    where ramp(x, lo, hi) is 0 at or below lo, 1 at or above hi, linear in between:
      - sharpe: 0 → 0, 3 → 1 (NaN/None/missing counts 0);
      - win_rate: 40% → 0, 70% → 1 (None/missing counts 0);
      - profit_factor: 1.0 → 0, 3.0 → 1. None means "no losing trade": it counts as
        a perfect 1.0 ramp when trades > 0 (all winners), else 0 (no trades at all).
        An infinite profit factor also ramps to 1.
    """
    sharpe = number_or_none(metrics.get("sharpe"))
    win_rate = number_or_none(metrics.get("win_rate"))
    pf = number_or_none(metrics.get("profit_factor"))
    trades = number_or_none(metrics.get("trades")) or 0.0

    s = ramp(sharpe, *SCORE_RAMPS["sharpe"]) if sharpe is not None else 0.0
    w = ramp(win_rate, *SCORE_RAMPS["win_rate"]) if win_rate is not None else 0.0
    if pf is None:
        p = 1.0 if trades > 0 else 0.0
    else:
        p = ramp(pf, *SCORE_RAMPS["profit_factor"])
    total = (
        SCORE_WEIGHTS["sharpe"] * s
        + SCORE_WEIGHTS["win_rate"] * w
        + SCORE_WEIGHTS["profit_factor"] * p
    )
    return 100.0 * total
