"""Overfitting guard: Deflated Sharpe Ratio and the hold-out verdict.

Owns
- `probabilistic_sharpe_ratio` and `deflated_sharpe_ratio` (Bailey & López de Prado,
  "The Deflated Sharpe Ratio", 2014): the probability that the chosen strategy's true
  Sharpe exceeds the Sharpe one would expect from the best of N unskilled trials, given
  the trials' Sharpe dispersion, the track length and the returns' skew and kurtosis;
- `holdout_split`: how many trailing bars are held out from every trial;
- `minimum_track_record_length` (minTRL): bars before an observed Sharpe beats a
  benchmark at a confidence level (the shadow exit's progress figure);
- `holdout_verdict`: whether a candidate's hold-out result collapsed versus its
  walk-forward OOS result.

All Sharpe ratios here are per bar (not annualised), as the formulas require.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "EULER_GAMMA",
    "HoldoutVerdict",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "holdout_split",
    "holdout_verdict",
    "minimum_track_record_length",
    "probabilistic_sharpe_ratio",
    "return_moments",
]

EULER_GAMMA = 0.5772156649015329


def return_moments(returns: Sequence[float]) -> dict[str, float]:
    """Per-bar Sharpe, skewness and (non-excess) kurtosis of a return series."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 3 or float(np.std(r, ddof=1)) == 0.0:
        return {"sharpe": 0.0, "skew": 0.0, "kurtosis": 3.0, "n": int(r.size)}
    return {
        "sharpe": float(r.mean() / r.std(ddof=1)),
        "skew": float(stats.skew(r, bias=False)),
        "kurtosis": float(stats.kurtosis(r, fisher=False, bias=False)),
        "n": int(r.size),
    }


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0
) -> float:
    """P(true SR > benchmark) for an observed per-bar SR over n_obs returns (PSR)."""
    if n_obs < 2:
        return float("nan")
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if denom <= 0:
        # Extreme skew/kurtosis make the variance estimate non-positive; be conservative.
        return 0.0
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)
    return float(stats.norm.cdf(z))


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """E[max SR] of n_trials unskilled strategies with the given SR variance (SR₀)."""
    if n_trials < 2 or sharpe_variance <= 0:
        return 0.0
    n = float(n_trials)
    return math.sqrt(sharpe_variance) * (
        (1.0 - EULER_GAMMA) * stats.norm.ppf(1.0 - 1.0 / n)
        + EULER_GAMMA * stats.norm.ppf(1.0 - 1.0 / (n * math.e))
    )


def deflated_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    trial_sharpes: Sequence[float],
    *,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    n_trials: int | None = None,
) -> dict[str, Any]:
    """DSR of the chosen strategy's per-bar `sharpe` given every trial's per-bar Sharpe.

    n_trials defaults to len(trial_sharpes) (the number of configurations tried; the
    paper's N). Returns {"dsr", "sr0", "n_trials", "sharpe_variance", ...}.
    """
    finite = np.asarray([s for s in trial_sharpes if s is not None and math.isfinite(s)],
                        dtype=np.float64)
    n = int(n_trials if n_trials is not None else finite.size)
    variance = float(np.var(finite, ddof=1)) if finite.size >= 2 else 0.0
    sr0 = expected_max_sharpe(n, variance)
    dsr = probabilistic_sharpe_ratio(sharpe, sr0, n_obs, skew, kurtosis)
    return {
        "dsr": dsr,
        "sr0": sr0,
        "sharpe_per_bar": float(sharpe),
        "n_trials": n,
        "n_obs": int(n_obs),
        "sharpe_variance": variance,
        "skew": float(skew),
        "kurtosis": float(kurtosis),
    }


def holdout_split(n_bars: int, fraction: float, min_bars: int = 100) -> int:
    """Index of the first held-out bar: the last `fraction` of bars (>= min_bars)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    held = max(round(n_bars * fraction), min_bars)
    if held >= n_bars:
        raise ValueError(f"{n_bars} bars cannot hold out {held} and still search")
    return n_bars - held


@dataclass(frozen=True)
class HoldoutVerdict:
    """Hold-out vs walk-forward OOS: collapsed when hold-out Sharpe falls below
    `ratio` × OOS Sharpe (or is <= 0 while OOS was positive)."""

    oos_sharpe: float
    holdout_sharpe: float
    ratio: float
    collapsed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_verdict(oos_sharpe: float, holdout_sharpe: float, ratio: float = 0.5) -> HoldoutVerdict:
    if not math.isfinite(holdout_sharpe):
        return HoldoutVerdict(oos_sharpe, holdout_sharpe, ratio, True,
                              "hold-out Sharpe is not finite")
    if oos_sharpe > 0 and holdout_sharpe <= 0:
        return HoldoutVerdict(oos_sharpe, holdout_sharpe, ratio, True,
                              f"hold-out Sharpe {holdout_sharpe:.2f} <= 0 while OOS was "
                              f"{oos_sharpe:.2f}")
    if oos_sharpe > 0 and holdout_sharpe < ratio * oos_sharpe:
        return HoldoutVerdict(oos_sharpe, holdout_sharpe, ratio, True,
                              f"hold-out Sharpe {holdout_sharpe:.2f} < {ratio:g} × OOS "
                              f"{oos_sharpe:.2f}")
    return HoldoutVerdict(oos_sharpe, holdout_sharpe, ratio, False,
                          f"hold-out Sharpe {holdout_sharpe:.2f} vs OOS {oos_sharpe:.2f}")


def minimum_track_record_length(sharpe: float, benchmark: float, confidence: float,
                                skew: float = 0.0, kurtosis: float = 3.0) -> float:
    """Bars needed before an observed per-bar `sharpe` beats `benchmark` at `confidence`
    (Bailey & López de Prado 2012, minTRL): 1 + (1 − γ3·SR + (γ4 − 1)/4·SR²)·(z/(SR − SR*))².
    Infinite when the observed Sharpe does not exceed the benchmark."""
    if sharpe <= benchmark:
        return math.inf
    z = float(stats.norm.ppf(confidence))
    spread = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return 1.0 + max(spread, 0.0) * (z / (sharpe - benchmark)) ** 2
