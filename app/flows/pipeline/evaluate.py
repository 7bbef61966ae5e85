"""The pipeline's last stages: evaluate (the fan-in) and register.

Owns `fan_in` / `evaluate_job` (backtest of the concatenated out-of-sample predictions —
under the strategy's trading rules when it has them, through app.ml.oos, the builder
the strategy search uses too —, the promotion gate, champion vs challenger by the
paired stationary-bootstrap test on the same out-of-sample bars, `paired_oos_test`),
`drift_lineage` (the version's drift reference from the data the evaluate step has in
memory), `diagnostics` (the version's report: app.ml.diagnostics; CLM_CALIBRATE=1
calibrates the folds causally before the metrics), `decide_status`, `run_evaluate`
(step evaluate) and `run_register` (steps register_version and decide_promotion).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.analysis.challenger import paired_sharpe_test
from app.core.config import Settings
from app.db import transaction
from app.flows.pipeline.runtime import StageRun, clean, load_dataset, stores
from app.ml.artifacts import ArtifactStore
from app.ml.diagnostics import calibrate_folds, version_diagnostics
from app.ml.drift_reference import reference_lineage, training_lineage
from app.ml.evaluation import (
    Dataset,
    EvaluationConfig,
    FoldPrediction,
    apply_gate,
    compare_champion,
    ordered_predictions,
)
from app.ml.oos import oos_metrics, oos_returns
from app.ml.rules import trading_rules
from app.models.jobs import WorkKind
from app.services import jobs, registry
from app.services.checks.regime import consider_regime_champion


@dataclass
class FanIn:
    """What the evaluate step loaded and concluded (kept in memory for the drift
    reference, which needs the same dataset and out-of-sample predictions)."""

    evaluation: dict[str, Any]
    dataset: Dataset
    predictions: list[FoldPrediction]  # the models' own probabilities (drift reference)
    # What the metrics were computed on: `predictions` calibrated when CLM_CALIBRATE=1.
    judged: list[FoldPrediction] | None = None
    calibration: dict[str, Any] | None = None


def fan_in(settings: Settings, job: dict[str, Any], items: list[dict[str, Any]]) -> FanIn:
    """Load the out-of-sample predictions of every fold (challenger and champion), backtest
    them (app.ml.oos), apply the gate and compare with the champion."""
    artifacts, _ = stores(settings)
    state = job["artifacts"]
    cfg = EvaluationConfig.from_dict(state["config"])
    rules = trading_rules(job.get("strategy"))

    def predictions(kind: WorkKind) -> list[FoldPrediction]:
        out = []
        for it in items:
            if it["kind"] == kind.value:
                r = it["result"]
                out.append(FoldPrediction.from_frame(artifacts.get_frame(r["uri"], r["sha256"])))
        return out

    ds_ref = state["dataset"]
    dataset = load_dataset(artifacts, ds_ref)
    fold_predictions = predictions(WorkKind.FOLD)
    judged, calibration = fold_predictions, None
    if settings.calibrate:  # thresholds act on causally calibrated probabilities
        judged, calibration = calibrate_folds(dataset, fold_predictions, cfg)
    metrics = clean(oos_metrics(dataset, judged, cfg, rules))
    gate = apply_gate(metrics, settings.gate_for(job["model_type"]))
    failed = list(gate.failed_criteria)
    champion_doc = None
    passed = gate.passed
    champion = state.get("champion")
    if champion is not None:
        champ_ref = state.get("champion_dataset") or ds_ref
        champ_ds = dataset if champ_ref is ds_ref else load_dataset(artifacts, champ_ref)
        champ_rules = trading_rules({"rules": champion.get("rules")})
        champ_metrics = clean(oos_metrics(champ_ds, predictions(WorkKind.CHAMPION), cfg,
                                           champ_rules))
        comparison = compare_champion(metrics, champ_metrics, settings.champion_sharpe_margin)
        test = paired_oos_test(settings, dataset, fold_predictions, rules, champ_ds,
                               predictions(WorkKind.CHAMPION), champ_rules, cfg)
        # the point comparison stays as figures; the paired test decides: worse fails,
        # inconclusive waits in shadow (decide_status), better passes
        champion_doc = {"version": champion["version"], "metrics": champ_metrics,
                        **comparison.to_dict(), "passed": test["verdict"] != "worse",
                        "paired_test": test}
        if test["verdict"] == "worse":
            passed = False
            failed.append({
                "name": "champion_sharpe", "value": comparison.challenger_sharpe,
                "threshold": (None if comparison.champion_sharpe is None
                              else comparison.champion_sharpe + comparison.margin),
                "op": ">=", "gate_key": "champion_sharpe_margin", "reason": test["reason"],
            })
    fold_timings = [
        {"kind": it["kind"], "fold": it["fold"], "fit_s": it["result"].get("fit_s"),
         "train_rows": it["result"].get("train_rows"), "worker": it["result"].get("worker"),
         "attempts": it["attempts"]}
        for it in items
    ]
    evaluation = clean({
        "metrics": metrics,
        "passed": passed,
        "gate_passed": gate.passed,
        "failed_criteria": failed,
        "promotion_score": gate.promotion_score,
        "thresholds": gate.thresholds,
        "champion": champion_doc,
        "config": cfg.to_dict(),
        "positions": "strategy_rules" if rules is not None else "thresholds",
        "work_items": fold_timings,
    })
    if calibration is not None:
        evaluation["calibration"] = clean(calibration)
    return FanIn(evaluation, dataset, fold_predictions, judged, calibration)


def diagnostics(settings: Settings, job: dict[str, Any], items: list[dict[str, Any]],
                loaded: FanIn) -> dict[str, Any]:
    """The version's diagnostics report (app.ml.diagnostics) from what the evaluate step
    loaded and the fold work items' attributions."""
    cfg = EvaluationConfig.from_dict(job["artifacts"]["config"])
    attributions = [it["result"]["attributions"] for it in items
                    if it["kind"] == WorkKind.FOLD.value and it["result"].get("attributions")]
    return clean(version_diagnostics(
        loaded.dataset, loaded.judged or loaded.predictions, cfg,
        trading_rules(job.get("strategy")), fold_attributions=attributions,
        raw_predictions=loaded.predictions, calibration=loaded.calibration))


