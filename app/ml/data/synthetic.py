"""Seeded synthetic OHLCV generators — SYNTHETIC data for tests, demos and benchmarks.

Owns `generate_ohlcv` (kinds "random_walk", "planted", "regime_switch") and
`generate_regime_series` (regime_switch plus its true regime labels). Nothing here is
market data: every series is drawn from a documented random process with a seed, so the
same arguments always give the same frame (numpy PCG64 via `default_rng(seed)`).

Frame shape (the market data contract): index `timestamp` (UTC DatetimeIndex, one bar
per `timeframe`, strictly increasing), float64 columns open, high, low, close, volume,
with low ≤ min(open, close) ≤ max(open, close) ≤ high and volume > 0.

Kinds
- random_walk: iid Gaussian log returns (default 0.5 %/bar, no drift). Nothing is
  predictable from the past, so any honest evaluation must find no edge.
- planted: the drift of the log returns switches sign in alternating blocks of random
  length (default 72–192 bars, |drift| = 0.6 × vol). A causal model can learn "recent
  trend continues" from past returns; this is the structure the gate tests expect a
  model to find through 5 bps fees.
- regime_switch: blocks of four regimes (calm_up, calm_down, volatile_up, volatile_down)
  where both drift and volatility change; see `generate_regime_series` for the labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from app.core.domain import timeframe_seconds

__all__ = [
    "KINDS",
    "REGIMES",
    "generate_ohlcv",
    "generate_regime_series",
]

KINDS = ("random_walk", "planted", "regime_switch")
REGIMES = ("calm_up", "calm_down", "volatile_up", "volatile_down")

_DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

# Options per kind with their defaults; anything else passed as **kw is refused.
_COMMON_OPTIONS: dict[str, Any] = {"price0": 100.0, "base_volume": 1_000.0}
_KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "random_walk": {"vol": 0.005, "drift": 0.0},
    "planted": {"vol": 0.005, "drift_ratio": 0.6, "block_min": 72, "block_max": 192},
    "regime_switch": {
        "calm_vol": 0.003,
        "volatile_vol": 0.012,
        "drift": 0.0006,
        "block_min": 150,
        "block_max": 400,
        "blocks": None,
    },
}


def _options(kind: str, kw: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {**_COMMON_OPTIONS, **_KIND_OPTIONS[kind]}
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for synthetic kind {kind!r}; allowed: {sorted(allowed)}"
        )
    opts = {**allowed, **kw}
    for name in ("price0", "base_volume", "vol", "calm_vol", "volatile_vol"):
        if name in opts and not (float(opts[name]) > 0):
            raise ValueError(f"{name} must be > 0, got {opts[name]!r}")
    if "block_min" in opts:
        lo, hi = opts["block_min"], opts["block_max"]
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(f"need 1 <= block_min <= block_max (ints), got {lo!r}, {hi!r}")
    return opts


def _check_common(n_bars: int, timeframe: str, start: datetime) -> pd.DatetimeIndex:
    if isinstance(n_bars, bool) or not isinstance(n_bars, int | np.integer) or n_bars < 1:
        raise ValueError(f"n_bars must be an int >= 1, got {n_bars!r}")
    step = timeframe_seconds(timeframe)  # ValueError names the allowed timeframes
    if not isinstance(start, datetime) or start.tzinfo is None:
        raise ValueError(f"start must be a timezone-aware datetime, got {start!r}")
    return pd.date_range(
        start=pd.Timestamp(start).tz_convert("UTC"),
        periods=int(n_bars),
        freq=pd.Timedelta(seconds=step),
        name="timestamp",
    )


def _block_lengths(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """Random block lengths in [lo, hi] covering at least n bars."""
    count = n // lo + 2
    lengths = rng.integers(lo, hi + 1, size=count)
    return lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]


def _assemble(
    rng: np.random.Generator,
    index: pd.DatetimeIndex,
    log_ret: np.ndarray,
    bar_vol: np.ndarray,
    price0: float,
    base_volume: float,
) -> pd.DataFrame:
    """Turn per-bar log returns into a consistent OHLCV frame.

    open = previous close (no gaps); high/low extend the open–close body by half-normal
    wicks scaled by the bar's volatility; volume is log-normal and rises with |return|
    (as real volume does) — it carries no information about the *sign* of future moves.
    """
    n = len(log_ret)
    close = price0 * np.exp(np.cumsum(log_ret))
    open_ = np.empty(n)
    open_[0] = price0
    open_[1:] = close[:-1]
    upper_wick = np.abs(rng.normal(0.0, 0.5, n)) * bar_vol
    lower_wick = np.abs(rng.normal(0.0, 0.5, n)) * bar_vol
    high = np.maximum(open_, close) * np.exp(upper_wick)
    low = np.minimum(open_, close) * np.exp(-lower_wick)
    surprise = np.abs(log_ret) / bar_vol
    volume = base_volume * np.exp(0.3 * rng.normal(0.0, 1.0, n) + 0.25 * surprise)
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
        index=index,
        dtype=np.float64,
    )


def _random_walk(rng: np.random.Generator, n: int, o: dict[str, Any]) -> tuple[np.ndarray, ...]:
    vol = float(o["vol"])
    log_ret = rng.normal(float(o["drift"]), vol, n)
    return log_ret, np.full(n, vol)


def _planted(rng: np.random.Generator, n: int, o: dict[str, Any]) -> tuple[np.ndarray, ...]:
    vol = float(o["vol"])
    lengths = _block_lengths(rng, n, o["block_min"], o["block_max"])
    # Alternate the sign so every block boundary is a real switch; random first sign.
    first = 1.0 if rng.random() < 0.5 else -1.0
    signs = first * np.where(np.arange(len(lengths)) % 2 == 0, 1.0, -1.0)
    drift = np.repeat(signs * float(o["drift_ratio"]) * vol, lengths)[:n]
    log_ret = drift + rng.normal(0.0, vol, n)
    return log_ret, np.full(n, vol)


def _regime_path(rng: np.random.Generator, n: int, o: dict[str, Any]) -> np.ndarray:
    """Regime code (index into REGIMES) per bar."""
    blocks = o["blocks"]
    if blocks is not None:
        codes: list[np.ndarray] = []
        for item in blocks:
            if not (isinstance(item, Sequence) and len(item) == 2):
                raise ValueError(f"blocks items must be (regime, n_bars) pairs, got {item!r}")
            name, length = item
            if name not in REGIMES:
                raise ValueError(f"unknown regime {name!r} in blocks; known: {list(REGIMES)}")
            if not isinstance(length, int) or length < 1:
                raise ValueError(f"block length for {name!r} must be an int >= 1, got {length!r}")
            codes.append(np.full(length, REGIMES.index(name)))
        path = np.concatenate(codes)
        if len(path) != n:
            raise ValueError(f"blocks cover {len(path)} bars but n_bars is {n}")
        return path
    lengths = _block_lengths(rng, n, o["block_min"], o["block_max"])
    seq = [int(rng.integers(len(REGIMES)))]
    for _ in range(len(lengths) - 1):
        # Always move to a different regime so every boundary is a genuine change.
        step = int(rng.integers(1, len(REGIMES)))
        seq.append((seq[-1] + step) % len(REGIMES))
    return np.repeat(np.asarray(seq), lengths)[:n]


def _regime_switch(
    rng: np.random.Generator, n: int, o: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = _regime_path(rng, n, o)
    volatile = np.isin(path, [REGIMES.index("volatile_up"), REGIMES.index("volatile_down")])
    up = np.isin(path, [REGIMES.index("calm_up"), REGIMES.index("volatile_up")])
    bar_vol = np.where(volatile, float(o["volatile_vol"]), float(o["calm_vol"]))
    drift = np.where(up, 1.0, -1.0) * float(o["drift"])
    log_ret = drift + rng.normal(0.0, 1.0, n) * bar_vol
    return log_ret, bar_vol, path


def generate_ohlcv(
    kind: str,
    n_bars: int,
    timeframe: str = "1h",
    seed: int = 0,
    start: datetime = _DEFAULT_START,
    **kw: Any,
) -> pd.DataFrame:
    """A seeded SYNTHETIC OHLCV frame of `n_bars` bars of `timeframe` from `start` (UTC).

    kind: "random_walk" | "planted" | "regime_switch" (see the module docstring).
    Options (**kw), all kinds: price0=100.0, base_volume=1000.0.
      random_walk: vol=0.005 (std of log return per bar), drift=0.0.
      planted: vol=0.005, drift_ratio=0.6 (|drift| / vol), block_min=72, block_max=192.
      regime_switch: calm_vol=0.003, volatile_vol=0.012, drift=0.0006 (|drift| per bar),
        block_min=150, block_max=400, blocks=None or [(regime, n_bars), ...] summing to
        n_bars for a fixed regime path.
    Unknown kinds or options raise ValueError naming them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known: {list(KINDS)}")
    if kind == "regime_switch":
        frame, _ = generate_regime_series(n_bars, timeframe, seed, start, **kw)
        return frame
    index = _check_common(n_bars, timeframe, start)
    opts = _options(kind, kw)
    rng = np.random.default_rng(seed)
    make = _random_walk if kind == "random_walk" else _planted
    log_ret, bar_vol = make(rng, int(n_bars), opts)
    return _assemble(rng, index, log_ret, bar_vol, float(opts["price0"]),
                     float(opts["base_volume"]))


def generate_regime_series(
    n_bars: int,
    timeframe: str = "1h",
    seed: int = 0,
    start: datetime = _DEFAULT_START,
    **kw: Any,
) -> tuple[pd.DataFrame, pd.Series]:
    """SYNTHETIC regime-switching OHLCV and its true regime per bar.

    Returns (frame, regimes): `regimes` is a str Series named "regime" on the frame's
    index with values from REGIMES. Calm regimes use `calm_vol`, volatile ones
    `volatile_vol`; "up" regimes drift +`drift` per bar, "down" ones −`drift`.
    Options as for `generate_ohlcv(kind="regime_switch")`.
    """
    index = _check_common(n_bars, timeframe, start)
    opts = _options("regime_switch", kw)
    rng = np.random.default_rng(seed)
    log_ret, bar_vol, path = _regime_switch(rng, int(n_bars), opts)
    frame = _assemble(rng, index, log_ret, bar_vol, float(opts["price0"]),
                      float(opts["base_volume"]))
    regimes = pd.Series(np.asarray(REGIMES, dtype=object)[path], index=index, name="regime")
    return frame, regimes
