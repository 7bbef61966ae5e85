"""The job service without workers: creation and dedupe, validation, claims and leases,
the fan-in counter, the reaper, publishing with the broker down, queries, and the HTTP
adapter. Runs on SQLite and PostgreSQL (`db_url`)."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from app.core.domain import JobStatus, ModelType, TriggerReason
from app.core.errors import InvalidInput
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows.pipeline import enqueue_job, execute_stage, execute_work_item
from app.ml.data.store import MarketDataStore
from app.ml.data.synthetic import generate_ohlcv
from app.models.jobs import JobStage, TrainingJob, TrainingJobWorkItem, WorkKind
from app.services import jobs

BARS = 1500  # 62.5 days of 1h bars: enough for 3 folds with the default EvaluationConfig


@pytest.fixture
def market(settings):
    store = MarketDataStore(settings.data_dir)
    store.merge("PLANTED", "1h", generate_ohlcv("planted", BARS, seed=1))
    store.merge("NOISE", "1h", generate_ohlcv("random_walk", BARS, seed=2))
    return store


def _create(settings, **kw):
    args = {"model_type": "xgboost", "symbol": "planted", "timeframe": "1h",
            "dataset_span_days": 60, "params": {"n_estimators": 10}}
    args.update(kw)
    with transaction(settings.database_url) as session:
        return jobs.create_training_job(session, settings, **args)


def test_create_records_ten_pending_steps_and_dedupes_per_model(settings, market):
    job = _create(settings, requested_by="alice")
    assert job["status"] == "queued" and job["model_id"] == "xgboost_planted_1h"
    assert [s["name"] for s in job["steps"]] == list(jobs.STEP_NAMES)
    assert {s["status"] for s in job["steps"]} == {"pending"}
    assert job["progress"] == 0.0 and job["requested_by"] == "alice"
    assert job["params"]["n_estimators"] == 10 and "max_depth" in job["params"]  # validated

    with pytest.raises(jobs.ActiveJobExists) as exc:
        _create(settings, trigger_reason="drift_detected")
    assert exc.value.job_id == job["job_id"]
    assert exc.value.extra["job_id"] == job["job_id"]  # rides along in the 409 body

    # Another model_id is independent; a finished job frees its model_id.
    other = _create(settings, model_type="lightgbm")
    assert other["model_id"] == "lightgbm_planted_1h"
    with transaction(settings.database_url) as session:
        assert jobs.fail_job(session, job["job_id"], "cancelled by test")
    again = _create(settings)
    assert again["job_id"] != job["job_id"]


def test_one_active_job_per_model_is_enforced_by_the_database(settings):
    now = utcnow()

    def row(status):
        return TrainingJob(
            id=str(__import__("uuid").uuid4()), model_id="xgboost_x_1h",
            model_type=ModelType.XGBOOST, symbol="X", timeframe="1h", dataset_span_days=1,
            params={}, trigger_reason=TriggerReason.MANUAL, status=status,
            stage=JobStage.PREPARE, attempts=0, dispatches=0, folds_total=0, folds_done=0,
            artifacts={}, created_at=now, updated_at=now,
        )

    with transaction(settings.database_url) as session:
        session.add_all([row(JobStatus.SUCCEEDED), row(JobStatus.FAILED), row(JobStatus.QUEUED)])
    with pytest.raises(IntegrityError), transaction(settings.database_url) as session:
        session.add(row(JobStatus.RUNNING))  # bypasses the service: the index says no


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "other"}, "params.trainer"),  # a plug-in type names its trainer
        ({"model_type": "catboost"}, "model_type"),
        ({"symbol": "NOPE"}, "symbol"),  # no data stored
        ({"symbol": "bad symbol!"}, "symbol"),
        ({"timeframe": "2h"}, "timeframe"),
        ({"timeframe": "4h"}, "symbol"),  # symbol exists, not at this timeframe
        ({"dataset_span_days": 400}, "dataset_span_days"),  # more than is stored
        ({"dataset_span_days": 3}, "dataset_span_days"),  # too few bars for walk-forward
        ({"dataset_span_days": 0}, "dataset_span_days"),
        ({"params": {"max_depth": 0}}, "params.max_depth"),
        ({"params": {"bogus": 1}}, "params.bogus"),
        ({"trigger_reason": "whim"}, "trigger_reason"),
        ({"strategy": {"windows": {"rsi": [0]}}}, "strategy.windows"),
        ({"strategy": {"colour": "red"}}, "strategy"),
    ],
)
def test_bad_requests_name_the_field(settings, market, change, field):
    with pytest.raises(InvalidInput) as exc:
        _create(settings, **change)
    assert exc.value.field == field, exc.value.detail


def _claimed(settings, owner="w1/a"):
    job = _create(settings)
    with transaction(settings.database_url) as session:
        claimed = jobs.claim_stage(session, settings, job["job_id"], "prepare", owner)
    assert claimed is not None
    return job["job_id"]


def test_claim_is_exclusive_and_an_expired_lease_is_taken_over(settings, market):
    job_id = _claimed(settings, "w1/a")
    lease = timedelta(seconds=settings.job_lease_seconds)
    with transaction(settings.database_url) as session:
        job = session.get(TrainingJob, job_id)
        assert (job.status, job.attempts, job.lease_owner) == (JobStatus.RUNNING, 1, "w1/a")
        # A duplicate delivery finds the lease held and does nothing.
        assert jobs.claim_stage(session, settings, job_id, "prepare", "w2/b") is None
        # A stale message for a later stage does nothing either.
        assert jobs.claim_stage(session, settings, job_id, "evaluate", "w2/b") is None
    later = utcnow() + lease + timedelta(seconds=1)
    with transaction(settings.database_url) as session:
        taken = jobs.claim_stage(session, settings, job_id, "prepare", "w2/b", now=later)
        assert taken is not None and taken["attempts"] == 2  # the lost lease cost an attempt
        assert not jobs.renew_stage_lease(session, settings, job_id, "w1/a", 1)  # w1 lost it
        assert jobs.renew_stage_lease(session, settings, job_id, "w2/b", 2)
        with pytest.raises(jobs.LeaseLost):
            jobs.begin_step(session, settings, job_id, "w1/a", 1, "fetch_data")


def test_claims_stop_when_attempts_are_spent(settings, market):
    job_id = _claimed(settings, "w1/a")
    lease = timedelta(seconds=settings.job_lease_seconds + 1)
    now = utcnow()
    for n in range(2, settings.job_max_attempts + 1):
        now += lease
        with transaction(settings.database_url) as session:
            assert jobs.claim_stage(session, settings, job_id, "prepare", f"w{n}/x", now=now)
    now += lease
    with transaction(settings.database_url) as session:
        assert jobs.claim_stage(session, settings, job_id, "prepare", "late/x", now=now) is None
        result = jobs.reap(session, settings, now=now)
    assert result.failed == [job_id]
    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
    assert job["status"] == "failed"
    assert "lease" in job["error"] and f"attempt {settings.job_max_attempts}" in job["error"]
    assert job["steps"][-1]["status"] == "skipped"


def _in_train_stage(settings, items):
    job_id = _claimed(settings, "prep/1")
    with transaction(settings.database_url) as session:
        jobs.start_train_stage(session, settings, job_id, "prep/1", 1, items,
                               {"dataset": {"uri": "cas://x"}})
        # What the fan-out published after its commit: one train-queue task per item.
        dispatches = jobs.pending_dispatches(session, job_id)
    assert sorted((d.kind, d.fold) for d in dispatches) == sorted(
        (WorkKind(k).value, f) for k, f in items)
    assert {d.queue for d in dispatches} == {"train"}
    return job_id


def test_fan_in_counts_each_item_once_and_advances_exactly_once(settings, market):
    items = [(WorkKind.FINAL, 0), (WorkKind.FOLD, 0), (WorkKind.FOLD, 1)]
    job_id = _in_train_stage(settings, items)
    advanced = []
    for kind, fold in items:
        owner = f"t/{kind}{fold}"
        with transaction(settings.database_url) as session:
            claim = jobs.claim_work_item(session, settings, job_id, kind, fold, owner)
            assert claim is not None and claim["item"]["attempts"] == 1
            # A second delivery of the same item exits.
            assert jobs.claim_work_item(session, settings, job_id, kind, fold, "dup/x") is None
        with transaction(settings.database_url) as session:
            advanced.append(jobs.complete_work_item(
                session, settings, job_id, kind, fold, owner, 1,
                {"uri": f"cas://{kind}{fold}", "fit_s": 0.1}))
        # A redelivered completion neither counts nor advances again.
        with pytest.raises(jobs.LeaseLost), transaction(settings.database_url) as session:
            jobs.complete_work_item(session, settings, job_id, kind, fold, owner, 1, {})
        with transaction(settings.database_url) as session:
            assert jobs.claim_work_item(session, settings, job_id, kind, fold, "late/x") is None
    assert advanced == [False, False, True]  # only the last completion advances
    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
        assert jobs.pending_dispatches(session, job_id) == [
            jobs.stage_dispatch(job_id, JobStage.EVALUATE)]
    assert (job["folds"]["done"], job["folds"]["total"], job["stage"]) == (3, 3, "evaluate")
    steps = {s["name"]: s["status"] for s in job["steps"]}
    assert steps["train_folds"] == steps["final_fit"] == "succeeded"


def test_reaper_republishes_unclaimed_work_without_spending_attempts(settings, market):
    job = _create(settings)
    with transaction(settings.database_url) as session:
        assert jobs.reap(session, settings).dispatches == []  # deadline not reached
    first = utcnow() + timedelta(seconds=settings.job_lease_seconds + 1)
    with transaction(settings.database_url) as session:
        result = jobs.reap(session, settings, now=first)
        row = session.get(TrainingJob, job["job_id"])
        assert result.dispatches == [jobs.stage_dispatch(job["job_id"], "prepare")]
        assert result.redispatched == [job["job_id"]] and row.attempts == 0
        # The next deadline backs off, so a job waiting in a long queue is not flooded.
        assert row.lease_expires_at - first == 2 * timedelta(seconds=settings.job_lease_seconds)
        assert jobs.reap(session, settings, now=first + timedelta(seconds=1)).dispatches == []


def test_reaper_recovers_a_lost_stage_lease_then_gives_up(settings, market):
    job_id = _claimed(settings, "dead/1")
    now = utcnow() + timedelta(seconds=settings.job_lease_seconds + 1)
    with transaction(settings.database_url) as session:
        result = jobs.reap(session, settings, now=now)
        row = session.get(TrainingJob, job_id)
        assert result.recovered == [job_id]
        assert (row.attempts, row.lease_owner, row.status) == (2, None, JobStatus.RUNNING)
        # The republished task claims it without spending another attempt.
        claimed = jobs.claim_stage(session, settings, job_id, "prepare", "w/2", now=now)
        assert claimed["attempts"] == 2


def test_reaper_recovers_lost_work_items_and_fails_when_spent(settings, market):
    job_id = _in_train_stage(settings, [(WorkKind.FINAL, 0), (WorkKind.FOLD, 0)])
    lease = timedelta(seconds=settings.job_lease_seconds + 1)
    now = utcnow()
    with transaction(settings.database_url) as session:
        assert jobs.claim_work_item(session, settings, job_id, "fold", 0, "dead/1", now=now)
        assert jobs.claim_work_item(session, settings, job_id, "final", 0, "ok/1", now=now)
    for attempt in range(2, settings.job_max_attempts + 1):
        now += lease
        with transaction(settings.database_url) as session:
            jobs.renew_item_lease(session, settings, job_id, "final", 0, "ok/1", 1, now=now)
            result = jobs.reap(session, settings, now=now)
            assert result.dispatches == [jobs.item_dispatch(job_id, "fold", 0)]
            assert jobs.claim_work_item(session, settings, job_id, "fold", 0, f"dead/{attempt}",
                                        now=now)["item"]["attempts"] == attempt
    now += lease
    with transaction(settings.database_url) as session:
        jobs.renew_item_lease(session, settings, job_id, "final", 0, "ok/1", 1, now=now)
        assert jobs.reap(session, settings, now=now).failed == [job_id]
    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
        items = session.scalars(select(TrainingJobWorkItem)
                                .where(TrainingJobWorkItem.job_id == job_id)).all()
    assert job["status"] == "failed" and "fold 0" in job["error"]
    assert {s["name"]: s["status"] for s in job["steps"]}["train_folds"] == "failed"
    assert all(i.lease_owner is None for i in items)
    # The surviving item's completion is refused: the job is over.
    with pytest.raises(jobs.LeaseLost), transaction(settings.database_url) as session:
        jobs.complete_work_item(session, settings, job_id, "final", 0, "ok/1", 1, {})


def test_broker_down_at_enqueue_keeps_the_job_for_the_reaper(sqlite_url, make_settings):
    settings = make_settings(sqlite_url, CLM_BROKER_URL="redis://127.0.0.1:1/0")
    MarketDataStore(settings.data_dir).merge("PLANTED", "1h",
                                             generate_ohlcv("planted", BARS, seed=1))
    job = _create(settings)
    assert enqueue_job(job["job_id"], settings) is False  # logged, not raised
    later = utcnow() + timedelta(seconds=settings.job_lease_seconds + 1)
    with transaction(settings.database_url) as session:
        assert jobs.get_job(session, job["job_id"])["status"] == "queued"
        assert jobs.reap(session, settings, now=later).redispatched == [job["job_id"]]


def test_list_filters_and_cursor_pagination(settings, market):
    made = [_create(settings, model_type=m, symbol=s, trigger_reason=r)["job_id"]
            for m, s, r in [("xgboost", "planted", "manual"), ("lightgbm", "planted", "periodic"),
                            ("xgboost", "noise", "periodic")]]
    with transaction(settings.database_url) as session:
        everything, _ = jobs.list_jobs(session, limit=10)
        assert [j["job_id"] for j in everything] == made[::-1]  # newest first
        first, keys = jobs.list_jobs(session, limit=2)
        rest, _ = jobs.list_jobs(session, limit=2, after=keys[1])
        assert [j["job_id"] for j in first[:2] + rest] == made[::-1]
        periodic, _ = jobs.list_jobs(session, trigger_reason="periodic")
        assert {j["job_id"] for j in periodic} == set(made[1:])
        xgb_noise, _ = jobs.list_jobs(session, model_type="xgboost", model_id="xgboost_noise_1h")
        assert [j["job_id"] for j in xgb_noise] == [made[2]]
        assert jobs.list_jobs(session, status="succeeded")[0] == []
        assert jobs.job_counts(session) == {"queued": 3, "running": 0, "succeeded": 0,
                                            "failed": 0}
        for bad in ("nope", made[0].upper(), "00000000-0000-4000-8000-000000000000"):
            with pytest.raises(jobs.JobNotFound):
                jobs.get_job(session, bad)


# -- the HTTP adapter (no workers: the message just waits in the broker) ---------------
def test_post_train_202_then_409_with_the_active_job(client, auth, market):
    body = {"model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
            "dataset_span_days": 60, "params": {"n_estimators": 10}}
    r = client.post("/clm/train", json=body, headers=auth("operator"))
    assert r.status_code == 202, r.get_json()
    created = r.get_json()
    assert created["status"] == "queued" and created["model_id"] == "xgboost_planted_1h"
    assert r.headers["Location"] == f"/clm/jobs/{created['job_id']}"
    r = client.post("/clm/train", json=body, headers=auth("operator"))
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert r.get_json()["job_id"] == created["job_id"]

    r = client.get(f"/clm/jobs/{created['job_id']}", headers=auth("viewer"))
    assert r.status_code == 200
    job = r.get_json()
    assert job["trigger_reason"] == "manual" and len(job["steps"]) == 10
    assert job["requested_by"] == "token:test-operator"
    r = client.get("/clm/jobs?status=queued&model_type=xgboost", headers=auth("viewer"))
    assert [j["job_id"] for j in r.get_json()["items"]] == [created["job_id"]]
    assert r.get_json()["next_cursor"] is None
    status = client.get("/clm/status", headers=auth("viewer")).get_json()
    assert status["jobs"]["queued"] == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'clm_training_jobs{status="queued",trigger_reason="manual"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_type": "sklearn"}, "model_type"),
        ({"timeframe": "7m"}, "timeframe"),
        ({"dataset_span_days": "sixty"}, "dataset_span_days"),
        ({"dataset_span_days": 0}, "dataset_span_days"),
        ({"dataset_span_days": 500}, "dataset_span_days"),
        ({"symbol": "NOPE"}, "symbol"),
        ({"model_type": "patchtst", "params": {"lookback": 1}}, "params.lookback"),
        ({"params": {"learning_rate": 7}}, "params.learning_rate"),
        ({"trigger_reason": "boredom"}, "trigger_reason"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_post_train_422_names_the_field(client, auth, market, body, field):
    base = {"model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
            "dataset_span_days": 60}
    r = client.post("/clm/train", json={**base, **body}, headers=auth("operator"))
    assert r.status_code == 422, r.get_json()
    assert r.mimetype == "application/problem+json"
    assert field in [e["field"] for e in r.get_json()["errors"]]


def test_jobs_api_auth_and_bad_input(client, auth, market):
    body = {"model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
            "dataset_span_days": 60}
    assert client.post("/clm/train", json=body).status_code == 401
    assert client.post("/clm/train", json=body, headers=auth("viewer")).status_code == 403
    assert client.get("/clm/jobs").status_code == 401
    r = client.post("/clm/train", data="{not json", headers={**auth("operator"),
                                                            "Content-Type": "application/json"})
    assert r.status_code == 400
    for path, status in [("/clm/jobs/not-a-uuid", 404),
                         ("/clm/jobs/3f2b1c9e-8f0a-4c1e-9b6a-2d7c1e0f9a11", 404),
                         ("/clm/jobs?status=paused", 422), ("/clm/jobs?limit=0", 422),
                         ("/clm/jobs?cursor=garbage", 422)]:
        r = client.get(path, headers=auth("viewer"))
        assert r.status_code == status, (path, r.get_json())
        assert r.mimetype == "application/problem+json"


# -- the executors in this process (no broker needed for these paths) -----------------
def test_a_permanent_step_error_fails_the_job_naming_the_step(settings, market):
    job = _create(settings)
    shutil.rmtree(settings.data_dir / "PLANTED")  # the data vanished after validation
    assert execute_stage(settings, job["job_id"], "prepare", "test:1") == "failed"
    with transaction(settings.database_url) as session:
        failed = jobs.get_job(session, job["job_id"])
    steps = {s["name"]: s["status"] for s in failed["steps"]}
    assert failed["status"] == "failed" and failed["error"].startswith("fetch_data: ")
    assert "no market data" in failed["error"]
    assert (steps["validate_request"], steps["fetch_data"], steps["train_folds"]) == (
        "succeeded", "failed", "skipped")
    # A redelivered message for the failed job does nothing.
    assert execute_stage(settings, job["job_id"], "prepare", "test:2") == "duplicate"


def test_transient_database_errors_reach_celery_for_a_retry(make_settings):
    settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    job_id = "3f2b1c9e-8f0a-4c1e-9b6a-2d7c1e0f9a11"
    # Not swallowed, not recorded as a failure: the task's autoretry_for backs off.
    with pytest.raises(OperationalError):
        execute_stage(settings, job_id, "prepare", "test:1")
    with pytest.raises(OperationalError):
        execute_work_item(settings, job_id, "fold", 0, "test:1")
