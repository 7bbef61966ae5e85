"""Vectorized trade-based backtest and its metrics (DESIGN.md "Backtest model" is law).

Owns `run_backtest`, `align_positions` and `BacktestResult`. Core maths is numpy
only; pandas is imported lazily, and only when timestamps need converting, so the
`clm backtest` command and the walk-forward evaluation share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PERIODS_PER_YEAR",
    "AlignmentError",
    "BacktestResult",
    "align_positions",
    "periods_per_year_from_timestamps",
    "run_backtest",
]

# 1h bars around the clock: the fallback when no timestamps tell the bar spacing.
DEFAULT_PERIODS_PER_YEAR = 8760.0
_SECONDS_PER_YEAR = 365 * 86400


class AlignmentError(ValueError):
    """Price and position timestamps differ; names the first mismatch."""

    def __init__(self, message: str, index: int, price_ts: Any, position_ts: Any) -> None:
        super().__init__(message)
        self.index = index
        self.price_ts = price_ts
        self.position_ts = position_ts


@dataclass
class BacktestResult:
    """Outcome of `run_backtest`.

    metrics: sharpe, win_rate, profit_factor (None without a losing trade),
    max_drawdown, trades, total_return — plain Python numbers, JSON-ready.
    equity: marked-to-market equity at each bar's close (len n).
    returns: pct change of `equity` (len n-1), computed on first access.
    trade_returns / trade_entries / trade_exits: one entry per trade (bar indices).
    """

    metrics: dict[str, Any]
    equity: np.ndarray
    trade_returns: np.ndarray
    trade_entries: np.ndarray
    trade_exits: np.ndarray
    periods_per_year: float
    notes: list[str] = field(default_factory=list)

    @cached_property
    def returns(self) -> np.ndarray:
        """Per-bar returns of the equity curve (n − 1 values), the series Sharpe uses.

        Built on first access: the metrics never need the full-length array.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.equity[1:] / self.equity[:-1] - 1.0

# Per-bar returns whose std is below this fraction of their mean, or below
# CONSTANT_RETURNS_ATOL (per-bar returns carry ~1e-16 of rounding each), are constant up to
# rounding: their Sharpe is 0 (like std 0), not mean / noise (≈ ±1e16, or any value at all
# when a price moves by one ulp).
CONSTANT_RETURNS_RTOL = 1e-10
CONSTANT_RETURNS_ATOL = 1e-12


def returns_vary(sd: float, mean: float) -> bool:
    """True when per-bar returns with std `sd` and mean `mean` vary beyond rounding."""
    return sd > max(CONSTANT_RETURNS_RTOL * abs(mean), CONSTANT_RETURNS_ATOL)


def _num(x: Any) -> str:
    """A numpy scalar as plain Python repr (numpy 2 reprs read 'np.float64(…)')."""
    return repr(float(x))


def _timestamps_ns(ts: Any) -> np.ndarray:
    """Timestamps (DatetimeIndex, datetime64 array, list of datetimes/strings) → int64 UTC ns."""
    arr = ts if isinstance(ts, np.ndarray) else None
    if arr is not None and np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]").astype(np.int64)
    import pandas as pd  # lazy: only callers that pass timestamps pay for pandas

    index = pd.DatetimeIndex(pd.to_datetime(ts, utc=True))
    return index.as_unit("ns").asi8


def _format_ns(value: int) -> str:
    unit = "s" if int(value) % 1_000_000_000 == 0 else "ns"  # keep sub-second differences
    return str(np.datetime64(int(value), "ns").astype(f"datetime64[{unit}]")) + "Z"


def align_positions(price_ts: Any, pos_ts: Any) -> np.ndarray:
    """Check that position timestamps line up exactly with price timestamps.

    Returns the shared timestamps as int64 UTC nanoseconds. Raises `AlignmentError`
    (a ValueError) naming the first index whose timestamps differ, including a
    bar present in one series but not the other.
    """
    p = _timestamps_ns(price_ts)
    q = _timestamps_ns(pos_ts)
    m = min(len(p), len(q))
    diff = np.flatnonzero(p[:m] != q[:m])
    if diff.size:
        i = int(diff[0])
        raise AlignmentError(
            f"positions do not line up with prices at index {i}: price bar "
            f"{_format_ns(p[i])} vs position {_format_ns(q[i])}",
            i,
            _format_ns(p[i]),
            _format_ns(q[i]),
        )
    if len(p) != len(q):
        if len(p) > len(q):
            msg = f"price bar {_format_ns(p[m])} (index {m}) has no position"
            pts, qts = _format_ns(p[m]), None
        else:
            msg = f"position at {_format_ns(q[m])} (index {m}) has no price bar"
            pts, qts = None, _format_ns(q[m])
        raise AlignmentError(
            f"positions do not line up with prices: {len(p)} price bars vs "
            f"{len(q)} positions; {msg}",
            m,
            pts,
            qts,
        )
    return p


