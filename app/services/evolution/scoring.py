"""Scoring, outside any transaction: one trial, and the finished search.

Owns `score_trial` (a claimed trial evaluated walk-forward OOS on the search's data
snapshot, turned into the objective and constraint values Optuna is told — a failed
evaluation gets `FAILURE_VALUES`) and `choose_strategy` (the front among evaluated
feasible candidates, the choice overall and per regime, the chosen candidate's Deflated
Sharpe and its hold-out check). No database access: app/flows/evolution.py reads and
records around these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.analysis.objectives import OBJECTIVES, Constraints, constraint_values, objective_values
from app.analysis.overfitting import deflated_sharpe_ratio, holdout_verdict
from app.analysis.selection import choose, hypervolume, pareto_front, reference_point
from app.core.config import Settings
from app.ml.evolution.evaluate import EvalSettings, evaluate_holdout, evaluate_strategy
from app.ml.evolution.space import StrategySpace
from app.services.evolution.snapshot import load_frame, regimes_for
from app.services.evolution.state import FinishInputs
from app.services.evolution.views import json_safe

__all__ = ["FAILURE_VALUES", "StrategyChoice", "TrialScore", "choose_strategy", "score_trial"]

# A failed evaluation is told to Optuna as COMPLETE with these values and a violated
# "evaluation_ok" constraint: every generation then holds exactly `population` complete
# trials (NSGA-II's generation bookkeeping counts them), and constrained domination
# ranks the failure below every trial that evaluated.
FAILURE_VALUES = {"sharpe": -10.0, "max_drawdown": 1.0, "profit_factor": 0.0, "turnover": 2.0}


@dataclass(frozen=True)
class TrialScore:
    """A trial's result: metrics (None when it failed), and what Optuna is told."""

    metrics: dict[str, Any] | None
    regime_metrics: dict[str, Any] | None
    values: list[float]
    constraints: dict[str, float]
    error: str | None


def score_trial(settings: Settings, job: Mapping[str, Any], *, max_attempts: int,
                heartbeat: Callable[[], None], heartbeat_every_s: float) -> TrialScore:
    """Evaluate a claimed trial (`job`, from `state.claim_candidate`); `heartbeat` renews
    its lease during the evaluation (and raises `state.LeaseLost`, which propagates).

    A trial past `max_attempts`, or whose parameters cannot be evaluated (too little
    data, a corrupt snapshot...), fails; the search goes on.
    """
    space = StrategySpace.from_dict(job["space"])
    names: list[str] = job["objectives"]
    cons = Constraints.from_dict(job["constraints"])
    metrics: dict[str, Any] | None = None
    regime_metrics: dict[str, Any] | None = None
    error: str | None = None
    if job["attempts"] > max_attempts:
        error = (f"gave up after {max_attempts} attempts (the worker evaluating it "
                 "died or stalled each time)")
    else:
        try:
            frame = load_frame(settings, job["data_uri"], job["data_sha256"])
            hs = int(job["config"]["holdout_start"])
            regimes = regimes_for(f"{job['data_uri']}#{job['data_sha256']}", frame, hs)
            result = evaluate_strategy(
                frame, space, job["params"], EvalSettings.from_dict(job["config"]["evaluation"]),
                holdout_start=hs, regimes=regimes, heartbeat=heartbeat,
                heartbeat_every_s=heartbeat_every_s,
            )
            metrics, regime_metrics = json_safe(result.metrics), json_safe(result.regime_metrics)
        except (ValueError, KeyError, LookupError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    if metrics is not None:
        values = objective_values(metrics, names)
        constraints = {**constraint_values(metrics, cons), "evaluation_ok": 0.0}
    else:
        values = [FAILURE_VALUES[n] for n in names]
        constraints = {**{k: 1.0 for k in constraint_values({}, cons)}, "evaluation_ok": 1.0}
    return TrialScore(metrics, regime_metrics, values, constraints, error)


@dataclass(frozen=True)
class StrategyChoice:
    """The finished search: `result` (stored on the search) and the chosen candidate."""

    result: dict[str, Any]
    chosen_id: int | None = None
    regime_choice: dict[str, int] = field(default_factory=dict)
    dsr: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None


def choose_strategy(settings: Settings, inputs: FinishInputs) -> StrategyChoice:
    """Front, hypervolume, the choice (overall, or for the search's regime) and one per
    regime, the chosen candidate's Deflated Sharpe over every trial, and its hold-out
    check (a collapse there marks it overfit)."""
    names, views = inputs.objectives, inputs.views
    dirs = [OBJECTIVES[n].direction for n in names]
    values = [[v["objectives"][n] for n in names] for v in views]
    front_idx = pareto_front(values, dirs, inputs.feasible)
    front = [views[i] for i in front_idx]
    prefs = inputs.config.get("preferences") or {}
    result: dict[str, Any] = {
        "front": [v["id"] for v in front],
        "hypervolume": hypervolume([values[i] for i in front_idx], dirs, reference_point(names)),
        "trials": inputs.n_trials,
    }
    if not front:
        result["choice"] = {"reason": "no feasible candidate: nothing satisfies the "
                                      "constraints"}
        return StrategyChoice(result)
    pick, detail = choose(front, regime=inputs.target_regime, preferences=prefs)
    assert pick is not None
    chosen = front[pick]
    chosen_id = int(chosen["id"])
    result["choice"] = {**detail, "scores": {str(front[k]["id"]): s
                                             for k, s in detail["scores"].items()}}
    regime_choice: dict[str, int] = {}
    regimes = sorted({r for v in front for r in (v["regime_metrics"] or {}) if r != "unknown"})
    for regime in regimes:
        idx, _ = choose(front, regime=regime, preferences=prefs)
        if idx is not None:
            regime_choice[regime] = int(front[idx]["id"])
    result["regime_choice"] = regime_choice
    m = chosen["metrics"]
    trial_sharpes = [v["metrics"].get("sharpe_per_bar") for v in views]
    dsr = json_safe(deflated_sharpe_ratio(
        float(m.get("sharpe_per_bar") or 0.0), int(m.get("returns_n") or 0),
        [s for s in trial_sharpes if s is not None],
        skew=float(m.get("returns_skew") or 0.0),
        kurtosis=float(m.get("returns_kurtosis") or 3.0), n_trials=max(inputs.n_trials, 1)))
    result["deflated_sharpe"] = dsr
    eval_cfg = EvalSettings.from_dict(inputs.config.get("evaluation"))
    holdout: dict[str, Any]
    try:
        frame = load_frame(settings, inputs.data_uri, inputs.data_sha256)
        hm = evaluate_holdout(frame, inputs.space, chosen["params"], eval_cfg,
                              holdout_start=int(inputs.config["holdout_start"]))
        verdict = holdout_verdict(float(m.get("sharpe") or 0.0), float(hm["sharpe"]),
                                  eval_cfg.collapse_ratio)
        holdout = json_safe({"metrics": hm, **verdict.to_dict()})
    except ValueError as exc:
        holdout = {"error": str(exc), "collapsed": True,
                   "reason": "hold-out could not be evaluated"}
    result["holdout"] = holdout
    return StrategyChoice(result, chosen_id, regime_choice, dsr, holdout)