def paired_oos_test(settings: Settings, dataset: Dataset, fold_predictions: list[Any],
                    rules: Any, champ_ds: Dataset, champ_predictions: list[Any],
                    champ_rules: Any, cfg: EvaluationConfig) -> dict[str, Any]:
    """The paired stationary-bootstrap test (app.analysis.challenger) of the challenger's
    and the champion's walk-forward out-of-sample per-bar returns on the bars both
    traded: verdict, interval, PSR and the number of bars."""
    mine, ppy = oos_returns(dataset, fold_predictions, cfg, rules)
    theirs, _ = oos_returns(champ_ds, champ_predictions, cfg, champ_rules)
    both = mine.to_frame("a").join(theirs.rename("b"), how="inner").dropna()
    return paired_sharpe_test(both["a"].to_numpy(), both["b"].to_numpy(),
                              periods_per_year=ppy,
                              confidence=settings.challenger_confidence,
                              margin=settings.champion_sharpe_margin,
                              reps=settings.challenger_bootstrap_reps).to_dict()


def evaluate_job(settings: Settings, job: dict[str, Any],
                 items: list[dict[str, Any]]) -> dict[str, Any]:
    """Fan-in: backtest the out-of-sample predictions (under the strategy's trading rules
    when it has them), apply the gate and compare with the champion. Returns the job's
    evaluation document."""
    return fan_in(settings, job, items).evaluation


def drift_lineage(settings: Settings, dataset: Any, predictions: list[Any]) -> dict[str, Any]:
    """The version's `drift_reference` lineage key from data already in memory: every
    training row of the job's dataset and the walk-forward *out-of-sample* probabilities
    in time order (app.ml.drift_reference.reference_lineage, the one builder, which
    `training_lineage` also uses after reading them back). Returns {"drift_reference": …}."""
    artifacts, _ = stores(settings)
    return reference_lineage(artifacts, dataset,
                             [p.proba for p in ordered_predictions(predictions)])


def decide_status(evaluation: dict[str, Any], settings: Settings) -> tuple[str, str]:
    """The new version's status: never production (that takes an explicit promote)."""
    if not evaluation.get("passed"):
        parts = []
        for c in evaluation.get("failed_criteria", []):
            value = c.get("value")
            shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            parts.append(f"{c['name']} {shown} (needs {c['op']} {c.get('threshold')})")
        return "failed", "failed the promotion gate: " + "; ".join(parts)
    if settings.shadow_mode:
        return "shadow", "passed the gate; shadow mode is on (CLM_SHADOW_MODE): shadow first"
    test = (evaluation.get("champion") or {}).get("paired_test") or {}
    if test.get("verdict") == "inconclusive":
        return "shadow", ("passed the gate; versus production the paired test is "
                          f"inconclusive ({test.get('reason')}): shadow until its live "
                          "record decides")
    if settings.auto_promote_to_candidate:
        return "candidate", "passed the gate; auto-promoted to candidate"
    return "shadow", ("passed the gate; auto-promotion to candidate is off "
                      "(CLM_AUTO_PROMOTE_TO_CANDIDATE=0): waiting in shadow for a person")