def periods_per_year_from_timestamps(ts: Any) -> float | None:
    """365·86400 / median bar spacing in seconds (1h → 8760); None if undeterminable."""
    return _ppy_from_ns(_timestamps_ns(ts))


def _ppy_from_ns(ns: np.ndarray) -> float | None:
    if len(ns) < 2:
        return None
    spacing_s = float(np.median(np.diff(ns))) / 1e9
    if not spacing_s > 0:
        return None
    return _SECONDS_PER_YEAR / spacing_s


def _as_1d_float(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_inputs(close: np.ndarray, pos: np.ndarray) -> None:
    if len(close) != len(pos):
        m = min(len(close), len(pos))
        raise ValueError(
            f"length mismatch: {len(close)} prices vs {len(pos)} positions "
            f"(index {m} exists in only one of them)"
        )
    if len(close) == 0:
        raise ValueError("no bars: prices and positions are empty")
    # Fast path: two reductions each (NaN makes every comparison False).
    if not (close.min() > 0.0 and close.max() < np.inf):
        bad = np.flatnonzero(~(np.isfinite(close) & (close > 0)))
        i = int(bad[0])
        raise ValueError(f"price at index {i} is {_num(close[i])}: prices must be finite and > 0")
    if not (pos.min() >= -1.0 and pos.max() <= 1.0):
        bad = np.flatnonzero(~((pos >= -1.0) & (pos <= 1.0)))
        i = int(bad[0])
        raise ValueError(f"position at index {i} is {_num(pos[i])}: positions must be in [-1, 1]")


def run_backtest(
    close: Sequence[float] | np.ndarray | Any,
    positions: Sequence[float] | np.ndarray | Any,
    *,
    fee_bps: float = 0.0,
    slippage_bps: float = 0.0,
    periods_per_year: float | None = None,
    timestamps: Any = None,
) -> BacktestResult:
    """Backtest target positions against closes; vectorized, no loop over bars.

    Conventions (DESIGN.md, followed exactly):
      - f = (fee_bps + slippage_bps) / 1e4, paid on |p| at entry and again at exit.
      - positions[t] in [-1, 1] is decided at the close of bar t and held until the
        close where it changes. A trade is a maximal run of one non-zero value; a
        change of size (0.5 → 1) or a flip (1 → -1) ends it and starts a new trade.
      - A trade enters at the close of its first bar s: equity at s is
        E_entry·(1 − f|p|); marked to market at t: E_entry·(1 − f|p| + p(P_t/P_s − 1)).
      - It exits at the close of bar e where the position changes, or the last bar if
        still open: r = p(P_e/P_s − 1) − 2f|p| and equity at e is E_entry·(1 + r).
        On a flip/size change the next trade enters at that same close from that
        equity and pays its own entry fee, so equity at e is E_entry·(1+r)·(1 − f|p'|).
        A trade still open on the last bar is closed there (exit fee included), so
        final equity = Π(1 + r) and total_return agrees with the trade returns.
      - Flat bars keep equity constant. Equity is 1.0 before the first bar.
    Metrics:
      - per-bar returns = pct change of the per-bar equity curve (n − 1 values);
        sharpe = mean / std(ddof=1) × sqrt(periods_per_year); 0.0 when there are
        fewer than 2 returns, std is 0 (or rounding noise: see `returns_vary`), or a
        return is not finite (equity hit 0).
      - periods_per_year: given, else 365·86400 / median bar spacing of `timestamps`
        (or of `close`'s DatetimeIndex), else 8760 with a note in `.notes`.
      - max_drawdown = max over t of 1 − E_t / max(1.0, E_0..E_t) (positive fraction).
      - win_rate = share of trades with r > 0 (0.0 without trades); profit_factor =
        Σ r⁺ / |Σ r⁻|, None when no trade lost; total_return = E_last − 1.
    If `close` and `positions` are both pandas Series with a DatetimeIndex, their
    indexes must match exactly (`align_positions`). Bad input raises ValueError
    naming the offending index.
    """
    notes: list[str] = []
    close_index = getattr(close, "index", None)
    pos_index = getattr(positions, "index", None)
    ts = timestamps
    if _is_datetime_index(close_index):
        if _is_datetime_index(pos_index):
            align_positions(close_index, pos_index)
        if ts is None:
            ts = close_index
    elif ts is not None and _is_datetime_index(pos_index):
        align_positions(ts, pos_index)

    price = _as_1d_float(close, "close")
    pos = _as_1d_float(positions, "positions")
    _check_inputs(price, pos)
    ts_ns = _timestamps_ns(ts) if ts is not None else None
    if ts_ns is not None and len(ts_ns) != len(price):
        raise ValueError(f"timestamps has {len(ts_ns)} values but there are {len(price)} bars")
    for name, value in (("fee_bps", fee_bps), ("slippage_bps", slippage_bps)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if periods_per_year is None:
        ppy = _ppy_from_ns(ts_ns) if ts_ns is not None else None
        if ppy is None:
            ppy = DEFAULT_PERIODS_PER_YEAR
            notes.append(
                "periods_per_year not given and not inferable from timestamps: "
                "assumed 8760 (1h bars)"
            )
    else:
        ppy = float(periods_per_year)
        if not (math.isfinite(ppy) and ppy > 0):
            raise ValueError(f"periods_per_year must be > 0, got {periods_per_year!r}")

    f = (fee_bps + slippage_bps) / 1e4
    equity, trade_returns, entries, exits = _equity_curve(price, pos, f)
    metrics = _metrics(equity, trade_returns, ppy, notes)
    return BacktestResult(
        metrics=metrics,
        equity=equity,
        trade_returns=trade_returns,
        trade_entries=entries,
        trade_exits=exits,
        periods_per_year=ppy,
        notes=notes,
    )


# Bars per block. Blocks keep every temporary small (512 KiB), so they stay in cache
# and malloc reuses them; whole-length temporaries cost more in fresh-page faults
# than in arithmetic. Only the outputs are allocated at full length.
_BLOCK = 1 << 16


def _equity_curve(
    price: np.ndarray, pos: np.ndarray, f: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-bar equity and the trades (return, entry bar, exit bar), block by block.

    A segment is a maximal run of one position value, flat runs included (a flat
    segment has p = 0, so its return is exactly 0 and its equity exactly constant).
    The segment still open at the end of a block is carried into the next one as
    (p, entry price, equity at its start, start bar); within a block the segments are
    [carried, new ones...], segment j exits at the first bar of segment j+1, and
    equity at segment starts is a running product of (1 + r) seeded with the carry —
    the same multiplication order as a bar-by-bar loop.
    """
    n = len(price)
    equity = np.empty(n)
    out_r: list[np.ndarray] = []
    out_entry: list[np.ndarray] = []
    out_exit: list[np.ndarray] = []
    # carried open segment; a zero-length flat one before bar 0
    c_p, c_px, c_base, c_start = 0.0, float(price[0]), 1.0, 0
    prev = np.nan  # NaN differs from every position, so bar 0 starts a segment
    for a in range(0, n, _BLOCK):
        b = min(a + _BLOCK, n)
        px = price[a:b]
        x = pos[a:b]
        m = b - a
        change = np.empty(m, dtype=bool)
        change[0] = x[0] != prev
        np.not_equal(x[1:], x[:-1], out=change[1:])
        st = np.flatnonzero(change)  # block-local first bars of new segments
        k = len(st)
        seg_p = np.empty(k + 1)
        seg_p[0] = c_p
        np.take(x, st, out=seg_p[1:])
        seg_px = np.empty(k + 1)
        seg_px[0] = c_px
        np.take(px, st, out=seg_px[1:])
        # segments 0..k-1 close here, at the price where the next one starts:
        # r = p·(P_exit/P_entry − 1) − 2·f·|p|
        fee = np.abs(seg_p)
        fee *= f
        r = np.divide(seg_px[1:], seg_px[:-1])
        r -= 1.0
        r *= seg_p[:-1]
        r -= fee[:-1]
        r -= fee[:-1]
        base = np.empty(k + 1)  # equity at each segment's start, before its entry fee
        base[0] = c_base
        np.add(r, 1.0, out=base[1:])
        np.cumprod(base, out=base)
        if k:
            # Indices then take: boolean-mask indexing costs ~4 ns per element, three
            # times over, which dominated when nearly every bar starts a trade.
            closed = np.flatnonzero(seg_p[:-1] != 0.0)
            if closed.size:
                starts = st + a
                out_r.append(r.take(closed))
                entry = np.empty(k, dtype=np.int64)
                entry[0] = c_start
                entry[1:] = starts[:-1]
                out_entry.append(entry.take(closed))
                out_exit.append(starts.take(closed))
            c_start = a + int(st[-1])
        # Mark to market, linear in the price within a segment:
        #   E_t = B·(1 − f|p| + p·(P_t/P_s − 1)) = B·(1 − f|p| − p) + (B·p/P_s)·P_t
        intercept = np.subtract(1.0, fee, out=fee)
        intercept -= seg_p
        intercept *= base
        slope = np.divide(seg_p, seg_px)
        slope *= base
        eq = equity[a:b]
        if 4 * k < m:  # long segments: np.repeat copies runs
            lengths = np.diff(st, prepend=0, append=m)
            np.multiply(np.repeat(slope, lengths), px, out=eq)
            eq += np.repeat(intercept, lengths)
        else:
            # Short segments (a position change on most bars): np.repeat costs ~4 ns
            # per bar each time; one segment-of-bar index (a running max of segment
            # numbers written at their first bars, 0 = the carried one) serves both.
            seg_of_bar = np.zeros(m, dtype=np.intp)
            seg_of_bar[st] = np.arange(1, k + 1)
            np.maximum.accumulate(seg_of_bar, out=seg_of_bar)
            np.multiply(slope.take(seg_of_bar), px, out=eq)
            eq += intercept.take(seg_of_bar)
        c_p, c_px, c_base = float(seg_p[-1]), float(seg_px[-1]), float(base[-1])
        prev = x[-1]
    if c_p != 0.0:  # still open: closed at the last bar's close, exit fee included
        r_last = c_p * (float(price[-1]) / c_px - 1.0) - 2.0 * f * abs(c_p)
        equity[-1] = c_base * (1.0 + r_last)
        out_r.append(np.array([r_last]))
        out_entry.append(np.array([c_start], dtype=np.int64))
        out_exit.append(np.array([n - 1], dtype=np.int64))
    if not out_r:
        empty = np.empty(0, dtype=np.int64)
        return equity, np.empty(0), empty, empty.copy()
    return equity, np.concatenate(out_r), np.concatenate(out_entry), np.concatenate(out_exit)


def _is_datetime_index(index: Any) -> bool:
    return index is not None and type(index).__name__ == "DatetimeIndex"


def _metrics(
    equity: np.ndarray, trade_returns: np.ndarray, ppy: float, notes: list[str]
) -> dict[str, Any]:
    """All bar-based metrics in one pass over blocks of the equity curve.

    Per-bar returns are never materialized at full length: each block's returns are
    folded into a running (count, mean, M2) with Chan et al.'s pairwise update, which
    is as stable as a two-pass variance; the drawdown peak is carried across blocks.
    """
    n = len(equity)
    rbuf = np.empty(min(n, _BLOCK))
    pbuf = np.empty(min(n, _BLOCK))
    count, mean, m2 = 0, 0.0, 0.0
    finite = True
    lowest = math.inf
    peak_carry = 1.0  # running peak starts at 1.0, the equity before the first bar
    worst_ratio = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(0, n, _BLOCK):
            eq = equity[a : a + _BLOCK]
            lowest = min(lowest, float(eq.min()))
            peak = np.maximum.accumulate(eq, out=pbuf[: len(eq)])
            np.maximum(peak, peak_carry, out=peak)
            peak_carry = float(peak[-1])
            worst_ratio = min(worst_ratio, float(np.divide(eq, peak, out=peak).min()))
            # returns of bars max(a,1)..a+len-1 against the bar before each
            lo = max(a, 1)
            hi = a + len(eq)
            if hi <= lo or not finite:
                continue
            r = np.divide(equity[lo:hi], equity[lo - 1 : hi - 1], out=rbuf[: hi - lo])
            r -= 1.0
            block_sum = float(r.sum())
            if not math.isfinite(block_sum):
                finite = False
                continue
            nb = hi - lo
            mb = block_sum / nb
            r -= mb
            m2b = float(np.dot(r, r))
            total = count + nb
            delta = mb - mean
            mean += delta * nb / total
            m2 += m2b + delta * delta * count * nb / total
            count = total
    if not lowest > 0.0:
        notes.append("equity reached zero or below (ruin): later returns are not meaningful")
    sharpe = 0.0
    if not finite:
        notes.append("per-bar returns not finite (equity hit 0): sharpe set to 0")
    elif count >= 2:
        sd = math.sqrt(m2 / (count - 1))  # ddof = 1
        if returns_vary(sd, mean):
            sharpe = mean / sd * math.sqrt(ppy)

    n_trades = int(trade_returns.size)
    win_mask = trade_returns > 0.0
    loss_mask = trade_returns < 0.0
    n_wins = int(np.count_nonzero(win_mask))
    gains = float(np.sum(trade_returns, where=win_mask))
    losses = float(np.sum(trade_returns, where=loss_mask))
    return {
        "sharpe": sharpe,
        "win_rate": n_wins / n_trades if n_trades else 0.0,
        "profit_factor": gains / -losses if np.any(loss_mask) else None,
        "max_drawdown": max(0.0, 1.0 - worst_ratio),
        "trades": n_trades,
        "total_return": float(equity[-1] - 1.0),
    }
