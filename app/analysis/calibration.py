"""Probability calibration as pure statistics: how far P(up) is from the rate it claims.

Owns `reliability` (the reliability curve over equal-width bins), `brier_score`,
`expected_calibration_error`, and Platt scaling (`fit_platt`, `apply_platt`): a logistic
map of the logit of P(up), two parameters fitted by Newton's method. Platt rather than
isotonic because the walk-forward's earlier folds give a few hundred labelled bars at
first: two parameters do not overfit them, and the map stays monotone, so a threshold's
meaning only shifts, it is never reordered. Which bars a map may be fitted on (never the
bars it is then judged on) is the caller's business: app.ml.diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["N_BINS", "Platt", "apply_platt", "brier_score", "calibration_summary",
           "expected_calibration_error", "fit_platt", "reliability"]

N_BINS = 10
_EPS = 1e-6


def _pairs(proba: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} must be 1-d, same length")
    keep = np.isfinite(p) & np.isfinite(y)
    return p[keep], y[keep]


def reliability(proba: Any, labels: Any, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """The reliability curve: per equal-width bin of P(up) in [0, 1], its bars, mean
    predicted probability and observed share of up labels (None in an empty bin)."""
    p, y = _pairs(proba, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # P = 1.0 belongs to the last bin, not to an eleventh.
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    out = []
    for k in range(n_bins):
        n = int(counts[k])
        out.append({"lower": float(edges[k]), "upper": float(edges[k + 1]), "count": n,
                    "mean_predicted": float(sum_p[k] / n) if n else None,
                    "observed_rate": float(sum_y[k] / n) if n else None})
    return out


def brier_score(proba: Any, labels: Any) -> float | None:
    """Mean squared difference between P(up) and the 0/1 label (None without bars)."""
    p, y = _pairs(proba, labels)
    return float(np.mean((p - y) ** 2)) if p.size else None


def expected_calibration_error(proba: Any, labels: Any, n_bins: int = N_BINS) -> float | None:
    """Σ over bins of (bin's share of bars) × |observed rate − mean predicted|."""
    bins = reliability(proba, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return None
    return float(sum(b["count"] / total * abs(b["observed_rate"] - b["mean_predicted"])
                     for b in bins if b["count"]))


def calibration_summary(proba: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """{"bins", "brier", "ece"}: the report's calibration figures."""
    return {"bins": reliability(proba, labels, n_bins), "brier": brier_score(proba, labels),
            "ece": expected_calibration_error(proba, labels, n_bins)}


@dataclass(frozen=True)
class Platt:
    """P' = sigmoid(a · logit(P) + b); the identity is a=1, b=0."""

    a: float = 1.0
    b: float = 0.0
    n: int = 0  # bars it was fitted on

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n}


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


def fit_platt(proba: Any, labels: Any, *, min_bars: int = 50, ridge: float = 1e-3,
              iterations: int = 50) -> Platt:
    """Platt scaling fitted by Newton's method on the log-loss (a small ridge keeps it
    finite when the labels are separable). Fewer than `min_bars` bars, or only one
    label: the identity, since there is nothing to learn a map from."""
    p, y = _pairs(proba, labels)
    if p.size < min_bars or y.min(initial=0.0) == y.max(initial=0.0):
        return Platt(n=int(p.size))
    x = _logit(p)
    w = np.array([1.0, 0.0])
    design = np.column_stack([x, np.ones_like(x)])
    prior = np.array([1.0, 0.0])  # shrink towards the identity, not towards zero
    for _ in range(iterations):
        z = design @ w
        q = 1.0 / (1.0 + np.exp(-z))
        grad = design.T @ (q - y) + ridge * p.size * (w - prior)
        hess = (design * (q * (1.0 - q))[:, None]).T @ design + ridge * p.size * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    if not np.all(np.isfinite(w)):
        return Platt(n=int(p.size))
    return Platt(a=float(w[0]), b=float(w[1]), n=int(p.size))


def apply_platt(platt: Platt, proba: Any) -> np.ndarray:
    """The calibrated probabilities (in (0, 1))."""
    p = np.asarray(proba, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(platt.a * _logit(p) + platt.b)))
