"""Search objectives and constraints, and their values from a trial's OOS metrics.

Owns `OBJECTIVES` (name → direction + how to read it from metrics), the default pair
(maximize out-of-sample Sharpe, minimize max drawdown), `Constraints` (default:
trades >= 50) and the conversions the optimizer and the front need. A constraint value
follows Optuna's convention: <= 0 is satisfied, > 0 is the size of the violation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_OBJECTIVES",
    "OBJECTIVES",
    "Constraints",
    "Objective",
    "constraint_values",
    "directions",
    "is_feasible",
    "objective_values",
    "parse_objectives",
]

# Profit factor is unbounded (None = no losing trade): cap it so fronts stay finite.
PROFIT_FACTOR_CAP = 10.0


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Literal["maximize", "minimize"]
    # Reference value for the hypervolume: a point must beat it to count.
    reference: float
    doc: str

    def value(self, metrics: Mapping[str, Any]) -> float:
        """This objective's value from a metrics dict (finite: NaN/None become worst)."""
        worst = -1e6 if self.direction == "maximize" else 1e6
        if self.name == "profit_factor":
            raw = metrics.get("profit_factor")
            if raw is None:
                return PROFIT_FACTOR_CAP if (metrics.get("trades") or 0) > 0 else 0.0
            return min(float(raw), PROFIT_FACTOR_CAP)
        raw = metrics.get(self.name)
        if raw is None:
            return worst
        number = float(raw)
        return number if math.isfinite(number) else worst


OBJECTIVES: dict[str, Objective] = {
    "sharpe": Objective("sharpe", "maximize", 0.0, "annualised OOS Sharpe of the strategy"),
    "max_drawdown": Objective("max_drawdown", "minimize", 1.0,
                              "largest peak-to-trough fall of OOS equity (0-1)"),
    "profit_factor": Objective("profit_factor", "maximize", 1.0,
                               f"gross wins / gross losses, capped at {PROFIT_FACTOR_CAP:g}"),
    "turnover": Objective("turnover", "minimize", 2.0,
                          "mean |position change| per bar (trading intensity)"),
}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("sharpe", "max_drawdown")


def parse_objectives(names: Sequence[str] | None) -> list[str]:
    """Validate a request's objective list: >= 2 distinct known names."""
    if names is None:
        return list(DEFAULT_OBJECTIVES)
    out = [str(n) for n in names]
    unknown = [n for n in out if n not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose from {sorted(OBJECTIVES)}")
    if len(set(out)) != len(out):
        raise ValueError("objectives must not repeat")
    if len(out) < 2:
        raise ValueError("a multi-objective search needs at least two objectives")
    return out


def directions(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n].direction for n in names]


def objective_values(metrics: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    return [OBJECTIVES[n].value(metrics) for n in names]


@dataclass(frozen=True)
class Constraints:
    """Feasibility rules; None switches one off. Default: at least 50 OOS trades."""

    min_trades: int | None = 50
    max_drawdown: float | None = None
    min_sharpe: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Constraints:
        if not data:
            return cls()
        unknown = sorted(set(data) - {"min_trades", "max_drawdown", "min_sharpe"})
        if unknown:
            raise ValueError(f"unknown constraint(s) {unknown}; known: min_trades, "
                             "max_drawdown, min_sharpe")
        return cls(**dict(data))


def constraint_values(metrics: Mapping[str, Any], constraints: Constraints) -> dict[str, float]:
    """Optuna-style constraint values (<= 0 satisfied), scaled so violations compare.

    Violations are relative (0.5 = halfway short of the threshold), so a trial 40 trades
    short and one 0.1 Sharpe short weigh comparably in constrained domination.
    """
    out: dict[str, float] = {}
    if constraints.min_trades is not None:
        trades = float(metrics.get("trades") or 0)
        need = max(float(constraints.min_trades), 1.0)
        out["min_trades"] = (need - trades) / need
    if constraints.max_drawdown is not None:
        dd = metrics.get("max_drawdown")
        dd_value = 1.0 if dd is None or not math.isfinite(float(dd)) else float(dd)
        out["max_drawdown"] = dd_value - float(constraints.max_drawdown)
    if constraints.min_sharpe is not None:
        sharpe = metrics.get("sharpe")
        s_value = -1e3 if sharpe is None or not math.isfinite(float(sharpe)) else float(sharpe)
        out["min_sharpe"] = float(constraints.min_sharpe) - s_value
    return out


def is_feasible(values: Mapping[str, float] | None) -> bool:
    return values is not None and all(v <= 0.0 for v in values.values())
