"""A strategy's trading rules and evaluation overrides, checked: the one rule for what a
training job's `strategy` may say about how positions are taken.

Owns `trading_rules` (the strategy's `rules` object as an
`app.ml.evolution.space.TradingRules`, or None), `strategy_config_overrides` (the
EvaluationConfig fields a strategy sets), `InvalidRules` and `MAX_LABEL_HORIZON`. The
job service checks requests with them (app.services.jobs.requests); the pipeline
(app.flows.pipeline) turns a job's strategy into the rules its out-of-sample probabilities
are traded with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.ml.evolution.space import TradingRules

MAX_LABEL_HORIZON = 500
_RULE_KEYS = ("entry_threshold", "exit_threshold", "min_hold_bars", "stop_loss", "take_profit",
              "allow_short")


class InvalidRules(ValueError):
    """A strategy's trading rules are malformed; `key` names the rule."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def strategy_config_overrides(strategy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The EvaluationConfig fields a job's strategy sets (thresholds, label horizon)."""
    strat = strategy or {}
    return {k: strat[k] for k in ("long_threshold", "short_threshold", "label_horizon")
            if k in strat}


def _probability(key: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not low <= value <= 1.0:
        raise InvalidRules(key, f"{key} must be a number in [{low:g}, 1], got {value!r}")
    return float(value)


def _risk_level(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not 0.0 <= value < 10.0:
        raise InvalidRules(key, f"{key} must be null or a number in [0, 10), got {value!r}")
    return float(value) or None  # 0 switches the exit off, as in the search's spaces


def trading_rules(strategy: Mapping[str, Any] | None) -> TradingRules | None:
    """The strategy's trading rules as an `app.ml.evolution.space.TradingRules` (None when the
    strategy has none: positions then come from the plain long/short thresholds).

    These are the rules a strategy search evaluated its candidates with; the pipeline
    turns out-of-sample probabilities into positions with the same function
    (`app.ml.evolution.strategy.positions_from_probabilities`). Raises InvalidRules.
    """
    raw = (strategy or {}).get("rules")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidRules("rules", "rules must be an object")
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise InvalidRules(str(unknown[0]), f"unknown rule(s) {unknown}; known: "
                                            f"{', '.join(_RULE_KEYS)}")
    default = TradingRules()
    entry = _probability("entry_threshold", raw.get("entry_threshold", default.entry_threshold),
                         0.5)
    exit_ = _probability("exit_threshold", raw.get("exit_threshold", default.exit_threshold))
    if exit_ > entry:
        raise InvalidRules("exit_threshold", f"exit_threshold ({exit_:g}) must be <= "
                                             f"entry_threshold ({entry:g})")
    hold = raw.get("min_hold_bars", default.min_hold_bars)
    if isinstance(hold, bool) or not isinstance(hold, int) or not 1 <= hold <= 100_000:
        raise InvalidRules("min_hold_bars", f"min_hold_bars must be an integer in [1, 100000], "
                                            f"got {hold!r}")
    allow_short = raw.get("allow_short", default.allow_short)
    if not isinstance(allow_short, bool):
        raise InvalidRules("allow_short", f"allow_short must be true or false, got "
                                          f"{allow_short!r}")
    return TradingRules(
        entry_threshold=entry, exit_threshold=exit_, min_hold_bars=int(hold),
        stop_loss=_risk_level("stop_loss", raw.get("stop_loss")),
        take_profit=_risk_level("take_profit", raw.get("take_profit")),
        allow_short=allow_short,
    )
