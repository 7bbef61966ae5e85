"""Distribution drift as pure statistics: reference summaries, PSI and KS, the verdict.

Owns `build_reference` (the summary of training data a version keeps),
`compare_to_reference` (recent feature rows and predictions against it) and the
statistics under them. No database, no artifacts, no models: numbers in, numbers out
(storing a reference is app.ml.drift_reference; the check that reads the market and
writes a report is app.services.checks.drift).

A reference summarizes each feature and the prediction distribution without keeping the
data: quantile bin edges (deciles by default) with the reference proportions per bin for
PSI, plus a 101-point quantile grid with the reference CDF on it for the KS statistic.

Judging drift:
- PSI = Σ (cur − ref) · ln(cur / ref) over the reference bins, proportions floored at
  `PSI_EPSILON` so an empty bin costs a large but finite amount. A feature drifted when
  its PSI exceeds the threshold (0.2 by default, the usual "significant shift" level)
  *beyond its sampling noise*: two samples of one distribution exceed
  χ²₀.₉₅(bins − 1)·(1/n_ref + 1/n_cur) only 5 % of the time, with n the effective sizes
  of the autocorrelated series (`effective_size`). Without that, slow features (48-bar
  returns, MACD) on a few hundred recent bars "drift" on unchanged data. Reports keep
  the raw PSI, the noise floor and the excess.
- KS statistic D = max |F_cur − F_ref| on the reference quantile grid (within 0.01 of
  the exact D). It is reported as an effect size (share of probability mass that moved)
  and flagged above `ks_threshold`; its p-value is deliberately not used, because with
  thousands of bars any negligible difference is "significant".
- The model drifted when the share of drifted features reaches the configured share, or
  when the prediction distribution's PSI exceeds the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_BINS",
    "PSI_EPSILON",
    "REFERENCE_SCHEMA",
    "DriftResult",
    "FeatureDrift",
    "build_reference",
    "compare_to_reference",
    "distribution_summary",
    "grid_slots",
    "ks_on_grid",
    "psi",
]

REFERENCE_SCHEMA = "clm-drift-reference-1"
DEFAULT_BINS = 10
QUANTILE_POINTS = 101
# Floor for empty bins: ln(1e-4) keeps an emptied bin costly without dividing by zero.
PSI_EPSILON = 1e-4
DEFAULT_KS_THRESHOLD = 0.1
# Fewer recent rows than this and the comparison is noise: the check reports it and
# decides nothing.
MIN_CURRENT_ROWS = 100
PREDICTIONS_KEY = "__predictions__"


# -- summaries --------------------------------------------------------------------------
def _finite_values(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    return x if finite.all() else x[finite]


def distribution_summary(values: Any, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Binned summary of one distribution (finite values only).

    quantiles: the 101-point (percentile) grid, deduplicated; cdf: the reference CDF
    (share <= q) on it, for KS. edges: the interior bin edges, taken from that grid at the
    percentiles nearest to k/bins (deciles by default) and deduplicated, so a feature
    with ties or a constant has fewer bins. Bins are right-closed: bin i holds v with
    edges[i-1] < v <= edges[i]. proportions: the reference share per bin
    (len(edges) + 1 values). Edges being grid points lets the check bin a large sample
    with one search per value (see `current_distribution`).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 100:
        raise ValueError(f"bins must be an int in [2, 100], got {bins!r}")
    x = _finite_values(values)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "rho1": 0.0, "edges": [], "proportions": [], "quantiles": [],
                "cdf": [], "mean": None, "std": None}
    q = np.quantile(x, np.linspace(0.0, 1.0, QUANTILE_POINTS))
    picks = np.unique(np.rint(np.arange(1, bins) * (QUANTILE_POINTS - 1) / bins).astype(int))
    edges = np.unique(q[picks])
    grid = np.unique(q)
    counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size + 1)
    cdf = np.searchsorted(np.sort(x), grid, side="right") / n
    return {
        "n": n,
        "rho1": lag1_autocorrelation(x),
        "edges": edges.tolist(),
        "proportions": (counts / n).tolist(),
        "quantiles": grid.tolist(),
        "cdf": cdf.tolist(),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if n > 1 else 0.0,
    }


def build_reference(
    features_frame: pd.DataFrame,
    predictions: Any | None = None,
    *,
    bins: int = DEFAULT_BINS,
    windows: Mapping[str, Any] | None = None,
    train_start: Any = None,
    train_end: Any = None,
) -> dict[str, Any]:
    """Reference summary of the training data: one binned summary per feature column of
    `features_frame` and, when given, of the model's predicted probabilities.

    Call it at final fit with the rows the model was trained on (features as built by
    app.ml.features) and its predictions on them (out-of-sample ones when available: they
    are what the live model's outputs look like). JSON-ready; store it with
    app.ml.drift_reference.save_reference and put the returned pointer in the version's
    lineage under "drift_reference".
    """
    if not isinstance(features_frame, pd.DataFrame):
        raise ValueError("features_frame must be a DataFrame of feature columns")
    feats = {str(c): distribution_summary(features_frame[c].to_numpy(), bins)
             for c in features_frame.columns}
    index = features_frame.index
    first = train_start if train_start is not None else (index[0] if len(index) else None)
    last = train_end if train_end is not None else (index[-1] if len(index) else None)
    return {
        "schema": REFERENCE_SCHEMA,
        "bins": bins,
        "rows": len(features_frame),
        "train_start": _iso(first),
        "train_end": _iso(last),
        "windows": {k: list(v) for k, v in windows.items()} if windows else None,
        "features": feats,
        "predictions": (distribution_summary(predictions, bins)
                        if predictions is not None else None),
    }


def _iso(value: Any) -> str | None:
    if value is None or not isinstance(value, datetime | pd.Timestamp | str):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


# -- statistics -------------------------------------------------------------------------
def lag1_autocorrelation(x: np.ndarray, max_points: int = 200_000) -> float:
    """Lag-1 autocorrelation of a series (its latest `max_points` values), clamped to
    [0, 0.999]; 0 when undefined."""
    x = x[-max_points:]
    if x.size < 3:
        return 0.0
    d = x - x.mean()
    denom = float(np.dot(d, d))
    if denom <= 0 or not math.isfinite(denom):
        return 0.0
    rho = float(np.dot(d[:-1], d[1:])) / denom
    return min(max(rho, 0.0), 0.999) if math.isfinite(rho) else 0.0


def effective_size(n: int, rho1: float) -> float:
    """Effective number of independent observations of an AR(1)-like series:
    n·(1 − ρ)/(1 + ρ). Features over overlapping windows (48-bar returns, MACD) are
    strongly autocorrelated, so 500 bars of them carry the information of a handful."""
    if n <= 0:
        return 0.0
    rho = min(max(rho1, 0.0), 0.999)
    return max(1.0, n * (1.0 - rho) / (1.0 + rho))


def chi2_quantile(df: int, z: float = 1.6448536) -> float:
    """Upper quantile of χ² with `df` degrees of freedom (Wilson–Hilferty; z = 1.645 is
    the 95 % point): within 1 % of the exact value for df >= 3, no scipy needed."""
    if df <= 0:
        return 0.0
    h = 2.0 / (9.0 * df)
    return df * max(1.0 - h + z * math.sqrt(h), 0.0) ** 3


def psi_noise(bins: int, n_eff_reference: float, n_eff_current: float) -> float:
    """PSI that two samples of the *same* distribution exceed only 5 % of the time:
    PSI is a symmetrized χ²/N statistic, so ≈ χ²₀.₉₅(bins − 1) · (1/n_ref + 1/n_cur) with
    effective sample sizes. Drift is judged on the PSI in excess of this floor, so slow
    features on short windows do not cry wolf."""
    if n_eff_reference <= 0 or n_eff_current <= 0:
        return math.inf
    return chi2_quantile(max(bins - 1, 0)) * (1.0 / n_eff_reference + 1.0 / n_eff_current)


def current_proportions(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Share of `values` in each reference bin (right-closed, as `distribution_summary`)."""
    e = np.asarray(edges, dtype=np.float64)
    if values.size == 0:
        return np.zeros(e.size + 1)
    counts = np.bincount(np.searchsorted(e, values, side="left"), minlength=e.size + 1)
    return counts / values.size


# Cells of the lookup table that bins large samples (see `grid_slots`).
_LOOKUP_CELLS = 1 << 16
_LOOKUP_MIN_ROWS = 50_000


def grid_slots(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`np.searchsorted(grid, values, side="left")`, about 3× faster on large samples.

    A binary search per value mispredicts branches at every level. Instead, values are
    mapped arithmetically onto 65,536 equal cells spanning the grid; a cell with no grid
    point in it (or within a hair of its borders) has one answer, looked up from a table.
    Values in the few cells holding a grid point, or at/above the last one, get the exact
    binary search. Same result, exactly.
    """
    lo, hi = float(grid[0]), float(grid[-1])
    if values.size < _LOOKUP_MIN_ROWS or not hi > lo:
        return np.searchsorted(grid, values, side="left")
    cells = _LOOKUP_CELLS
    scale = cells / (hi - lo)
    eps = (hi - lo) / cells * 1e-6
    bounds = lo + np.arange(cells + 1) / scale
    first = np.searchsorted(grid, bounds[:-1] - eps, side="left")
    last = np.searchsorted(grid, bounds[1:] + eps, side="right")
    table = np.empty(cells + 2, dtype=np.intp)
    table[0] = 0  # below the grid: no grid point is smaller
    table[1:cells + 1] = np.where(first == last, first, -1)
    table[cells + 1] = -1  # at or above the last grid point: decided exactly
    pos = values - lo
    pos *= scale
    np.floor(pos, out=pos)
    np.clip(pos, -1, cells, out=pos)
    index = pos.astype(np.intp)
    index += 1
    out = table[index]
    unsure = out < 0
    if unsure.any():
        out[unsure] = np.searchsorted(grid, values[unsure], side="left")
    return out


def current_distribution(summary: Mapping[str, Any], values: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(proportions per reference bin, CDF on the reference grid) of `values`.

    One binary search per value against the percentile grid; bin counts are sums of grid
    slots because the edges are grid points (fallback: a second search on the edges).
    """
    grid = np.asarray(summary.get("quantiles") or [], dtype=np.float64)
    edges = np.asarray(summary.get("edges") or [], dtype=np.float64)
    n = values.size
    if n == 0:
        return np.zeros(edges.size + 1), np.zeros(grid.size)
    if grid.size == 0:
        return current_proportions(edges, values), np.zeros(0)
    slots = grid_slots(grid, values)  # grid[s-1] < v <= grid[s]
    per_slot = np.bincount(slots, minlength=grid.size + 1)
    cdf = np.cumsum(per_slot)[: grid.size] / n  # share <= grid[k]
    pos = np.searchsorted(grid, edges)
    if edges.size == 0 or (pos.max() < grid.size and np.array_equal(grid[pos], edges)):
        # v is above edge e = grid[p] exactly when p < s: bin of slot s = #{p < s}.
        bin_of_slot = np.searchsorted(pos, np.arange(grid.size + 1), side="left")
        counts = np.bincount(bin_of_slot, weights=per_slot, minlength=edges.size + 1)
        return counts / n, cdf
    return current_proportions(edges, values), cdf


def psi(reference: Sequence[float], current: Sequence[float],
        epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), epsilon)
    c = np.maximum(np.asarray(current, dtype=np.float64), epsilon)
    if r.shape != c.shape:
        raise ValueError(f"bins differ: reference {r.shape} vs current {c.shape}")
    return float(np.sum((c - r) * np.log(c / r)))


def ks_on_grid(summary: Mapping[str, Any], values: np.ndarray) -> float:
    """KS statistic D between the reference CDF (on its quantile grid) and `values`."""
    grid = summary.get("quantiles") or []
    if len(grid) == 0 or values.size == 0:
        return 0.0
    _, cdf = current_distribution(summary, values)
    return _ks(summary, cdf)


def _ks(summary: Mapping[str, Any], cur_cdf: np.ndarray) -> float:
    ref_cdf = np.asarray(summary.get("cdf") or [], dtype=np.float64)
    if ref_cdf.size == 0 or cur_cdf.size != ref_cdf.size:
        return 0.0
    return float(np.max(np.abs(cur_cdf - ref_cdf)))


@dataclass
class FeatureDrift:
    """PSI and KS of one feature (or of the predictions) against its reference."""

    name: str
    psi: float | None
    ks: float | None
    drifted: bool
    ks_large: bool
    rows: int
    reference_rows: int
    psi_noise: float | None = None  # expected PSI from sampling alone (see `psi_noise`)
    psi_excess: float | None = None  # psi − psi_noise: what is judged against the threshold
    effective_rows: float | None = None
    note: str | None = None


@dataclass
class DriftResult:
    """Outcome of one comparison; `to_dict()` is what a drift report stores."""

    drifted: bool
    reasons: list[str]
    features: list[FeatureDrift]
    features_drifted: int
    features_total: int
    share_drifted: float
    prediction: FeatureDrift | None
    psi_threshold: float
    feature_share: float
    ks_threshold: float
    rows: int
    sufficient: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _judge(name: str, summary: Mapping[str, Any], values: np.ndarray,
           psi_threshold: float, ks_threshold: float) -> FeatureDrift:
    x = _finite_values(values)
    ref_n = int(summary.get("n") or 0)
    if ref_n == 0:
        return FeatureDrift(name, None, None, False, False, int(x.size), 0,
                            note="no reference values")
    if x.size == 0:
        return FeatureDrift(name, None, None, False, False, 0, ref_n, note="no current values")
    props, cdf = current_distribution(summary, x)
    value = psi(summary["proportions"], props)
    d = _ks(summary, cdf)
    n_cur = effective_size(int(x.size), lag1_autocorrelation(x))
    noise = psi_noise(len(summary["proportions"]),
                      effective_size(ref_n, float(summary.get("rho1") or 0.0)), n_cur)
    excess = value - noise
    return FeatureDrift(name, value, d, excess > psi_threshold, d > ks_threshold,
                        int(x.size), ref_n, psi_noise=noise, psi_excess=excess,
                        effective_rows=n_cur)


def compare_to_reference(
    reference: Mapping[str, Any],
    features_frame: pd.DataFrame,
    predictions: Any | None = None,
    *,
    psi_threshold: float = 0.2,
    feature_share: float = 0.3,
    ks_threshold: float = DEFAULT_KS_THRESHOLD,
    min_rows: int = MIN_CURRENT_ROWS,
) -> DriftResult:
    """Compare recent feature rows (and predictions) with a `build_reference` summary.

    Features missing from `features_frame` are reported (note) and not counted.
    Fewer than `min_rows` complete rows → `sufficient=False`, never drifted.
    """
    if not (0.0 < feature_share <= 1.0):
        raise ValueError(f"feature_share must be in (0, 1], got {feature_share!r}")
    if not (psi_threshold > 0 and math.isfinite(psi_threshold)):
        raise ValueError(f"psi_threshold must be a positive number, got {psi_threshold!r}")
    ref_features: Mapping[str, Any] = reference.get("features") or {}
    rows = len(features_frame)
    sufficient = rows >= min_rows
    judged: list[FeatureDrift] = []
    for name, summary in ref_features.items():
        if name not in features_frame.columns:
            judged.append(FeatureDrift(name, None, None, False, False, 0,
                                       int(summary.get("n") or 0),
                                       note="missing in current data"))
            continue
        judged.append(_judge(name, summary, features_frame[name].to_numpy(),
                             psi_threshold, ks_threshold))
    counted = [f for f in judged if f.psi is not None]
    n_drifted = sum(f.drifted for f in counted)
    share = n_drifted / len(counted) if counted else 0.0
    prediction = None
    ref_pred = reference.get("predictions")
    if predictions is not None and ref_pred:
        prediction = _judge(PREDICTIONS_KEY, ref_pred, np.asarray(predictions),
                            psi_threshold, ks_threshold)
    reasons: list[str] = []
    if sufficient:
        if counted and share >= feature_share:
            names = ", ".join(f.name for f in counted if f.drifted)
            reasons.append(
                f"{n_drifted}/{len(counted)} features ({share:.0%}) have PSI above its "
                f"sampling noise by > {psi_threshold:g} (share threshold "
                f"{feature_share:.0%}): {names}"
            )
        if prediction is not None and prediction.drifted:
            reasons.append(
                f"prediction distribution PSI {prediction.psi:.3f} (noise "
                f"{prediction.psi_noise:.3f}) exceeds it by > {psi_threshold:g}"
            )
    return DriftResult(
        drifted=bool(reasons), reasons=reasons, features=judged,
        features_drifted=n_drifted, features_total=len(counted), share_drifted=share,
        prediction=prediction, psi_threshold=psi_threshold, feature_share=feature_share,
        ks_threshold=ks_threshold, rows=rows, sufficient=sufficient,
    )


