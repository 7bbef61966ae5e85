"""Evolve jobs are real jobs, and POST /clm/train is a trigger decision.

- A strategy search (POST /clm/evolve, app.flows.evolution) creates a `kind=evolve` row
  in training_jobs whose status, progress (trials recorded / planned) and steps (one per
  generation) follow the search; GET /clm/jobs lists it and filters by kind.
- The one-active-job rule covers train jobs only: a model may train while it is searched.
- The jobs reaper, claims and publishing leave evolve jobs alone (the evolution reaper
  owns searches); arbitration does not mistake a search for an active training.
- POST /clm/train records a `triggered` decision with its job, and a request answered 409
  a `coalesced` one pointing at the active job; both show in GET /clm/triggers.

Runs on SQLite and PostgreSQL (`settings` is parametrized over both).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.bus.evolution_tasks import NextSteps
from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows import evolution
from app.ml.data.store import MarketDataStore
from app.models.continuous import TriggerDecision, TriggerOutcome
from app.models.jobs import JobKind, JobStage, TrainingJob
from app.services import jobs
from app.services.evolution.create import create_search
from tests.test_evolution_search import FAST_EVAL, planted_frame, planted_space

MODEL_ID = "xgboost_btcusdt_1h"


def _start_search(settings: Settings, *, population: int = 2, generations: int = 2,
                  frame: Any = None) -> dict[str, Any]:
    with transaction(settings.database_url) as session:
        return create_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=50, frame=frame if frame is not None else planted_frame(1300),
            evaluation=FAST_EVAL, population=population, generations=generations,
            base_space=planted_space(), requested_by="tester")


def _job(settings: Settings, job_id: str) -> dict[str, Any]:
    with transaction(settings.database_url) as session:
        return jobs.get_job(session, job_id)


def _store_market(settings: Settings, bars: int = 1500) -> None:
    MarketDataStore(settings.data_dir).merge("BTCUSDT", "1h", planted_frame(bars))


def test_a_search_is_a_job_whose_status_and_progress_follow_it(settings: Settings) -> None:
    started = _start_search(settings, population=2, generations=2)
    job_id, sid = started["job_id"], started["search_id"]

    job = _job(settings, job_id)
    assert (job["kind"], job["status"], job["search_id"]) == ("evolve", "queued", sid)
    assert job["model_id"] == MODEL_ID and job["requested_by"] == "tester"
    assert [s["name"] for s in job["steps"]] == ["generation_0", "generation_1",
                                                 "select_and_validate"]
    assert {s["status"] for s in job["steps"]} == {"pending"}
    assert job["progress"] == 0.0 and job["trials"] == {"total": 4, "done": 0}

    # Generation 0 asked: the job runs, its first step too.
    trials = evolution.run_advance(settings, sid, publish=False).trials
    assert len(trials) == 2
    job = _job(settings, job_id)
    assert job["status"] == "running" and job["started_at"] is not None
    assert [s["status"] for s in job["steps"]] == ["running", "pending", "pending"]
    assert job["steps"][0]["detail"] == {"trials": 2}

    # One trial recorded: 1 of 4 planned trials.
    assert evolution.run_trial(settings, trials[0], publish=False) == NextSteps()
    assert _job(settings, job_id)["progress"] == 0.25
    # A duplicate delivery of that trial does not count twice.
    assert evolution.run_trial(settings, trials[0], publish=False) == NextSteps()
    assert _job(settings, job_id)["progress"] == 0.25
    # The trial completing generation 0 completes its step.
    advance = evolution.run_trial(settings, trials[1], publish=False)
    assert advance == NextSteps(searches=(sid,))
    job = _job(settings, job_id)
    assert job["progress"] == 0.5
    assert job["steps"][0]["status"] == "succeeded"
    assert job["steps"][0]["detail"]["evaluated"] + job["steps"][0]["detail"]["failed"] == 2

    result = evolution.drive_inline(settings, sid, timeout_s=240)
    assert result["status"] == "succeeded"
    job = _job(settings, job_id)
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert job["trials"] == {"total": 4, "done": 4} and job["finished_at"] is not None
    assert {s["status"] for s in job["steps"]} == {"succeeded"}
    final = job["steps"][-1]
    assert final["detail"]["chosen_candidate_id"] == result["chosen_candidate_id"]
    assert final["started_at"] <= final["finished_at"]

    # Listed with the training jobs, and by kind.
    with transaction(settings.database_url) as session:
        every, _ = jobs.list_jobs(session)
        evolve, _ = jobs.list_jobs(session, kind="evolve")
        train, _ = jobs.list_jobs(session, kind="train")
    assert [j["job_id"] for j in every] == [job_id]
    assert [j["job_id"] for j in evolve] == [job_id] and train == []


def test_a_model_trains_while_it_is_searched_and_only_train_jobs_are_exclusive(
        settings: Settings) -> None:
    _store_market(settings)
    first = _start_search(settings)
    second = _start_search(settings)  # two searches of one model may run at once
    with transaction(settings.database_url) as session:
        train = jobs.create_training_job(
            session, settings, model_type="xgboost", symbol="btcusdt", timeframe="1h",
            dataset_span_days=60, params={"n_estimators": 10})
        assert jobs.find_active_job(session, MODEL_ID) == train["job_id"]
    assert train["kind"] == "train"
    with pytest.raises(jobs.ActiveJobExists) as exc, \
            transaction(settings.database_url) as session:
        jobs.create_training_job(session, settings, model_type="xgboost", symbol="btcusdt",
                                 timeframe="1h", dataset_span_days=60)
    assert exc.value.job_id == train["job_id"]  # the train job, never a search's
    statuses = {_job(settings, j)["status"] for j in (first["job_id"], second["job_id"])}
    assert statuses == {"queued"}


def test_a_failed_search_fails_its_job_and_skips_what_never_ran(settings: Settings) -> None:
    job_id = "6f1c1a52-5d0e-4f4e-9a51-3b1d2f9c0a11"
    with transaction(settings.database_url) as session:
        jobs.create_evolve_job(session, job_id=job_id, search_id="s-1", model_type="xgboost",
                               symbol="btcusdt", timeframe="1h", dataset_span_days=10,
                               generations=3, trials_planned=12)
        jobs.evolve_generation_started(session, job_id, 0, trials=4)
        jobs.evolve_trial_recorded(session, job_id)
    with transaction(settings.database_url) as session:
        assert jobs.finish_evolve_job(session, job_id, status="failed", error="optuna broke")
        # Finished is final: a late trial, generation or second finish changes nothing.
        assert not jobs.finish_evolve_job(session, job_id, status="succeeded")
        jobs.evolve_trial_recorded(session, job_id)
        jobs.evolve_generation_completed(session, job_id, 0)
    job = _job(settings, job_id)
    assert (job["status"], job["error"], job["progress"]) == ("failed", "optuna broke", 0.0833)
    assert [s["status"] for s in job["steps"]] == ["failed", "skipped", "skipped", "failed"]
    assert job["steps"][-1]["detail"]["error"] == "optuna broke"
    assert job["model_id"] == MODEL_ID and job["search_id"] == "s-1"


def test_the_jobs_reaper_claims_and_publishing_leave_evolve_jobs_alone(
        settings: Settings) -> None:
    started = _start_search(settings)
    job_id = started["job_id"]
    long_ago = utcnow() - timedelta(hours=1)
    # Make the row look exactly like a train job whose dispatch deadline passed.
    with transaction(settings.database_url) as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
            stage=JobStage.PREPARE, lease_expires_at=long_ago, lease_owner=None))
    with transaction(settings.database_url) as session:
        result = jobs.reap(session, settings)
        assert job_id not in result.redispatched + result.recovered + result.failed
        assert result.dispatches == []
        assert jobs.pending_dispatches(session, job_id) == []
        assert jobs.claim_stage(session, settings, job_id, "prepare", "w/1") is None
    with transaction(settings.database_url) as session:
        row = session.get(TrainingJob, job_id)
        assert row is not None and row.kind == JobKind.EVOLVE
        assert row.dispatches == 0 and row.lease_owner is None  # untouched


def test_arbitration_does_not_mistake_a_search_for_an_active_training(
        settings: Settings) -> None:
    from app.services.triggers import arbitrate, record_request

    _store_market(settings)
    _start_search(settings)
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        decision = record_request(
            session, settings, model_id=MODEL_ID, reason="drift_detected",
            dedupe_key="drift:1", source="test", now=now, params={"n_estimators": 10},
            dataset_span_days=60)
        started = arbitrate(session, settings, now=now, model_ids=[MODEL_ID])
        assert decision.outcome == TriggerOutcome.TRIGGERED, decision.detail
        assert started == [decision.job_id]


def test_http_lists_evolve_jobs_with_the_contract_shape(
        client: Any, auth: Callable[[str], dict[str, str]], settings: Settings) -> None:
    _store_market(settings)
    body = {"model_type": "xgboost", "symbol": "btcusdt", "timeframe": "1h",
            "dataset_span_days": 60, "population": 2, "generations": 1,
            "space": {"model_n_estimators": 20, "window_volatility": 8, "window_zscore": 8}}
    resp = client.post("/clm/evolve", json=body, headers=auth("operator"))
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["job_id"]
    trained = client.post("/clm/train", json={
        "model_type": "xgboost", "symbol": "btcusdt", "timeframe": "1h",
        "dataset_span_days": 60}, headers=auth("operator"))
    assert trained.status_code == 202, trained.get_json()  # the search does not block it

    listed = client.get("/clm/jobs?kind=evolve", headers=auth("viewer")).get_json()["items"]
    assert [j["job_id"] for j in listed] == [job_id]
    every = client.get("/clm/jobs", headers=auth("viewer")).get_json()["items"]
    assert {j["job_id"] for j in every} == {job_id, trained.get_json()["job_id"]}
    only_train = client.get("/clm/jobs?kind=train", headers=auth("viewer")).get_json()
    assert [j["job_id"] for j in only_train["items"]] == [trained.get_json()["job_id"]]
    bad = client.get("/clm/jobs?kind=search", headers=auth("viewer"))
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "kind"

    one = client.get(f"/clm/jobs/{job_id}", headers=auth("viewer")).get_json()
    for key in ("job_id", "status", "model_id", "trigger_reason", "steps", "progress"):
        assert key in one
    assert 0.0 <= one["progress"] <= 1.0 and one["trigger_reason"] == "manual"
    for step in one["steps"]:
        assert {"name", "status", "started_at", "finished_at"} <= set(step)


# -- POST /clm/train as a trigger decision ---------------------------------------------
def _decisions(settings: Settings) -> list[TriggerDecision]:
    with transaction(settings.database_url) as session:
        rows = session.scalars(select(TriggerDecision).order_by(TriggerDecision.id)).all()
        session.expunge_all()
        return list(rows)


def test_http_train_records_triggered_and_coalesced_decisions(
        client: Any, auth: Callable[[str], dict[str, str]], settings: Settings) -> None:
    _store_market(settings)
    body = {"model_type": "xgboost", "symbol": "btcusdt", "timeframe": "1h",
            "dataset_span_days": 60, "params": {"n_estimators": 10}}
    bad = client.post("/clm/train", json={**body, "dataset_span_days": 4000},
                      headers=auth("operator"))
    assert bad.status_code == 422
    assert _decisions(settings) == []  # a refused request is not a decision

    first = client.post("/clm/train", json=body, headers=auth("operator"))
    assert first.status_code == 202, first.get_json()
    job_id = first.get_json()["job_id"]
    again = client.post("/clm/train", json={**body, "trigger_reason": "drift_detected"},
                        headers=auth("operator"))
    assert again.status_code == 409 and again.get_json()["job_id"] == job_id

    triggered, coalesced = _decisions(settings)
    assert (triggered.outcome, triggered.reason, triggered.job_id) == (
        TriggerOutcome.TRIGGERED, "manual", job_id)
    assert triggered.source == "api" and triggered.requested_by
    assert triggered.decided_at is not None and triggered.params["n_estimators"] == 10
    assert (coalesced.outcome, coalesced.reason, coalesced.job_id) == (
        TriggerOutcome.COALESCED, "drift_detected", job_id)

    # Served by GET /clm/triggers, and decided already: arbitration leaves them be.
    items = client.get(f"/clm/triggers?model_id={MODEL_ID}",
                       headers=auth("viewer")).get_json()["items"]
    assert [(d["outcome"], d["job_id"]) for d in items] == [("coalesced", job_id),
                                                           ("triggered", job_id)]
    by_job = client.get(f"/clm/triggers?job_id={job_id}&outcome=triggered",
                        headers=auth("viewer")).get_json()["items"]
    assert [d["id"] for d in by_job] == [triggered.id]
    from app.services.triggers import arbitrate

    with transaction(settings.database_url, immediate=True) as session:
        assert arbitrate(session, settings, now=utcnow()) == []
    assert [d.outcome for d in _decisions(settings)] == [TriggerOutcome.TRIGGERED,
                                                         TriggerOutcome.COALESCED]


# -- migration 0005 ---------------------------------------------------------------------
_INSERT = (
    "INSERT INTO training_jobs (id, {kind_col}model_id, model_type, symbol, timeframe, "
    "dataset_span_days, params, trigger_reason, status, stage, attempts, dispatches, "
    "folds_total, folds_done, artifacts, created_at, updated_at) VALUES (:id, {kind_val}"
    "'xgboost_x_1h', 'xgboost', 'X', '1h', 1, '{{}}', 'manual', 'queued', 'prepare', 0, 0, "
    "0, 0, '{{}}', '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0005_keeps_existing_jobs_as_train_and_downgrades_cleanly(
        backend: str, request: pytest.FixtureRequest) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import IntegrityError

    from app import migrate

    dbs = request.getfixturevalue("sqlite_dbs" if backend == "sqlite" else "postgres_dbs")
    url = dbs.empty()
    migrate.upgrade(url, "0004_evolution")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(_INSERT.format(kind_col="", kind_val="")), {"id": "old-train"})
        migrate.upgrade(url)
        migrate.check(url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT kind FROM training_jobs")).scalar_one() == "train"
            # An active search beside the active training job: allowed now.
            conn.execute(text(_INSERT.format(kind_col="kind, ", kind_val="'evolve', ")),
                         {"id": "search-job"})
        with pytest.raises(IntegrityError), engine.begin() as conn:  # a second active train
            conn.execute(text(_INSERT.format(kind_col="kind, ", kind_val="'train', ")),
                         {"id": "second-train"})
        with pytest.raises(IntegrityError), engine.begin() as conn:  # not a kind
            conn.execute(text(_INSERT.format(kind_col="kind, ", kind_val="'other', ")),
                         {"id": "bogus"})
        migrate.downgrade(url, "0004_evolution")
        with engine.begin() as conn:
            ids = conn.execute(text("SELECT id FROM training_jobs")).scalars().all()
        assert ids == ["old-train"]  # the evolve job went with its kind
        migrate.upgrade(url)
        migrate.check(url)
    finally:
        engine.dispose()
        if backend == "postgresql":
            dbs.drop(url)
