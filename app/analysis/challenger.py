"""Champion vs challenger on the same bars: a paired stationary-bootstrap test.

Owns `paired_sharpe_test` and `sharpe_per_bar`. Champion and challenger trade the same
bars, so their per-bar returns are resampled *together* (one set of stationary-bootstrap
indices for both, `arch.bootstrap.StationaryBootstrap`, block length from
`arch.bootstrap.optimal_block_length` on the per-bar return difference): the interval of
the Sharpe difference keeps the correlation between the two series, which is what gives a
paired test its power over two one-sample figures.

Verdicts (Argo Rollouts' three): `better` when the whole interval lies above the margin,
`worse` when it lies below it, `inconclusive` otherwise (and with too few bars) — an
inconclusive verdict never promotes. Every verdict carries the interval, the
Probabilistic Sharpe Ratio of the challenger against the champion's observed Sharpe
(app.analysis.overfitting, written once) and the number of bars behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.analysis.overfitting import probabilistic_sharpe_ratio, return_moments

__all__ = ["MIN_PAIRED_BARS", "PairedTest", "paired_sharpe_test", "sharpe_per_bar"]

# Fewer bars than this: the verdict is inconclusive without bootstrapping.
MIN_PAIRED_BARS = 30
# Per-bar returns whose std is below this are constant (Sharpe 0, as in the backtest).
_FLAT_STD = 1e-12


def sharpe_per_bar(returns: np.ndarray) -> float:
    """mean / std (ddof 1) of per-bar returns; 0 for a flat or too short series."""
    if returns.size < 2:
        return 0.0
    sd = float(returns.std(ddof=1))
    if not math.isfinite(sd) or sd <= max(_FLAT_STD, 1e-9 * abs(float(returns.mean()))):
        return 0.0
    return float(returns.mean() / sd)


def _sharpe_columns(x: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe of each column (rows: bars)."""
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    flat = sd <= np.maximum(_FLAT_STD, 1e-9 * np.abs(mean))
    out = np.divide(mean, np.where(flat, 1.0, sd))
    return np.where(flat, 0.0, out)


@dataclass(frozen=True)
class PairedTest:
    """The verdict of `paired_sharpe_test` (annualised Sharpes; see the module docstring)."""

    verdict: str  # better | worse | inconclusive
    reason: str
    bars: int
    confidence: float
    margin: float
    challenger_sharpe: float | None
    champion_sharpe: float | None
    delta: float | None
    interval: tuple[float, float] | None
    psr: float | None
    block_length: float | None
    reps: int

    @property
    def preferred(self) -> bool:
        return self.verdict == "better"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval) if self.interval is not None else None
        return out


def paired_sharpe_test(
    challenger: Sequence[float] | np.ndarray,
    champion: Sequence[float] | np.ndarray,
    *,
    periods_per_year: float,
    confidence: float = 0.9,
    margin: float = 0.0,
    reps: int = 1000,
    seed: int = 0,
) -> PairedTest:
    """Test whether `challenger` beats `champion` on Sharpe, per-bar returns of the same
    bars (equal length, aligned). The interval is the two-sided `confidence` percentile
    interval of the annualised Sharpe difference (challenger − champion) under the
    stationary bootstrap; `margin` (annualised) is what the challenger must beat by."""
    a = np.asarray(challenger, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two aligned 1-d series, got {a.shape} and {b.shape}")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    scale = math.sqrt(periods_per_year)
    sr_a, sr_b = sharpe_per_bar(a), sharpe_per_bar(b)
    ann_a, ann_b = sr_a * scale, sr_b * scale
    moments = return_moments(a)
    psr = (probabilistic_sharpe_ratio(sr_a, sr_b, n, moments["skew"], moments["kurtosis"])
           if n >= 3 else None)
    psr = psr if psr is not None and math.isfinite(psr) else None
    base = dict(bars=n, confidence=float(confidence), margin=float(margin),
                challenger_sharpe=ann_a, champion_sharpe=ann_b, delta=ann_a - ann_b,
                psr=psr, reps=int(reps))
    if n < MIN_PAIRED_BARS:
        return PairedTest(verdict="inconclusive", interval=None, block_length=None,
                          reason=f"{n} paired bars (< {MIN_PAIRED_BARS}): too few to tell",
                          **base)
    diff = a - b
    if float(np.abs(diff).max()) == 0.0:
        return PairedTest(verdict="inconclusive", interval=(0.0, 0.0), block_length=None,
                          reason="identical per-bar returns on every bar", **base)
    from arch.bootstrap import StationaryBootstrap, optimal_block_length

    block = float(optimal_block_length(diff)["stationary"].iloc[0])
    if not math.isfinite(block) or block < 1.0:
        block = 1.0
    boot = StationaryBootstrap(block, np.column_stack([a, b]), seed=seed)
    draws = np.empty(reps, dtype=np.float64)
    for i, (pos, _kw) in enumerate(boot.bootstrap(reps)):
        s = _sharpe_columns(pos[0])
        draws[i] = (s[0] - s[1]) * scale
    tail = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(draws, [tail, 1.0 - tail]))
    shown = (f"Sharpe {ann_a:.3f} vs champion {ann_b:.3f} on {n} bars, "
             f"{confidence:.0%} interval of the difference [{lo:.3f}, {hi:.3f}]")
    if lo > margin:
        verdict, why = "better", f"{shown} lies above {margin:g}"
    elif hi < margin:
        verdict, why = "worse", f"{shown} lies below {margin:g}"
    else:
        verdict, why = "inconclusive", f"{shown} straddles {margin:g}"
    return PairedTest(verdict=verdict, reason=why, interval=(lo, hi), block_length=block,
                      **base)
