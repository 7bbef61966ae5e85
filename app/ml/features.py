"""Causal, versioned feature set and next-h-bar direction labels.

Owns `FEATURE_SET_VERSION`, `DEFAULT_WINDOWS`, `build_features`, `feature_names` and
`make_labels`. Every feature at bar t is computed from bars 0..t only (shifts into the
past, trailing rolling windows, forward-recursive EWMs), vectorized with pandas/numpy.
Labels are the only thing here that looks into the future, by design.

Bump `FEATURE_SET_VERSION` whenever a formula changes: lineage records it, and a model
must be served with the exact feature set it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_WINDOWS",
    "FEATURE_SET_VERSION",
    "REQUIRED_COLUMNS",
    "build_features",
    "feature_names",
    "lag_count",
    "make_labels",
    "normalize_windows",
    "warmup_bars",
]

FEATURE_SET_VERSION = "fs-1"

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")

# Window lengths in bars, per feature family. The strategy search varies these.
DEFAULT_WINDOWS: dict[str, tuple[int, ...]] = {
    "returns": (1, 3, 6, 12, 24, 48),  # log return over k bars
    "volatility": (12, 48),  # rolling std of 1-bar log returns
    "rsi": (14,),  # Wilder RSI
    "macd": (12, 26, 9),  # (fast, slow, signal) EMA spans — exactly three values
    "volume_z": (24,),  # z-score of log volume vs its trailing window
    "range": (24,),  # trailing mean of log(high/low)
    "zscore": (24,),  # (close − trailing mean) / trailing std
    # The last L one-bar log returns as columns lag_1..lag_L: the input window of the
    # sequence models (forecasters, RL policies). Empty by default — the tabular models
    # don't use it, and an empty family adds no column, so fs-1 is unchanged for them.
    "lags": (),
}

MAX_LAGS = 1024

# Smallest window each family accepts (a std needs at least two points).
_MIN_WINDOW = {
    "returns": 1,
    "volatility": 2,
    "rsi": 2,
    "macd": 1,
    "volume_z": 2,
    "range": 1,
    "zscore": 2,
    "lags": 1,
}


def normalize_windows(windows: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """Validate `windows` and fill missing families from `DEFAULT_WINDOWS`.

    Values may be an int or a sequence of ints; they come back as sorted, de-duplicated
    tuples (except "macd", which keeps its (fast, slow, signal) order). Unknown families
    and bad values raise ValueError naming the family.
    """
    merged: dict[str, tuple[int, ...]] = dict(DEFAULT_WINDOWS)
    if windows is None:
        return merged
    if not isinstance(windows, Mapping):
        raise ValueError(f"windows must be a mapping of family -> window(s), got {windows!r}")
    for family, raw in windows.items():
        if family not in DEFAULT_WINDOWS:
            known = ", ".join(DEFAULT_WINDOWS)
            raise ValueError(f"unknown feature window family {family!r}; known: {known}")
        values = (raw,) if isinstance(raw, int | np.integer) else raw
        if not isinstance(values, Sequence | np.ndarray) or isinstance(values, str):
            raise ValueError(f"windows[{family!r}] must be an int or a list of ints, got {raw!r}")
        ints: list[int] = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ValueError(f"windows[{family!r}] must contain ints, got {v!r}")
            if int(v) < _MIN_WINDOW[family]:
                raise ValueError(
                    f"windows[{family!r}] values must be >= {_MIN_WINDOW[family]}, got {int(v)}"
                )
            ints.append(int(v))
        if family == "macd":
            if len(ints) != 3:
                raise ValueError(
                    f"windows['macd'] must be (fast, slow, signal), got {list(ints)}"
                )
            if ints[0] >= ints[1]:
                raise ValueError(
                    f"windows['macd'] fast span must be < slow span, got {ints[0]} >= {ints[1]}"
                )
            merged[family] = tuple(ints)
        elif family == "lags":
            # One count (the window length), or none: lag_1..lag_L are all present.
            if len(set(ints)) > 1 or (ints and ints[0] > MAX_LAGS):
                raise ValueError(f"windows['lags'] must be one count in [1, {MAX_LAGS}] (the "
                                 f"number of lagged returns), got {list(ints)}")
            merged[family] = tuple(sorted(set(ints)))
        else:
            if not ints:
                raise ValueError(f"windows[{family!r}] must not be empty")
            merged[family] = tuple(sorted(set(ints)))
    return merged


def feature_names(windows: Mapping[str, Any] | None = None) -> list[str]:
    """Column names `build_features` produces for `windows`, in output order."""
    w = normalize_windows(windows)
    fast, slow, sig = w["macd"]
    names = ["body", "hl_range", "close_loc"]
    names += [f"ret_{k}" for k in w["returns"]]
    names += [f"vol_{k}" for k in w["volatility"]]
    names += [f"rsi_{k}" for k in w["rsi"]]
    names += [f"macd_{fast}_{slow}", f"macd_signal_{fast}_{slow}_{sig}",
              f"macd_hist_{fast}_{slow}_{sig}"]
    names += [f"volume_z_{k}" for k in w["volume_z"]]
    names += [f"range_{k}" for k in w["range"]]
    names += [f"zscore_{k}" for k in w["zscore"]]
    names += [f"lag_{k}" for k in range(1, lag_count(w) + 1)]
    return names


def lag_count(windows: Mapping[str, Any] | None = None) -> int:
    """L, the number of lagged one-bar returns (0 when the family is empty)."""
    lags = normalize_windows(windows)["lags"]
    return int(lags[0]) if lags else 0


def warmup_bars(windows: Mapping[str, Any] | None = None) -> int:
    """Number of leading bars whose features are NaN (the longest look-back)."""
    w = normalize_windows(windows)
    _fast, slow, sig = w["macd"]
    return max(
        max(w["returns"]),
        max(w["volatility"]),  # std over k returns needs k+1 closes
        max(w["rsi"]),
        slow + sig - 2,
        max(w["volume_z"]) - 1,
        max(w["range"]) - 1,
        max(w["zscore"]) - 1,
        lag_count(w),  # lag_L at bar t is the return into bar t − L + 1
    )


def _check_frame(frame: pd.DataFrame) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing column(s) {missing}; need {list(REQUIRED_COLUMNS)}")
    if isinstance(frame.index, pd.DatetimeIndex) and not frame.index.is_monotonic_increasing:
        raise ValueError("frame index must be increasing in time (sort it first)")
    for col in ("open", "high", "low", "close"):
        values = frame[col].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise ValueError(
                f"column {col!r} must be > 0; row {int(bad[0])} ({frame.index[bad[0]]}) "
                f"is {values[bad[0]]!r}"
            )
    volume = frame["volume"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(volume < 0)
    if bad.size:
        raise ValueError(
            f"column 'volume' must be >= 0; row {int(bad[0])} ({frame.index[bad[0]]}) "
            f"is {volume[bad[0]]!r}"
        )


def _safe_ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    """num / den, with 0 where den is 0 (a flat window carries no signal, not infinity)."""
    out = num / den
    return out.mask((den == 0) & num.notna(), 0.0)


def build_features(frame: pd.DataFrame, windows: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Compute the feature set `FEATURE_SET_VERSION` ("fs-1") on an OHLCV frame.

    Columns (k, w = window lengths in bars from `windows`, defaults in DEFAULT_WINDOWS):
      body             log(close / open) of the bar
      hl_range         log(high / low) of the bar
      close_loc        (close − low) / (high − low), 0.5 when high == low
      ret_k            log(close_t / close_{t−k})
      vol_w            std (ddof 1) of the last w one-bar log returns
      rsi_w            Wilder RSI (EWM α = 1/w of gains and losses of log returns), 0–100
      macd_f_s         (EMA_f(close) − EMA_s(close)) / close
      macd_signal_f_s_g  EMA_g of macd_f_s;  macd_hist_f_s_g = macd − signal
      volume_z_w       z-score of log1p(volume) against its trailing w bars (0 if flat)
      range_w          mean of log(high / low) over the last w bars
      zscore_w         (close − mean of last w closes) / their std (0 if flat)
      lag_k            the one-bar log return k − 1 bars ago (k = 1..L, L = windows["lags"])

    All are scale-free so a model generalizes across price levels. Causal by
    construction: only shifts into the past, trailing windows and forward-recursive EWMs
    (adjust=False), so changing any bar after t leaves row t bit-for-bit identical.
    Warm-up rows (before a window is full) are NaN — see `warmup_bars`. The index is the
    input's index; values are float64.
    """
    _check_frame(frame)
    w = normalize_windows(windows)
    index = frame.index
    o = frame["open"].astype(np.float64)
    h = frame["high"].astype(np.float64)
    lo = frame["low"].astype(np.float64)
    c = frame["close"].astype(np.float64)
    v = frame["volume"].astype(np.float64)
    n = len(frame)
    pos = np.arange(n)

    logc = pd.Series(np.log(c.to_numpy()), index=index)
    r1 = logc.diff()
    # EWMs need a defined first value; 0 at bar 0 is causal and masked by the warm-up.
    r1z = r1.fillna(0.0)
    hl = pd.Series(np.log(h.to_numpy() / lo.to_numpy()), index=index)

    cols: dict[str, pd.Series] = {}
    cols["body"] = pd.Series(np.log(c.to_numpy() / o.to_numpy()), index=index)
    cols["hl_range"] = hl
    span = h - lo
    cols["close_loc"] = ((c - lo) / span).where(span > 0, 0.5)

    for k in w["returns"]:
        cols[f"ret_{k}"] = logc - logc.shift(k)
    for k in w["volatility"]:
        cols[f"vol_{k}"] = r1.rolling(k, min_periods=k).std(ddof=1)
    for k in w["rsi"]:
        up = r1z.clip(lower=0.0).ewm(alpha=1.0 / k, adjust=False).mean()
        down = (-r1z).clip(lower=0.0).ewm(alpha=1.0 / k, adjust=False).mean()
        total = up + down
        rsi = (100.0 * up / total).where(total > 0, 50.0)
        cols[f"rsi_{k}"] = rsi.where(pos >= k)

    fast, slow, sig = w["macd"]
    ema_f = c.ewm(span=fast, adjust=False).mean()
    ema_s = c.ewm(span=slow, adjust=False).mean()
    macd = (ema_f - ema_s) / c
    signal = macd.ewm(span=sig, adjust=False).mean()
    cols[f"macd_{fast}_{slow}"] = macd.where(pos >= slow - 1)
    cols[f"macd_signal_{fast}_{slow}_{sig}"] = signal.where(pos >= slow + sig - 2)
    cols[f"macd_hist_{fast}_{slow}_{sig}"] = (macd - signal).where(pos >= slow + sig - 2)

    lv = pd.Series(np.log1p(v.to_numpy()), index=index)
    for k in w["volume_z"]:
        roll = lv.rolling(k, min_periods=k)
        cols[f"volume_z_{k}"] = _safe_ratio(lv - roll.mean(), roll.std(ddof=1))
    for k in w["range"]:
        cols[f"range_{k}"] = hl.rolling(k, min_periods=k).mean()
    for k in w["zscore"]:
        roll = c.rolling(k, min_periods=k)
        cols[f"zscore_{k}"] = _safe_ratio(c - roll.mean(), roll.std(ddof=1))

    for k in range(1, lag_count(w) + 1):
        cols[f"lag_{k}"] = r1.shift(k - 1)

    out = pd.DataFrame(cols, index=index)
    names = feature_names(w)
    assert list(out.columns) == names  # the documented order is part of the version
    return out.astype(np.float64)


def make_labels(frame: pd.DataFrame, horizon: int = 1) -> pd.Series:
    """Direction label: 1.0 if close[t+h] > close[t] else 0.0; NaN for the last h rows.

    This is the one deliberately forward-looking quantity; evaluation purges training
    rows whose label reaches into a test slice.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"label horizon must be an int >= 1, got {horizon!r}")
    if not isinstance(frame, pd.DataFrame) or "close" not in frame.columns:
        raise ValueError("frame must be a DataFrame with a 'close' column")
    c = frame["close"].astype(np.float64)
    future = c.shift(-int(horizon))
    label = (future > c).astype(np.float64).where(future.notna())
    label.name = f"label_h{int(horizon)}"
    return label
