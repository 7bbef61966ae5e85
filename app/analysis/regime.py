"""Market regimes as pure statistics: labels per bar, a training frame's summary, the
current regime, the rows of one regime.

Owns `regime_labels` (a label per bar: volatility state × trend state),
`summarize_regimes` (what a version's lineage records about the regimes it was trained
in), `classify_current` (the regime of the latest bars) and `restrict_to_regime` (the
rows a regime-specific training uses). No database: the regime check that compares a
production version with the market is app.services.checks.regime.

Labels are `"{calm|volatile}_{up|down|flat}"`:
- volatility state: rolling std of 1-bar log returns over `vol_window` bars against a
  threshold. The threshold splits the series' log-volatility into two groups (Otsu's
  method: the cut that maximizes between-group variance). When the two groups are not
  clearly apart (means less than a factor 2 in volatility), the series has one state and
  the threshold sits at twice its median volatility instead, so a calm-only history
  still flags a later volatile stretch. A version stores its threshold in lineage, and
  the live check classifies new bars with that same threshold.
- trend state: t-statistic of the mean log return over `trend_window` (240) bars; above
  +`trend_t` (2) up, below −`trend_t` down, else flat (noise is called flat, not a trend).
Labels at bar t use bars ≤ t (trailing windows); only the threshold is fit on the
whole frame, which is fine because labels select training rows, they are not features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CONFIRM_BARS",
    "DEFAULT_TREND_T",
    "DEFAULT_TREND_WINDOW",
    "DEFAULT_VOL_WINDOW",
    "RegimeState",
    "classify_current",
    "regime_labels",
    "restrict_to_regime",
    "rolling_volatility",
    "summarize_regimes",
    "volatility_threshold",
]

DEFAULT_VOL_WINDOW = 48
# Long and strict on purpose: a label must describe a persistent state, or regime-specific
# training would chase noise on fragments of bars.
DEFAULT_TREND_WINDOW = 240
DEFAULT_TREND_T = 2.0
# The current regime must hold on this many of the latest bars (majority) to count.
CONFIRM_BARS = 24
# Two volatility groups closer than a factor 2 are one state (see the module docstring).
_MIN_SEPARATION = math.log(2.0)
REGIME_SCHEMA = "clm-regime-1"


def _log_returns(frame: pd.DataFrame) -> pd.Series:
    if not isinstance(frame, pd.DataFrame) or "close" not in frame.columns:
        raise ValueError("frame must be an OHLCV DataFrame with a 'close' column")
    close = frame["close"].astype(np.float64)
    return pd.Series(np.log(close.to_numpy()), index=frame.index).diff()


def rolling_volatility(frame: pd.DataFrame, vol_window: int = DEFAULT_VOL_WINDOW) -> pd.Series:
    """Trailing std (ddof 1) of 1-bar log returns over `vol_window` bars (NaN in warm-up)."""
    return _log_returns(frame).rolling(vol_window, min_periods=vol_window).std(ddof=1)


def volatility_threshold(volatility: pd.Series | np.ndarray) -> float:
    """Volatility above which a bar is "volatile" (see the module docstring)."""
    v = np.asarray(volatility, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise ValueError("no finite volatility values to fit a regime threshold on")
    lv = np.log(v)
    median = float(np.median(lv))
    fallback = math.exp(median + _MIN_SEPARATION)
    if v.size < 10 or float(lv.max() - lv.min()) < 1e-12:
        return fallback
    # Otsu on a 128-bin histogram of log-volatility.
    hist, edges = np.histogram(lv, bins=128)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    m0 = np.divide(s0, w0, out=np.zeros_like(s0), where=w0 > 0)
    m1 = np.divide(s0[-1] - s0, w1, out=np.zeros_like(s0), where=w1 > 0)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1]))
    if w0[k] == 0 or w1[k] == 0 or (m1[k] - m0[k]) < _MIN_SEPARATION:
        return fallback
    return float(math.exp(edges[k + 1]))


def regime_labels(
    frame: pd.DataFrame,
    *,
    vol_window: int = DEFAULT_VOL_WINDOW,
    trend_window: int = DEFAULT_TREND_WINDOW,
    trend_t: float = DEFAULT_TREND_T,
    vol_threshold: float | None = None,
) -> pd.Series:
    """Regime label per bar (object Series named "regime", None during the warm-up).

    `vol_threshold` None fits it on `frame` (`volatility_threshold`); pass a version's
    stored threshold to classify new bars the way its training bars were classified.
    """
    r = _log_returns(frame)
    vol = r.rolling(vol_window, min_periods=vol_window).std(ddof=1)
    threshold = volatility_threshold(vol) if vol_threshold is None else float(vol_threshold)
    mean = r.rolling(trend_window, min_periods=trend_window).mean()
    std = r.rolling(trend_window, min_periods=trend_window).std(ddof=1)
    t = (mean / (std / math.sqrt(trend_window))).where(std > 0, 0.0)
    vol_state = np.where(vol.to_numpy() > threshold, "volatile", "calm")
    trend_state = np.where(t.to_numpy() > trend_t, "up",
                           np.where(t.to_numpy() < -trend_t, "down", "flat"))
    labels = np.char.add(np.char.add(vol_state.astype(str), "_"), trend_state.astype(str))
    out = pd.Series(labels.astype(object), index=frame.index, name="regime")
    return out.where(vol.notna().to_numpy() & t.notna().to_numpy(), None)


def summarize_regimes(frame: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    """What lineage records about the regimes of a training frame: threshold, windows,
    share of each label and the dominant one."""
    vol_window = int(kw.get("vol_window", DEFAULT_VOL_WINDOW))
    trend_window = int(kw.get("trend_window", DEFAULT_TREND_WINDOW))
    trend_t = float(kw.get("trend_t", DEFAULT_TREND_T))
    vol = rolling_volatility(frame, vol_window)
    threshold = float(kw["vol_threshold"]) if kw.get("vol_threshold") else \
        volatility_threshold(vol)
    labels = regime_labels(frame, vol_window=vol_window, trend_window=trend_window,
                           trend_t=trend_t, vol_threshold=threshold).dropna()
    shares = labels.value_counts(normalize=True).sort_index()
    return {
        "schema": REGIME_SCHEMA,
        "vol_threshold": threshold,
        "vol_window": vol_window,
        "trend_window": trend_window,
        "trend_t": trend_t,
        "rows": int(labels.size),
        "shares": {str(k): float(v) for k, v in shares.items()},
        "dominant": str(shares.idxmax()) if len(shares) else None,
    }


@dataclass
class RegimeState:
    """The regime of the latest bars: label, how firmly it holds, and its inputs."""

    label: str | None
    share: float  # share of the last CONFIRM_BARS labelled bars that carry `label`
    volatility: float | None
    vol_threshold: float
    bars: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify_current(
    frame: pd.DataFrame, summary: Mapping[str, Any] | None = None,
    confirm_bars: int = CONFIRM_BARS,
) -> RegimeState:
    """The regime of the last `confirm_bars` bars (majority label), classified with the
    thresholds of `summary` (a `summarize_regimes` dict) when given."""
    s = dict(summary or {})
    vol_window = int(s.get("vol_window") or DEFAULT_VOL_WINDOW)
    threshold = s.get("vol_threshold")
    if threshold is None:
        threshold = volatility_threshold(rolling_volatility(frame, vol_window))
    labels = regime_labels(
        frame, vol_window=vol_window,
        trend_window=int(s.get("trend_window") or DEFAULT_TREND_WINDOW),
        trend_t=float(s.get("trend_t") or DEFAULT_TREND_T), vol_threshold=float(threshold),
    ).dropna()
    tail = labels.iloc[-confirm_bars:]
    vol = rolling_volatility(frame, vol_window).dropna()
    if tail.empty:
        return RegimeState(None, 0.0, None, float(threshold), 0)
    counts = tail.value_counts()
    return RegimeState(str(counts.index[0]), float(counts.iloc[0] / len(tail)),
                       float(vol.iloc[-1]) if len(vol) else None, float(threshold),
                       len(tail))


def restrict_to_regime(
    dataset: Any, frame: pd.DataFrame, regime: str, *, min_rows: int = 0
) -> Any:
    """The rows of an app.ml.evaluation.Dataset whose bar carries `regime` (labels fitted on
    `frame`, the raw bars the dataset was built from). Folds are then made over these rows,
    which stay in time order. ValueError when fewer than `min_rows` remain.

    The dataset is a dataclass: the copy is made with `dataclasses.replace`, so this
    module needs nothing from app.ml."""
    labels = regime_labels(frame).reindex(dataset.timestamps)
    mask = (labels == regime).to_numpy()
    kept = int(mask.sum())
    if kept < max(min_rows, 1):
        raise ValueError(
            f"only {kept} of {dataset.n_rows} bars are in regime {regime!r} "
            f"(need {max(min_rows, 1)}): widen dataset_span_days"
        )
    return dataclasses.replace(
        dataset, X=np.ascontiguousarray(dataset.X[mask]), y=dataset.y[mask],
        close=dataset.close[mask], timestamps=dataset.timestamps[mask],
        feature_names=list(dataset.feature_names),
    )
