"""Thompson-sampling allocation over continuous per-bar returns.

Owns `NormalInverseGamma` (the conjugate posterior of a Normal mean and variance),
`thompson_probabilities` (each arm's probability of having the highest mean per-bar
return, estimated by Monte-Carlo draws from the posteriors: the Thompson allocation)
and `constrain_weights` (floor for the production arm, cap for newcomers, a limit on each
weight's change per step; a projection onto those bounds that keeps the sum at 1).

Why Normal-Inverse-Gamma: per-bar net P&L is continuous and signed, so the binarized
Beta-Bernoulli posteriors of open-source routers (a bar "won" or "lost") throw away its
size, and a Gaussian belief with a plugged-in variance (iter8) is over-confident on short
records. The NIG posterior learns mean and variance together; the marginal of the mean
is a Student-t, wide while a record is short and narrowing as bars accrue, which is the
exploration Thompson sampling needs. Pure numpy; no database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["NormalInverseGamma", "constrain_weights", "thompson_probabilities"]


@dataclass(frozen=True)
class NormalInverseGamma:
    """NIG(mu, kappa, alpha, beta): mean | var ~ N(mu, var/kappa), var ~ InvGamma(alpha, beta)."""

    mu: float
    kappa: float
    alpha: float
    beta: float
    n: int = 0

    @classmethod
    def prior(cls, scale: float) -> NormalInverseGamma:
        """A weak prior: mean 0 worth one bar, variance around `scale`² worth two bars."""
        var = max(float(scale) ** 2, 1e-16)
        return cls(mu=0.0, kappa=1.0, alpha=2.0, beta=var)

    def update(self, returns: Sequence[float] | np.ndarray) -> NormalInverseGamma:
        """The posterior after observing `returns` (non-finite values are dropped)."""
        x = np.asarray(returns, dtype=np.float64)
        x = x[np.isfinite(x)]
        n = int(x.size)
        if n == 0:
            return self
        mean = float(x.mean())
        ss = float(((x - mean) ** 2).sum())
        kappa = self.kappa + n
        mu = (self.kappa * self.mu + n * mean) / kappa
        alpha = self.alpha + n / 2.0
        beta = self.beta + 0.5 * ss + self.kappa * n * (mean - self.mu) ** 2 / (2.0 * kappa)
        return NormalInverseGamma(mu, kappa, alpha, beta, self.n + n)

    def sample_means(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of the mean from its marginal (Student-t with 2·alpha dof)."""
        var = self.beta / rng.gamma(self.alpha, 1.0, size=size)  # InvGamma(alpha, beta)
        return rng.normal(self.mu, np.sqrt(var / self.kappa))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def thompson_probabilities(posteriors: Mapping[str, NormalInverseGamma],
                           rng: np.random.Generator, draws: int = 4000) -> dict[str, float]:
    """P(arm has the highest mean) for each arm, from `draws` joint posterior draws."""
    names = list(posteriors)
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: 1.0}
    samples = np.column_stack([posteriors[k].sample_means(rng, draws) for k in names])
    wins = np.bincount(samples.argmax(axis=1), minlength=len(names))
    return {k: float(w) / draws for k, w in zip(names, wins, strict=True)}


def constrain_weights(target: Mapping[str, float], previous: Mapping[str, float], *,
                      production: str | None, floor: float, cap: float,
                      max_step: float) -> dict[str, float]:
    """The weights nearest `target` (a shift λ added to all, then clipped) within bounds:
    production ≥ `floor`, every other arm ≤ `cap`, each within `max_step` of its previous
    weight (0 for a new arm). Sums to 1. When the bounds cannot hold together (an arm
    left, the floor rose) the step limit is dropped first, then floor and cap."""
    names = list(target)
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: 1.0}
    t = np.array([float(target[k]) for k in names])
    prev = np.array([float(previous.get(k, 0.0)) for k in names])
    base_lo = np.array([floor if k == production else 0.0 for k in names])
    base_hi = np.array([1.0 if k == production else cap for k in names])
    if production not in names:
        base_hi = np.ones(len(names))
    candidates = [
        (np.maximum(base_lo, prev - max_step), np.minimum(base_hi, prev + max_step)),
        (base_lo, base_hi),
        (np.zeros(len(names)), np.ones(len(names))),
    ]
    for lo, hi in candidates:
        if np.all(lo <= hi + 1e-12) and lo.sum() <= 1.0 + 1e-12 <= hi.sum() + 2e-12:
            break
    lo, hi = np.minimum(lo, hi), hi
    # bisection on the shift λ: sum(clip(t + λ, lo, hi)) = 1 (monotone in λ)
    a, b = -2.0, 2.0
    for _ in range(100):
        mid = (a + b) / 2.0
        if np.clip(t + mid, lo, hi).sum() > 1.0:
            b = mid
        else:
            a = mid
    w = np.clip(t + (a + b) / 2.0, lo, hi)
    w = w / w.sum()
    return {k: float(v) for k, v in zip(names, w, strict=True) if math.isfinite(v)}