def run_evaluate(run: StageRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evaluate step: the evaluation document, and the drift reference built from the
    dataset and predictions it loaded (kept on the job for a register step that runs
    elsewhere). Returns (evaluation, drift lineage)."""
    with transaction(run.settings.database_url) as session:
        items = jobs.work_items(session, run.job_id)
    with run.step("evaluate") as rec:
        loaded = fan_in(run.settings, run.job, items)
        evaluation = loaded.evaluation
        t0 = time.perf_counter()
        try:
            drift = drift_lineage(run.settings, loaded.dataset, loaded.predictions)
        except Exception:  # like app.ml.drift_reference.training_lineage: never fails the job
            run.log.exception("could not build the drift reference")
            drift = {}
        t1 = time.perf_counter()
        if run.settings.diagnostics:
            try:
                evaluation["diagnostics"] = diagnostics(run.settings, run.job, items, loaded)
            except Exception:  # like the drift reference: a report never fails the job
                run.log.exception("could not build the version's diagnostics")
        rec.detail.update(diagnostics_s=round(time.perf_counter() - t1, 3))
        rec.detail.update(passed=evaluation["passed"],
                          sharpe=evaluation["metrics"].get("sharpe"),
                          failed_criteria=[c["name"] for c in evaluation["failed_criteria"]],
                          drift_reference_s=round(time.perf_counter() - t0, 3))

        def record(session: Session) -> None:
            jobs.update_artifacts(session, run.job_id, run.owner, run.attempt,
                                  {"drift_lineage": drift})
            jobs.record_evaluation(session, run.job_id, run.owner, run.attempt, evaluation)

        rec.finish.append(record)
    return evaluation, drift


def run_register(run: StageRun, evaluation: dict[str, Any],
                 drift: dict[str, Any] | None) -> None:
    """register_version + decide_promotion. `drift`: the evaluate step's drift lineage;
    None (a job evaluated before it kept one) rebuilds it from the artifacts."""
    settings, job = run.settings, run.job
    with transaction(settings.database_url) as session:
        items = jobs.work_items(session, run.job_id)
    final = next(it for it in items if it["kind"] == WorkKind.FINAL.value)["result"]
    state = job["artifacts"]
    lineage = ArtifactStore.from_settings(settings).get_json(
        state["lineage"]["uri"], state["lineage"]["sha256"])
    lineage["model"]["n_threads"] = final.get("n_threads")
    lineage["job"] = {"job_id": run.job_id, "trigger_reason": job["trigger_reason"],
                      "requested_by": job["requested_by"], "attempts": job["attempts"]}
    lineage["artifacts"] = {"dataset": state["dataset"], "raw": state["raw"],
                            "model": {k: final[k] for k in ("uri", "sha256", "format")}}
    if drift is None:  # reads the dataset and predictions back: the slow way
        drift = training_lineage(settings, state, items)  # drift reference, regimes
    lineage.update(drift)
    status, reason = decide_status(evaluation, settings)
    actor = f"job:{run.job_id}"
    registered: dict[str, Any] = {}

    with run.step("register_version") as rec:
        def register(session: Session) -> None:
            version = registry.register_version(
                session, model_type=job["model_type"], symbol=job["symbol"],
                timeframe=job["timeframe"], metrics=evaluation["metrics"],
                params=state["params"], tags={"job_id": run.job_id,
                                              "trigger_reason": job["trigger_reason"]},
                status="training", regime=job.get("regime"),
                artifact={k: final[k] for k in ("uri", "sha256", "format")},
                lineage=clean(lineage), evaluation=evaluation, job_id=run.job_id,
                actor=actor, reason=f"trained by job {run.job_id}",
            )
            registered.update(version)
            rec.detail.update(version=version["version"], artifact=final["uri"])

        rec.finish.append(register)

    with run.step("decide_promotion") as rec:
        def decide(session: Session) -> None:
            version = registered.get("version") or registry.get_version_by_job(
                session, run.job_id)["version"]  # type: ignore[index]
            registry.set_status(session, job["model_id"], version, status, actor=actor,
                                reason=reason)
            consider_regime_champion(session, model_id=job["model_id"], regime=job.get("regime"),
                                     version=version, metrics=evaluation["metrics"],
                                     passed=bool(evaluation.get("passed")), job_id=run.job_id)
            final_eval = {**evaluation, "decision": {"status": status, "reason": reason}}
            jobs.succeed_job(session, run.job_id, run.owner, run.attempt, version=version,
                             evaluation=final_eval)
            rec.detail.update(status=status, reason=reason, version=version)

        rec.finish.append(decide)
