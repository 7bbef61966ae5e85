"""Slow, literal pure-Python reference of DESIGN.md's backtest model.

One loop over bars, written to read like the spec rather than to be fast. The
vectorized `app.ml.backtest.run_backtest` is checked against it (property tests) and
the benchmark uses it as its baseline.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def reference_backtest(
    close: Sequence[float],
    positions: Sequence[float],
    *,
    fee_bps: float = 0.0,
    slippage_bps: float = 0.0,
    periods_per_year: float = 8760.0,
) -> dict[str, Any]:
    """Return {"equity": [...], "trade_returns": [...], "metrics": {...}}."""
    f = (fee_bps + slippage_bps) / 1e4
    n = len(close)
    cash_equity = 1.0  # equity while flat / after the last exit
    cur_p = 0.0
    entry_equity = 1.0
    entry_px = 0.0
    curve: list[float] = []
    trades: list[float] = []
    for i in range(n):
        p = float(positions[i])
        px = float(close[i])
        if cur_p != 0.0 and p != cur_p:
            # the held trade exits at this close
            r = cur_p * (px / entry_px - 1.0) - 2.0 * f * abs(cur_p)
            trades.append(r)
            cash_equity = entry_equity * (1.0 + r)
            cur_p = 0.0
        if p != 0.0 and cur_p == 0.0:
            # a new trade enters at this close, paying its entry fee
            entry_equity = cash_equity
            entry_px = px
            cur_p = p
            value = entry_equity * (1.0 - f * abs(p))
        elif cur_p != 0.0:
            value = entry_equity * (1.0 - f * abs(cur_p) + cur_p * (px / entry_px - 1.0))
        else:
            value = cash_equity
        curve.append(value)
    if cur_p != 0.0:
        # still open: closed at the last bar's close
        r = cur_p * (float(close[-1]) / entry_px - 1.0) - 2.0 * f * abs(cur_p)
        trades.append(r)
        curve[-1] = entry_equity * (1.0 + r)

    returns = [curve[i] / curve[i - 1] - 1.0 for i in range(1, n)]
    sharpe = 0.0
    if len(returns) >= 2:
        sd = statistics.stdev(returns)
        # Constant up to rounding (std below 1e-10 × |mean| or below 1e-12): Sharpe 0.
        if sd > max(1e-10 * abs(statistics.fmean(returns)), 1e-12):
            sharpe = statistics.fmean(returns) / sd * math.sqrt(periods_per_year)

    peak = 1.0
    max_dd = 0.0
    for value in curve:
        peak = max(peak, value)
        max_dd = max(max_dd, 1.0 - value / peak)

    wins = [r for r in trades if r > 0]
    losses = [r for r in trades if r < 0]
    metrics = {
        "sharpe": sharpe,
        "win_rate": len(wins) / len(trades) if trades else 0.0,
        "profit_factor": sum(wins) / -sum(losses) if losses else None,
        "max_drawdown": max_dd,
        "trades": len(trades),
        "total_return": curve[-1] - 1.0,
    }
    return {"equity": curve, "trade_returns": trades, "metrics": metrics}
