"""A trained candidate keeps its whole strategy, and the pipeline's drift reference is the
same reference, built where the data already is.

- The search evaluates a candidate (label horizon 3, hysteresis exit, minimum hold,
  stop loss / take profit) on bars B; training that candidate as a job on exactly B gives
  the same out-of-sample metrics: same windows, horizon (and purge), seed, folds, and
  positions from the same `positions_from_probabilities`.
- The version's lineage names the strategy; the evaluation says positions came from the
  strategy's rules.
- The drift reference the evaluate step builds from memory equals what
  app.ml.drift_reference.training_lineage builds by reading the artifacts back; the regime
  summary
  equals the one of the raw bars.
- Strategy validation names the offending field.

Pipeline stages run in this process with the executors the Celery tasks call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.db import transaction
from app.flows import evolution
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from app.ml.drift_reference import load_reference, training_lineage
from app.ml.evaluation import (
    EvaluationConfig,
    dataset_from_frame,
    make_folds,
    prepare_dataset,
    walk_forward_predictions,
)
from app.ml.evolution.space import ParamDef, StrategySpace
from app.ml.oos import oos_metrics
from app.ml.rules import trading_rules
from app.ml.trainers import get_trainer
from app.services import jobs, registry
from app.services.evolution.create import create_search
from app.services.evolution.views import list_candidates
from tests.support.pipeline import run_job_inline
from tests.test_evolution_search import TINY_WINDOWS, planted_frame

# 1,500 1h bars; the search holds out the last 20 % (300 bars), so it searches the first
# 1,200 bars = exactly 50 days: the job below trains on those same bars.
BARS, SEARCH_BARS, SEARCH_DAYS = 1500, 1200, 50
RULES = {"label_horizon": 3, "entry_threshold": 0.53, "exit_threshold": 0.5,
         "min_hold_bars": 3, "stop_loss": 0.006, "take_profit": 0.01}
METRIC_KEYS = ("sharpe", "total_return", "max_drawdown", "trades", "win_rate",
               "profit_factor", "exposure", "oos_bars")


def _space() -> StrategySpace:
    return StrategySpace(
        "xgboost", (ParamDef("window_returns", "int", 40, 36, 44),),
        fixed={"model_n_estimators": 30, "model_max_depth": 2, **RULES},
        base_windows=TINY_WINDOWS)


@pytest.fixture
def local(sqlite_url: str, make_settings: Callable[..., Settings]) -> Settings:
    # One training thread, as the search's trials use: identical trees, identical metrics.
    return make_settings(sqlite_url, CLM_TRAIN_THREADS=1)


def test_a_trained_candidate_is_judged_on_the_strategy_the_search_found(
        local: Settings) -> None:
    settings = local
    frame = planted_frame(BARS)
    with transaction(settings.database_url) as session:
        started = create_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=SEARCH_DAYS, frame=frame, population=2, generations=1,
            base_space=_space(), seed=5, evaluation={"min_train_rows": 300})
    result = evolution.drive_inline(settings, started["search_id"], timeout_s=240)
    assert result["status"] == "succeeded"
    with transaction(settings.database_url) as session:
        cands, _ = list_candidates(session, search_id=started["search_id"])
    cand = next(c for c in cands if c["status"] == "evaluated")
    assert cand["metrics"]["trades"] > 0

    # The market data store holds exactly the bars the search evaluated on.
    MarketDataStore(settings.data_dir).merge("BTCUSDT", "1h", frame.iloc[:SEARCH_BARS])
    with transaction(settings.database_url, immediate=True) as session:
        job = evolution.train_candidate(session, settings, cand["id"]).job
    strategy = job["strategy"]
    assert strategy["label_horizon"] == 3 and strategy["seed"] == 5
    assert strategy["rules"] == {"entry_threshold": 0.53, "exit_threshold": 0.5,
                                 "min_hold_bars": 3, "stop_loss": 0.006,
                                 "take_profit": 0.01, "allow_short": True}

    done = run_job_inline(settings, job["job_id"])
    assert done["status"] == "succeeded", done["error"]
    evaluation = done["evaluation"]
    assert evaluation["positions"] == "strategy_rules"
    assert evaluation["config"]["label_horizon"] == 3
    metrics = evaluation["metrics"]
    assert metrics["oos_bars"] == cand["metrics"]["oos_bars"]
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(cand["metrics"][key], rel=1e-9, abs=1e-12), key

    with transaction(settings.database_url) as session:
        version = registry.get_version(session, done["model_id"], done["version"])
    lineage = version["lineage"]
    assert lineage["strategy"]["rules"] == strategy["rules"]
    assert lineage["strategy"]["label_horizon"] == 3 and lineage["label"]["horizon"] == 3
    # The purge follows the horizon: 3 rows between each fold's training and test rows.
    assert {f["test_start"] - f["train_end"] for f in lineage["folds"]} == {3}


def test_without_rules_the_same_predictions_would_be_judged_differently(
        local: Settings) -> None:
    """The plain thresholds are not the search's rules: on the same OOS probabilities they
    trade differently, which is why the pipeline must use the rules."""
    cfg = EvaluationConfig(label_horizon=3, long_threshold=0.53, short_threshold=0.47)
    dataset = prepare_dataset(planted_frame(1200), cfg, TINY_WINDOWS)
    trainer = get_trainer("xgboost")
    preds = walk_forward_predictions(dataset, make_folds(dataset.n_rows, cfg), trainer,
                                     trainer.validate_params({"n_estimators": 30}), seed=0,
                                     n_threads=1)
    rules = trading_rules({"rules": {k: v for k, v in RULES.items() if k != "label_horizon"}})
    with_rules = oos_metrics(dataset, preds, cfg, rules)
    plain = oos_metrics(dataset, preds, cfg, None)
    assert with_rules["oos_bars"] == plain["oos_bars"]
    assert (with_rules["trades"], with_rules["total_return"]) != (
        plain["trades"], plain["total_return"])
    assert np.isfinite(with_rules["sharpe"]) and "turnover" in with_rules


def test_drift_reference_built_in_memory_equals_the_one_read_back(local: Settings) -> None:
    settings = local
    MarketDataStore(settings.data_dir).merge("BTCUSDT", "1h", planted_frame(BARS))
    with transaction(settings.database_url, immediate=True) as session:
        job = jobs.create_training_job(session, settings, model_type="xgboost",
                                       symbol="BTCUSDT", timeframe="1h", dataset_span_days=60,
                                       params={"n_estimators": 20})
    done = run_job_inline(settings, job["job_id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["evaluation"]["positions"] == "thresholds"
    assert done["artifacts"]["drift_lineage"]["drift_reference"]["uri"]
    with transaction(settings.database_url) as session:
        version = registry.get_version(session, done["model_id"], done["version"])
        items = jobs.work_items(session, job["job_id"])
    lineage = version["lineage"]
    assert lineage["strategy"] is None  # no strategy: the configured defaults

    store = ArtifactStore(settings.artifact_root)
    rebuilt = training_lineage(settings, done["artifacts"], items)  # reads everything back
    ours = load_reference(store, lineage["drift_reference"])
    theirs = load_reference(store, rebuilt["drift_reference"])
    assert ours["predictions"] is not None and ours["predictions"]["n"] == \
        done["evaluation"]["metrics"]["oos_bars"]  # out of sample, not in-sample
    assert ours == theirs
    assert lineage["drift_reference"]["sha256"] == rebuilt["drift_reference"]["sha256"]
    assert lineage["training_regime"] == rebuilt["training_regime"]

    # The fast parquet artifacts read back through the store like any other.
    ds_ref = done["artifacts"]["dataset"]
    dataset = dataset_from_frame(store.get_frame(ds_ref["uri"], ds_ref["sha256"]))
    assert dataset.n_rows == done["steps"][3]["detail"]["rows"]


@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        ({"label_horizon": 0}, "strategy.label_horizon"),
        ({"label_horizon": True}, "strategy.label_horizon"),
        ({"rules": {"entry_threshold": 0.4}}, "strategy.rules.entry_threshold"),
        ({"rules": {"entry_threshold": 0.55, "exit_threshold": 0.6}},
         "strategy.rules.exit_threshold"),
        ({"rules": {"min_hold_bars": 0}}, "strategy.rules.min_hold_bars"),
        ({"rules": {"stop_loss": -0.1}}, "strategy.rules.stop_loss"),
        ({"rules": {"take_profit": "lots"}}, "strategy.rules.take_profit"),
        ({"rules": {"allow_short": "yes"}}, "strategy.rules.allow_short"),
        ({"rules": {"trailing_stop": 0.1}}, "strategy.rules.trailing_stop"),
        ({"rules": [0.5]}, "strategy.rules.rules"),
    ],
)
def test_bad_strategies_name_the_field(local: Settings, strategy: dict[str, Any],
                                       field: str) -> None:
    MarketDataStore(local.data_dir).merge("BTCUSDT", "1h", planted_frame(BARS))
    with pytest.raises(InvalidInput) as exc, transaction(local.database_url) as session:
        jobs.create_training_job(session, local, model_type="xgboost", symbol="BTCUSDT",
                                 timeframe="1h", dataset_span_days=60, strategy=strategy)
    assert exc.value.field == field, exc.value.detail


def test_rules_are_stored_normalized(local: Settings) -> None:
    MarketDataStore(local.data_dir).merge("BTCUSDT", "1h", planted_frame(BARS))
    with transaction(local.database_url) as session:
        job = jobs.create_training_job(
            session, local, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=60, strategy={"label_horizon": 2, "rules": {
                "entry_threshold": 0.6, "stop_loss": 0}})
    assert job["strategy"] == {"label_horizon": 2, "rules": {
        "entry_threshold": 0.6, "exit_threshold": 0.5, "min_hold_bars": 1, "stop_loss": None,
        "take_profit": None, "allow_short": True}}
