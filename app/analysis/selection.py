"""Pareto front, hypervolume and regime-aware choice among front members.

Owns the pure maths on evaluated candidates (plain dicts / arrays, no DB):
- `pareto_front`: indices of the non-dominated *feasible* points (constraints first, as
  in constrained domination: an infeasible point is never on the front);
- `hypervolume`: the volume the front dominates up to each objective's reference point
  (exact sweep in 2-D; Optuna's WFG implementation for more objectives);
- `choose`: pick one front member, scoring each on a chosen regime's OOS slice with a
  configurable preference (e.g. weigh drawdown more in high-volatility regimes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.analysis.objectives import OBJECTIVES

__all__ = [
    "DEFAULT_PREFERENCES",
    "choose",
    "dominates",
    "hypervolume",
    "pareto_front",
    "preference_for",
    "to_minimization",
]


def to_minimization(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Objective matrix with maximized columns negated (everything is then minimized)."""
    arr = np.asarray(values, dtype=np.float64).reshape(len(values), len(directions))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * signs


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """a dominates b: no worse in every objective and strictly better in one."""
    m = to_minimization([a, b], directions)
    return bool(np.all(m[0] <= m[1]) and np.any(m[0] < m[1]))


def pareto_front(
    values: Sequence[Sequence[float]],
    directions: Sequence[str],
    feasible: Sequence[bool] | None = None,
) -> list[int]:
    """Indices of the non-dominated points among the feasible ones (duplicates all kept)."""
    n = len(values)
    if n == 0:
        return []
    ok = np.ones(n, dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    m = to_minimization([values[i] for i in idx], directions)
    # Pairwise: j dominates i when m[j] <= m[i] everywhere and < somewhere.
    le = np.all(m[:, None, :] <= m[None, :, :], axis=2)  # le[j, i]: j <= i everywhere
    lt = np.any(m[:, None, :] < m[None, :, :], axis=2)
    dominated = np.any(le & lt, axis=0)
    return [int(i) for i in idx[~dominated]]


def hypervolume(
    values: Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
) -> float:
    """Hypervolume dominated by `values` (any points; dominated ones add nothing).

    Points that do not beat the reference in every objective are ignored.
    """
    if len(values) == 0:
        return 0.0
    m = to_minimization(values, directions)
    ref = to_minimization([reference], directions)[0]
    m = m[np.all(m < ref, axis=1)]
    if m.shape[0] == 0:
        return 0.0
    if m.shape[1] == 2:
        order = np.lexsort((m[:, 1], m[:, 0]))
        pts = m[order]
        volume = 0.0
        best_y = ref[1]
        for x, y in pts:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    from optuna._hypervolume import compute_hypervolume  # WFG, exact in any dimension

    return float(compute_hypervolume(m, ref))


def reference_point(names: Sequence[str]) -> list[float]:
    return [OBJECTIVES[n].reference for n in names]


# How much each metric counts when choosing inside the front, per regime family.
# Keys of a preference: metric names; values: weights (drawdown-like metrics are
# penalised, the rest rewarded). "volatile" applies to any regime whose name says so.
DEFAULT_PREFERENCES: dict[str, dict[str, float]] = {
    "default": {"sharpe": 1.0, "max_drawdown": 1.0},
    "volatile": {"sharpe": 1.0, "max_drawdown": 2.5},
}
_LOWER_IS_BETTER = {"max_drawdown", "turnover"}
_VOLATILE_MARKERS = ("volatile", "high_vol", "highvol", "crisis")


def preference_for(
    regime: str | None, preferences: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float]:
    """Weights for `regime`: its own entry, else "volatile" for volatile-sounding names,
    else "default"."""
    prefs = {**DEFAULT_PREFERENCES, **(preferences or {})}
    if regime is not None and regime in prefs:
        return dict(prefs[regime])
    if regime is not None and any(m in regime.lower() for m in _VOLATILE_MARKERS):
        return dict(prefs["volatile"])
    return dict(prefs["default"])


def _metric(c: Mapping[str, Any], regime: str | None, name: str) -> float | None:
    source = c.get("metrics") or {}
    if regime is not None:
        source = (c.get("regime_metrics") or {}).get(regime) or {}
    value = source.get(name)
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def choose(
    candidates: Sequence[Mapping[str, Any]],
    *,
    regime: str | None = None,
    preferences: Mapping[str, Mapping[str, float]] | None = None,
    min_regime_bars: int = 30,
) -> tuple[int | None, dict[str, Any]]:
    """Index of the best candidate for `regime` (None: all OOS bars), with the scores.

    Each candidate is a dict with "metrics" and "regime_metrics" ({regime: metrics}).
    Metrics are min-max normalised across the candidates, then combined with the
    regime's preference weights (lower-is-better metrics count negatively). Candidates
    with fewer than `min_regime_bars` OOS bars in the regime are not judged on it; if no
    candidate has enough, the choice falls back to all OOS bars.
    """
    if not candidates:
        return None, {"reason": "no candidates"}
    weights = preference_for(regime, preferences)
    use_regime = regime
    if regime is not None:
        enough = [((c.get("regime_metrics") or {}).get(regime) or {}).get("bars", 0)
                  >= min_regime_bars for c in candidates]
        if not any(enough):
            use_regime = None
    eligible = list(range(len(candidates)))
    if use_regime is not None:
        eligible = [i for i in eligible
                    if ((candidates[i].get("regime_metrics") or {}).get(use_regime) or {})
                    .get("bars", 0) >= min_regime_bars]
    scores = np.zeros(len(eligible))
    for name, weight in weights.items():
        raw = [_metric(candidates[i], use_regime, name) for i in eligible]
        finite = [v for v in raw if v is not None]
        if not finite:
            continue
        lo, hi = min(finite), max(finite)
        span = hi - lo
        for k, v in enumerate(raw):
            norm = 0.0 if v is None else ((v - lo) / span if span > 0 else 0.5)
            if v is None:
                norm = 1.0 if name in _LOWER_IS_BETTER else 0.0  # missing = worst
            scores[k] += -weight * norm if name in _LOWER_IS_BETTER else weight * norm
    best = int(eligible[int(np.argmax(scores))])
    return best, {
        "regime": regime,
        "judged_on": use_regime or "all",
        "weights": weights,
        "scores": {int(eligible[k]): float(s) for k, s in enumerate(scores)},
    }
