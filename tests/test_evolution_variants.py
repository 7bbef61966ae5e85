"""Seed behaviour: a degraded production model gets strategy variants proposed as a small
quick search, and the chosen one is trained through the normal pipeline and gate."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows import evolution
from app.models.continuous import TriggerDecision, TriggerOutcome
from app.models.evolution import StrategySearch
from app.services.evolution.variants import base_params
from app.services.evolution.views import get_candidate, list_candidates
from tests.support.pipeline import run_job_inline
from tests.test_evolution_search import _published, planted_frame


def test_variants_start_from_the_strategy_the_version_was_trained_with() -> None:
    """The "current" control is the production version's whole strategy: model
    parameters, windows, label horizon and trading rules read back from its lineage."""
    from app.ml.evolution.space import space_for

    space = space_for("xgboost")
    version = {"params": {"n_estimators": 120, "max_depth": 5, "learning_rate": 0.05},
               "lineage": {"strategy": {
                   "windows": {"returns": [1, 36]}, "label_horizon": 4,
                   "long_threshold": 0.58,
                   "rules": {"entry_threshold": 0.61, "exit_threshold": 0.47,
                             "min_hold_bars": 6, "stop_loss": 0.02, "take_profit": 0.05,
                             "allow_short": True}}}}
    base = base_params(space, version)
    assert base["model_n_estimators"] == 120 and base["model_max_depth"] == 5
    assert base["window_returns"] == 36 and base["label_horizon"] == 4
    assert (base["entry_threshold"], base["exit_threshold"]) == (0.61, 0.47)
    assert (base["min_hold_bars"], base["stop_loss"], base["take_profit"]) == (6, 0.02, 0.05)
    # Values outside the declared space are snapped into it, not refused.
    wild = base_params(space, {"lineage": {"strategy": {
        "label_horizon": 99, "rules": {"stop_loss": 0.5}}}})
    assert wild["label_horizon"] == 12 and wild["stop_loss"] == 0.10


@pytest.mark.slow
def test_degraded_model_gets_variants_and_one_is_trained_through_the_gate(
        sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    from app.flows.live import record_live_report
    from app.ml.data.store import MarketDataStore
    from app.services import registry
    from app.services.checks.performance import LiveReport

    settings = make_settings(sqlite_url, CLM_EVOLUTION_VARIANTS=4,
                             CLM_PERFORMANCE_MIN_TRADES=5)
    MarketDataStore(settings.data_dir).merge("BTCUSDT", "1h", planted_frame(2000))
    model_id = "xgboost_btcusdt_1h"
    with transaction(settings.database_url) as session:
        v = registry.register_version(
            session, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            metrics={"sharpe": 1.2, "win_rate": 0.55, "profit_factor": 1.4,
                     "max_drawdown": 0.1, "trades": 80, "total_return": 0.2},
            params={"n_estimators": 40, "max_depth": 3, "learning_rate": 0.1},
            lineage={"dataset_span_days": 80,
                     "strategy": {"windows": {"returns": [1, 24]}, "long_threshold": 0.55}},
            actor="test")
        registry.promote(session, model_id, v["version"], actor="test", reason="seed")
    # Live results far below Sharpe 0.5: the performance trigger fires.
    rng = np.random.default_rng(0)
    body = LiveReport(model_id=model_id, returns=list(rng.normal(-0.002, 0.01, 200)),
                      trade_returns=list(rng.normal(-0.01, 0.02, 30)))
    now = utcnow()
    with transaction(settings.database_url) as session:
        out = record_live_report(session, settings, body, now=now, reported_by="test")
    assert out["rolling"]["degraded"] is True
    with transaction(settings.database_url) as session:
        searches = session.scalars(select(StrategySearch).where(
            StrategySearch.model_id == model_id)).all()
        assert len(searches) == 1 and searches[0].kind == "variants"
        sid = searches[0].id
        assert searches[0].source_model_version == v["version"]
    # Its coordinator was published once the check's transaction committed.
    assert _published(settings) == [("clm.evolution.advance_search", "default", [sid])]
    # The same degradation reported again does not start a second variant search.
    with transaction(settings.database_url) as session:
        record_live_report(session, settings, body, now=now + timedelta(minutes=1),
                           reported_by="test")
        assert len(session.scalars(select(StrategySearch.id)).all()) == 1

    result = evolution.drive_inline(settings, sid, timeout_s=180)
    assert result["status"] == "succeeded"
    with transaction(settings.database_url) as session:
        cands, _ = list_candidates(session, search_id=sid)
    origins = sorted(c["origin"] for c in cands)
    assert origins.count("current") == 1 and origins.count("mutation") == 3
    current = next(c for c in cands if c["origin"] == "current")
    assert current["params"]["window_returns"] == 24
    assert current["params"]["model_n_estimators"] == 40
    for c in cands:
        if c["origin"] == "mutation":  # ±20% around the current strategy
            ratio = c["params"]["entry_threshold"] / current["params"]["entry_threshold"]
            assert 0.8 - 0.02 <= ratio <= 1.2 + 0.02
    training = result["result"]["training"]
    assert training["created"] is True
    job = run_job_inline(settings, training["job_id"])
    # Through the normal gate: an evaluation with the gate's verdict, a registered version.
    assert job["status"] == "succeeded", job.get("error")
    assert job["trigger_reason"] == "performance_degraded"
    assert "passed" in job["evaluation"] and "failed_criteria" in job["evaluation"]
    assert job["version"]
    chosen = next(c for c in cands if c["id"] == result["chosen_candidate_id"])
    with transaction(settings.database_url) as session:
        assert get_candidate(session, chosen["id"])["training_job_id"] == \
            training["job_id"]
        # The training was a trigger decision of its own, naming the candidate.
        decision = session.scalars(select(TriggerDecision).where(
            TriggerDecision.job_id == training["job_id"],
            TriggerDecision.source == "evolution")).one()
    assert decision.outcome == TriggerOutcome.TRIGGERED
    assert decision.reason == "performance_degraded"
    assert decision.details["candidate_id"] == chosen["id"]
