"""Incremental paper trading: DESIGN.md's backtest model carried bar by bar.

Owns `LiveBook` (the state of `app.ml.backtest.run_backtest` after n bars, advanced by
new bars without touching the earlier ones) and `RuleState` (the state of
`app.ml.evolution.strategy.positions_from_probabilities` after n bars, stepped the same
way). Both serialize to small JSON-ready dicts, so a version's live record is stored and
continued across processes.

Equality with a full backtest over the same closes and positions:
- the per-bar equity curve is computed with the same floating-point operations, in the
  same order, as `run_backtest` (bit-identical marked-to-market values);
- the last bar: an open trade is closed there with its exit fee, exactly like
  `run_backtest`; the stored state keeps it open, so the next bar continues it;
- Sharpe: per-bar returns are folded into a running (count, mean, M2) (Welford); the
  full backtest folds them block-wise (Chan), so the two agree to rounding (~1e-12
  relative), not bit for bit. Drawdown, trades, win rate, profit factor and total return
  are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.ml.backtest import returns_vary
from app.ml.evolution.space import TradingRules

__all__ = ["LiveBook", "RuleState"]


@dataclass
class LiveBook:
    """Backtest state after `n` bars (see the module docstring)."""

    cost: float  # (fee_bps + slippage_bps) / 1e4, one side
    periods_per_year: float
    n: int = 0
    prev_pos: float | None = None  # position of the last bar (None before the first)
    seg_p: float = 0.0  # open segment: position, entry close, equity at its start
    seg_px: float | None = None
    seg_base: float = 1.0
    e_last: float = 1.0  # marked-to-market equity of the last bar
    e_prev: float = 1.0  # ... and of the bar before it
    last_close: float = 0.0
    # per-bar returns r_1..r_{n-2} (final values), Welford
    r_count: int = 0
    r_mean: float = 0.0
    r_m2: float = 0.0
    r_finite: bool = True
    # drawdown over bars 0..n-2 (peak starts at 1.0)
    peak: float = 1.0
    worst_ratio: float = 1.0
    # closed trades
    trades: int = 0
    wins: int = 0
    losses: int = 0
    gains_sum: float = 0.0
    losses_sum: float = 0.0

    # -- stepping ------------------------------------------------------------------------
    def _commit_return(self, e_now: float, e_before: float) -> None:
        if not self.r_finite:
            return
        r = e_now / e_before - 1.0 if e_before != 0.0 else math.inf
        if not math.isfinite(r):
            self.r_finite = False
            return
        self.r_count += 1
        delta = r - self.r_mean
        self.r_mean += delta / self.r_count
        self.r_m2 += delta * (r - self.r_mean)

    def _commit_drawdown(self, e: float) -> None:
        self.peak = max(self.peak, e)
        self.worst_ratio = min(self.worst_ratio, e / self.peak)

    def _close_trade(self, r: float) -> None:
        self.trades += 1
        if r > 0.0:
            self.wins += 1
            self.gains_sum += r
        elif r < 0.0:
            self.losses += 1
            self.losses_sum += r

    def step(self, close: float, position: float) -> float:
        """Advance by one bar; returns its marked-to-market equity."""
        f = self.cost
        if self.n >= 1:
            # the last bar's equity is final now (it is no longer the last bar)
            self._commit_drawdown(self.e_last)
            if self.n >= 2:
                self._commit_return(self.e_last, self.e_prev)
        if self.prev_pos is None or position != self.prev_pos:
            if self.seg_px is not None:
                p = self.seg_p
                fee = abs(p) * f
                r = ((close / self.seg_px - 1.0) * p - fee) - fee
                if p != 0.0:
                    self._close_trade(r)
                self.seg_base = self.seg_base * (r + 1.0)
            self.seg_p, self.seg_px = float(position), float(close)
        p, base = self.seg_p, self.seg_base
        e = ((p / self.seg_px) * base) * close + ((1.0 - abs(p) * f) - p) * base  # type: ignore[operator]
        self.prev_pos = float(position)
        self.last_close = close
        self.e_prev, self.e_last = self.e_last, e
        self.n += 1
        return e

    def advance(self, closes: Sequence[float], positions: Sequence[float]) -> list[float]:
        """Advance by several bars; returns their marked-to-market equity."""
        if len(closes) != len(positions):
            raise ValueError(f"{len(closes)} closes but {len(positions)} positions")
        for i, (c, p) in enumerate(zip(closes, positions, strict=True)):
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"close at index {i} must be finite and > 0, got {c!r}")
            if not (math.isfinite(p) and -1.0 <= p <= 1.0):
                raise ValueError(f"position at index {i} must be in [-1, 1], got {p!r}")
        return [self.step(float(c), float(p)) for c, p in zip(closes, positions, strict=True)]

    # -- reading -------------------------------------------------------------------------
    def final_equity(self) -> float:
        """Equity of the last bar as `run_backtest` reports it (an open trade closed)."""
        if self.n == 0:
            return 1.0
        p = self.seg_p
        if p == 0.0 or self.seg_px is None:
            return self.e_last
        r_last = p * (self.last_close / self.seg_px - 1.0) - 2.0 * self.cost * abs(p)
        return self.seg_base * (1.0 + r_last)

    def metrics(self) -> dict[str, Any] | None:
        """The metrics object of `run_backtest` over every bar so far (None before any)."""
        if self.n == 0:
            return None
        e_final = self.final_equity()
        count, mean, m2, finite = self.r_count, self.r_mean, self.r_m2, self.r_finite
        if self.n >= 2 and finite:
            r = e_final / self.e_prev - 1.0 if self.e_prev != 0.0 else math.inf
            if math.isfinite(r):
                count += 1
                delta = r - mean
                mean += delta / count
                m2 += delta * (r - mean)
            else:
                finite = False
        sharpe = 0.0
        if finite and count >= 2:
            sd = math.sqrt(m2 / (count - 1))
            if returns_vary(sd, mean):
                sharpe = mean / sd * math.sqrt(self.periods_per_year)
        peak = max(self.peak, e_final)
        worst = min(self.worst_ratio, e_final / peak)
        trades, wins, losses = self.trades, self.wins, self.losses
        gains, loss_sum = self.gains_sum, self.losses_sum
        if self.seg_p != 0.0 and self.seg_px is not None:
            r_open = self.seg_p * (self.last_close / self.seg_px - 1.0) \
                - 2.0 * self.cost * abs(self.seg_p)
            trades += 1
            if r_open > 0.0:
                wins += 1
                gains += r_open
            elif r_open < 0.0:
                losses += 1
                loss_sum += r_open
        return {
            "sharpe": sharpe,
            "win_rate": wins / trades if trades else 0.0,
            "profit_factor": gains / -loss_sum if losses else None,
            "max_drawdown": max(0.0, 1.0 - worst),
            "trades": trades,
            "total_return": float(e_final - 1.0),
        }

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveBook:
        return cls(**data)


@dataclass
class RuleState:
    """`positions_from_probabilities`'s loop state (position, entry close, bars held)."""

    pos: float = 0.0
    entry_px: float = 0.0
    held: int = 0

    def step(self, p: float, close: float, rules: TradingRules) -> float:
        """The position of one more bar under `rules` (the same loop as the full path)."""
        entry_long = p >= rules.entry_threshold
        entry_short = rules.allow_short and p <= 1.0 - rules.entry_threshold
        exit_long = p < rules.exit_threshold
        exit_short = p > 1.0 - rules.exit_threshold
        stop = float(rules.stop_loss or 0.0)
        take = float(rules.take_profit or 0.0)
        if self.pos != 0.0:
            self.held += 1
            ret = self.pos * (close / self.entry_px - 1.0)
            if (stop and ret <= -stop) or (take and ret >= take):
                self.pos = 0.0
                return 0.0
            if self.held >= int(rules.min_hold_bars):
                if self.pos > 0.0 and entry_short:
                    self.pos, self.entry_px, self.held = -1.0, close, 0
                elif self.pos < 0.0 and entry_long:
                    self.pos, self.entry_px, self.held = 1.0, close, 0
                elif (self.pos > 0.0 and exit_long) or (self.pos < 0.0 and exit_short):
                    self.pos = 0.0
        elif entry_long:
            self.pos, self.entry_px, self.held = 1.0, close, 0
        elif entry_short:
            self.pos, self.entry_px, self.held = -1.0, close, 0
        return self.pos

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RuleState:
        return cls(**(data or {}))
