"""Out-of-sample figures split up, as pure statistics: per group of bars, per trade, per
feature across folds.

Owns `group_metrics` (per regime or calendar period: bars, Sharpe, total and mean return,
accuracy, exposure), `period_labels` (month or quarter of each bar), `trade_distribution`
(holding times and returns of the trades) and `attribution_stability` (mean |SHAP| per
feature over folds, its spread, and how much the folds agree on the ranking). The series
come from app.ml.diagnostics, which runs the backtest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["attribution_stability", "group_metrics", "period_labels", "trade_distribution"]

# A period breakdown in months up to this many months of bars, quarters beyond (a table
# of 60 months helps nobody).
MAX_MONTHS = 24


def period_labels(stamps: pd.DatetimeIndex) -> tuple[str, np.ndarray]:
    """("month", ["2024-01", …]) or ("quarter", ["2024Q1", …]) for each timestamp."""
    stamps = pd.DatetimeIndex(stamps)
    if stamps.empty:
        return "month", np.array([], dtype=object)
    naive = stamps.tz_convert("UTC").tz_localize(None) if stamps.tz is not None else stamps
    months = naive.to_period("M")
    if len(months.unique()) <= MAX_MONTHS:
        return "month", months.astype(str).to_numpy(dtype=object)
    return "quarter", naive.to_period("Q").astype(str).to_numpy(dtype=object)


def _sharpe(r: np.ndarray, periods_per_year: float) -> float:
    if r.size < 2 or not np.all(np.isfinite(r)):
        return 0.0
    sd = float(np.std(r, ddof=1))
    mean = float(np.mean(r))
    if sd <= max(1e-10 * abs(mean), 1e-12):  # constant up to rounding, as in the backtest
        return 0.0
    return mean / sd * math.sqrt(periods_per_year)


def group_metrics(groups: Sequence[Any], bar_returns: np.ndarray, positions: np.ndarray,
                  hits: np.ndarray, periods_per_year: float,
                  key: str) -> list[dict[str, Any]]:
    """Per group, in order of first appearance. `groups[i]` is bar i's group (None: not
    counted), `bar_returns[i]` the strategy's return earned over bar i (from bar i's
    close to the next: the position decided at bar i; 0 on the last bar), `positions[i]`
    that position and `hits[i]` whether bar i's P(up) > 0.5 matched its label."""
    labels = np.asarray(groups, dtype=object)
    order = list(dict.fromkeys(g for g in labels.tolist() if g is not None))
    out = []
    for g in order:
        mask = labels == g
        r = bar_returns[mask]
        out.append({
            key: str(g),
            "bars": int(mask.sum()),
            "sharpe": _sharpe(r, periods_per_year),
            "total_return": float(np.prod(1.0 + r) - 1.0),
            "mean_return": float(np.mean(r)),
            "accuracy": float(np.mean(hits[mask])),
            "exposure": float(np.mean(positions[mask] != 0.0)),
        })
    return out


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"mean": float(np.mean(values)), "min": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}


def trade_distribution(trade_returns: np.ndarray, entries: np.ndarray, exits: np.ndarray,
                       *, bar_hours: float | None = None, n_bins: int = 10) -> dict[str, Any]:
    """Holding times (bars, and hours when the bar length is known) and returns of the
    trades, with a histogram of the returns."""
    r = np.asarray(trade_returns, dtype=np.float64)
    if r.size == 0:
        return {"count": 0, "holding_bars": None, "returns": None,
                "histogram": {"edges": [], "counts": []}}
    holding = (np.asarray(exits) - np.asarray(entries)).astype(np.float64)
    counts, edges = np.histogram(r, bins=n_bins)
    returns = _quantiles(r)
    returns["std"] = float(np.std(r, ddof=1)) if r.size > 1 else 0.0
    returns["win_rate"] = float(np.mean(r > 0))
    out: dict[str, Any] = {
        "count": int(r.size),
        "holding_bars": _quantiles(holding),
        "returns": returns,
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }
    if bar_hours is not None:
        out["holding_hours"] = {k: v * bar_hours for k, v in out["holding_bars"].items()}
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy()


def attribution_stability(per_fold: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Across folds: {"mean": {feature: mean over folds}, largest first, "stability":
    {feature: {"mean", "std", "cv"}}, "rank_correlation": mean Spearman correlation of
    the features' ranking between every pair of folds (None with fewer than 2 folds)}."""
    features = sorted({f for fold in per_fold for f in fold})
    if not features:
        return {"mean": {}, "stability": {}, "rank_correlation": None}
    table = np.array([[float(fold.get(f, 0.0)) for f in features] for fold in per_fold])
    means = table.mean(axis=0)
    stds = table.std(axis=0, ddof=1) if len(per_fold) > 1 else np.zeros(len(features))
    order = np.argsort(-means, kind="stable")
    stability = {features[i]: {"mean": float(means[i]), "std": float(stds[i]),
                               "cv": float(stds[i] / means[i]) if means[i] > 0 else None}
                 for i in order}
    correlations = []
    for i in range(len(per_fold)):
        for j in range(i + 1, len(per_fold)):
            a, b = _ranks(table[i]), _ranks(table[j])
            if np.std(a) > 0 and np.std(b) > 0:
                correlations.append(float(np.corrcoef(a, b)[0, 1]))
    return {"mean": {features[i]: float(means[i]) for i in order}, "stability": stability,
            "rank_correlation": float(np.mean(correlations)) if correlations else None}
