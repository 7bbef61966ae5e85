"""Probabilities → positions under a strategy's trading rules (causal).

Owns `positions_from_probabilities`. The position at bar t is decided at bar t's close
from P(up)_t and close_t only (DESIGN.md: decided at the close, held until the close
where it changes), so nothing after t can change it.

Rules (`TradingRules`):
- entry: long when P >= entry_threshold; short when P <= 1 - entry_threshold
  (if shorts are allowed);
- exit (hysteresis): a long is left when P < exit_threshold, a short when
  P > 1 - exit_threshold, but only after `min_hold_bars` bars in the trade; an opposite
  entry signal at that point flips the position;
- risk exits, checked at each close before the signal exit and regardless of the
  minimum hold: stop loss when the trade's return p·(close_t / entry_close − 1) <=
  −stop_loss, take profit when it is >= take_profit. After a risk exit the strategy stays
  flat for that bar (no same-bar re-entry into the move that just stopped it out).
Risk exits see closes only, like the backtest; intrabar highs/lows are not used.

Without stop loss / take profit and with min_hold_bars = 1 the rules reduce to a
hysteresis band, computed fully vectorized (forward-filled signal states). With
path-dependent rules the entry price and holding time are state, so the general path is
a single pass over plain Python floats (about 1 µs per bar).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.ml.evolution.space import TradingRules

__all__ = ["positions_from_probabilities", "turnover"]


def _signals(p: np.ndarray, rules: TradingRules) -> tuple[np.ndarray, ...]:
    entry_long = p >= rules.entry_threshold
    entry_short = (p <= 1.0 - rules.entry_threshold) if rules.allow_short else np.zeros_like(
        entry_long)
    exit_long = p < rules.exit_threshold
    exit_short = p > 1.0 - rules.exit_threshold
    return entry_long, entry_short, exit_long, exit_short


def _last_index(mask: np.ndarray) -> np.ndarray:
    """For each bar, the index of the last True at or before it (−1 if none)."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


def _hysteresis(p: np.ndarray, rules: TradingRules) -> np.ndarray:
    """Vectorized path for min_hold_bars = 1 and no risk exits.

    With exit <= entry a bar cannot both enter and exit the same side, so the state at
    t is the side of the last entry signal, unless an exit signal for that side came
    after it. Both "last" indices are running maxima: no loop over bars.
    """
    entry_long, entry_short, exit_long, exit_short = _signals(p, rules)
    last_entry = _last_index(entry_long | entry_short)
    side = np.where(last_entry >= 0, np.where(entry_long[np.clip(last_entry, 0, None)],
                                               1.0, -1.0), 0.0)
    long_alive = (side > 0) & (_last_index(exit_long) < last_entry)
    short_alive = (side < 0) & (_last_index(exit_short) < last_entry)
    return np.where(long_alive, 1.0, np.where(short_alive, -1.0, 0.0))


def positions_from_probabilities(proba: Any, close: Any, rules: TradingRules) -> np.ndarray:
    """Positions in {−1, 0, 1}, one per bar, decided at each bar's close (causal)."""
    p = np.asarray(proba, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    if p.ndim != 1 or c.shape != p.shape:
        raise ValueError(f"proba {p.shape} and close {c.shape} must be 1-D of equal length")
    if p.size and not (np.nanmin(p) >= 0.0 and np.nanmax(p) <= 1.0 and np.isfinite(p).all()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    if rules.min_hold_bars <= 1 and not rules.stop_loss and not rules.take_profit:
        return _hysteresis(p, rules)

    entry_long, entry_short, exit_long, exit_short = (s.tolist() for s in _signals(p, rules))
    closes = c.tolist()
    stop = float(rules.stop_loss or 0.0)
    take = float(rules.take_profit or 0.0)
    min_hold = int(rules.min_hold_bars)
    out = [0.0] * len(closes)
    pos = 0.0
    entry_px = 0.0
    held = 0
    for t, px in enumerate(closes):
        if pos != 0.0:
            held += 1
            ret = pos * (px / entry_px - 1.0)
            if (stop and ret <= -stop) or (take and ret >= take):
                pos = 0.0  # risk exit: flat for this bar
                out[t] = 0.0
                continue
            if held >= min_hold:
                if pos > 0.0 and entry_short[t]:
                    pos, entry_px, held = -1.0, px, 0
                elif pos < 0.0 and entry_long[t]:
                    pos, entry_px, held = 1.0, px, 0
                elif (pos > 0.0 and exit_long[t]) or (pos < 0.0 and exit_short[t]):
                    pos = 0.0
        elif entry_long[t]:
            pos, entry_px, held = 1.0, px, 0
        elif entry_short[t]:
            pos, entry_px, held = -1.0, px, 0
        out[t] = pos
    return np.asarray(out, dtype=np.float64)


def turnover(positions: Any) -> float:
    """Mean absolute position change per bar (entering from flat counts the first bar)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.size == 0:
        return 0.0
    changes = np.abs(np.diff(pos, prepend=0.0))
    return float(changes.mean())
