"""Faults of the distributed setup (PostgreSQL + Redis, several real worker processes).

- Redis restarted while jobs are queued (a private redis-server that keeps nothing on
  disk, SIGKILLed and started again empty): every queued message is gone, the training
  task running at that moment is cancelled by its worker (connection loss) instead of
  finishing in the background while someone else redoes it, and `clm beat`'s reaper
  re-publishes everything from the database: every job ends succeeded, one version each.
- PostgreSQL restarted during a run (a private cluster, stopped and started): the API
  answers 503 problem+json (never 500) while it is down and writes nothing; the
  workers' transactions roll back and retry; the event consumer puts back the event it
  could not record and waits the outage out; then the job finishes with one version and
  a consistent record, the event is handled once, and the API accepts work again.
- A worker stopped with SIGTERM mid-fold (`clm worker`: Celery's soft shutdown, bounded
  by CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S): it exits promptly without finishing the fold,
  the fold's message goes back to the queue and another worker completes the job.

(A worker SIGKILLed mid-job: tests/test_jobs_faults.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.config import Settings
from app.db import dispose_engines, transaction
from app.models.jobs import TrainingJob, TrainingJobStep, TrainingJobWorkItem, WorkStatus
from app.models.registry import ModelVersion
from tests.support.pipeline import SPAN_DAYS, Backend, seed_market
from tests.support.private_services import PrivatePostgres, PrivateRedis
from tests.support.workers import (
    REPO,
    WorkerProcess,
    WorkerSpec,
    running_beat,
    running_workers,
    tail,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(300)]

TINY = {"n_estimators": 15, "max_depth": 3}
# Slow enough to be caught (and interrupted) in the middle of a fold.
SLOW = {"n_estimators": 1500, "max_depth": 5, "learning_rate": 0.01}
SLOWER = {"n_estimators": 4000, "max_depth": 6, "learning_rate": 0.01}
# Short leases and a reaper every second (recovery in seconds, not minutes); two folds.
FAST_RECOVERY = {"CLM_JOB_LEASE_SECONDS": 3, "CLM_REAPER_INTERVAL_S": 1,
                 "CLM_TRAIN_THREADS": 1, "CLM_WALK_FORWARD_FOLDS": 2}


def _backend(make_settings: Callable[..., Settings], db_url: str, broker_url: str,
             **env: Any) -> Backend:
    """Settings, Flask test client and one token per role on the given services."""
    settings = make_settings(db_url, CLM_BROKER_URL=broker_url, **env)
    from app import create_app
    from app.services.auth import create_token

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    with transaction(settings.database_url) as session:
        tokens = {r: create_token(session, role=r, name=f"ops-{r}")
                  for r in ("viewer", "operator", "admin")}
    return Backend("ops", settings, flask_app.test_client(), tokens)


def _submit(backend: Backend, model_type: str, symbol: str, params: dict[str, Any]) -> str:
    r = backend.client.post("/clm/train", headers=backend.auth("operator"), json={
        "model_type": model_type, "symbol": symbol, "timeframe": "1h",
        "dataset_span_days": SPAN_DAYS, "params": params})
    assert r.status_code == 202, r.get_json()
    return str(r.get_json()["job_id"])


def _job(backend: Backend, job_id: str) -> dict[str, Any]:
    r = backend.client.get(f"/clm/jobs/{job_id}", headers=backend.auth("viewer"))
    assert r.status_code == 200, r.get_json()
    return dict(r.get_json())


def _wait_final(backend: Backend, job_ids: list[str], timeout: float) -> dict[str, dict]:
    def all_final() -> dict[str, dict] | None:
        jobs = {j: _job(backend, j) for j in job_ids}
        done = all(v["status"] in ("succeeded", "failed") for v in jobs.values())
        return jobs if done else None

    return wait_for(all_final, timeout=timeout, interval=0.5, what="every job to finish")


def _running_fold(settings: Settings, job_id: str | None = None) -> TrainingJobWorkItem | None:
    with transaction(settings.database_url) as session:
        query = select(TrainingJobWorkItem).where(
            TrainingJobWorkItem.status == WorkStatus.RUNNING,
            TrainingJobWorkItem.lease_owner.is_not(None))
        if job_id is not None:
            query = query.where(TrainingJobWorkItem.job_id == job_id)
        return session.scalars(query).first()


def _assert_one_version_each(settings: Settings, job_ids: list[str]) -> None:
    with transaction(settings.database_url) as session:
        per_job = dict(session.execute(
            select(ModelVersion.job_id, func.count()).group_by(ModelVersion.job_id)).all())
        total = session.scalar(select(func.count()).select_from(ModelVersion))
    assert {j: per_job.get(j, 0) for j in job_ids} == {j: 1 for j in job_ids}
    assert total == len(job_ids)


def _assert_consistent(settings: Settings, job_id: str) -> None:
    """A succeeded job has every step succeeded, every work item done, one version."""
    with transaction(settings.database_url) as session:
        job = session.get(TrainingJob, job_id)
        steps = session.scalars(
            select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)).all()
        items = session.scalars(
            select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id == job_id)).all()
        version = session.scalars(
            select(ModelVersion).where(ModelVersion.job_id == job_id)).one()
        assert job is not None and job.status.value == "succeeded"
        assert job.lease_owner is None
        assert steps and {s.status.value for s in steps} == {"succeeded"}
        assert items and {i.status for i in items} == {WorkStatus.DONE}
        assert all(i.lease_owner is None for i in items)
        assert version.artifact_uri and version.artifact_sha256


# -- Redis restarted while jobs are queued -----------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as redis_server:
        yield redis_server


def test_redis_restart_loses_the_queue_but_every_job_finishes_once(
        pg_url, private_redis, make_settings, tmp_path):
    backend = _backend(make_settings, pg_url, private_redis.url(), **FAST_RECOVERY)
    settings = backend.settings
    seed_market(settings)
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    MarketDataStore(settings.data_dir).merge("EXTRA", "1h",
                                             generate_ohlcv("random_walk", 3000, seed=5))
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), 1),
             WorkerSpec("train", ("train",), 1)]
    from app.bus.broker import queue_depths

    with running_workers(specs, log_dir=tmp_path / "logs") as workers, \
            running_beat(log_dir=tmp_path / "logs"):
        slow = _submit(backend, "xgboost", "PLANTED", SLOW)
        others = [_submit(backend, "lightgbm", "PLANTED", TINY),
                  _submit(backend, "xgboost", "RANDOM", TINY),
                  _submit(backend, "lightgbm", "RANDOM", TINY)]
        job_ids = [slow, *others]
        wait_for(lambda: _running_fold(settings, slow), timeout=120, interval=0.05,
                 what="a fold of the slow job to start")
        # Work is waiting in Redis behind the running fold: that is what a restart loses.
        queued = wait_for(lambda: sum(d or 0 for d in queue_depths(settings).values()),
                          timeout=30, interval=0.05, what="queued messages")
        victim = _running_fold(settings, slow)  # the fold running as Redis goes away
        assert victim is not None, "the slow job's folds ended too soon"
        private_redis.kill()
        assert queue_depths(settings) == {q: None for q in ("data", "train", "evaluate",
                                                            "default")}
        # Publishing while the broker is down does not fail the API: the job is kept in
        # the database (with a dispatch deadline) and published by the reaper later.
        during = _submit(backend, "xgboost", "EXTRA", TINY)
        job_ids.append(during)
        private_redis.start()
        assert sum(queue_depths(settings).values()) == 0  # nothing came back by itself
        jobs = _wait_final(backend, job_ids, timeout=180)
        train_log = workers[1].log_text()

    assert queued >= 1
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", (job_id, job["error"])
        _assert_consistent(settings, job_id)
    _assert_one_version_each(settings, job_ids)
    # The fold that was running when Redis went away was cancelled by its worker
    # (worker_cancel_long_running_tasks_on_connection_loss), not finished by it.
    assert "cannot be acknowledged after a connection loss" in train_log, tail(train_log)
    item = next(i for i in jobs[slow]["folds"]["items"]
                if (i["kind"], i["fold"]) == (victim.kind.value, victim.fold))
    assert item["attempts"] >= 2
    assert item["result"]["worker"] != victim.lease_owner.split("/")[0]


# -- PostgreSQL restarted during a run ----------------------------------------------------
@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as cluster:
        yield cluster


def test_postgres_restart_answers_503_writes_nothing_and_work_resumes(
        private_pg, redis_broker_url, make_settings, tmp_path):
    from app import migrate

    url = private_pg.create_database(f"clm_{uuid.uuid4().hex[:8]}")
    migrate.upgrade(url)
    backend = _backend(make_settings, url, redis_broker_url,
                       **{**FAST_RECOVERY, "CLM_JOB_LEASE_SECONDS": 5})
    settings = backend.settings
    seed_market(settings)
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), 1),
             WorkerSpec("train", ("train",), 1)]
    with running_workers(specs, log_dir=tmp_path / "logs") as workers, \
            running_beat(log_dir=tmp_path / "logs"), \
            running_consumer(settings, tmp_path / "logs" / "consumer.log") as consumer:
        job_id = _submit(backend, "xgboost", "PLANTED", SLOW)
        wait_for(lambda: _running_fold(settings, job_id), timeout=120, interval=0.05,
                 what="a fold to start")
        private_pg.stop("fast")  # every connection is dropped, like a restart
        try:
            down: dict[str, Any] = {}
            for method, path, body, role in [
                ("get", f"/clm/jobs/{job_id}", None, "viewer"),
                ("get", "/clm/jobs", None, "viewer"),
                ("get", "/clm/status", None, "viewer"),
                ("post", "/clm/train", {"model_type": "lightgbm", "symbol": "RANDOM",
                                        "timeframe": "1h", "dataset_span_days": SPAN_DAYS,
                                        "params": TINY}, "operator"),
            ]:
                r = getattr(backend.client, method)(path, json=body,
                                                    headers=backend.auth(role))
                down[f"{method} {path}"] = r
                assert r.status_code == 503, (path, r.status_code, r.get_json())
                assert r.mimetype == "application/problem+json"
                problem = r.get_json()
                assert problem["status"] == 503 and problem["title"] and problem["detail"]
                assert r.headers.get("Retry-After")
            health = backend.client.get("/health")
            assert health.status_code == 503
            assert health.get_json()["database"]["reachable"] is False
            metrics = backend.client.get("/metrics")
            assert metrics.status_code == 200
            assert "clm_database_up 0.0" in metrics.get_data(as_text=True)
            # The workers meet the outage too (the running fold's lease renewal, or the
            # next step's transaction) and back off instead of failing the job.
            wait_for(lambda: "OperationalError" in workers[0].log_text() + workers[1].log_text(),
                     timeout=60, interval=0.2, what="a worker to meet the outage")
            # An inbound event now: the consumer cannot record it, puts it back and waits
            # the outage out (it does not exit, which would stop a Procfile runner).
            publish_inbound(settings, '{"id": "ops-broken", "type": "drift.detected"}')
            wait_for(lambda: "retrying in" in consumer.log_text(), timeout=30,
                     interval=0.2, what="the consumer to meet the outage")
        finally:
            private_pg.start()
        job = _wait_final(backend, [job_id], timeout=180)[job_id]
        # The API serves again on the same process (stale pooled connections replaced).
        again = _submit(backend, "xgboost", "RANDOM", TINY)
        second = _wait_final(backend, [again], timeout=120)[again]
        dead = wait_for(lambda: backend.client.get(
            "/clm/events/dead-letters", headers=backend.auth("viewer")).get_json()["items"],
            timeout=60, what="the consumer to handle the event after the outage")
        assert consumer.alive(), tail(consumer.log_text())

    assert job["status"] == "succeeded", job["error"]
    assert second["status"] == "succeeded", second["error"]
    assert len(dead) == 1  # handled once, after the outage
    _assert_consistent(settings, job_id)
    _assert_consistent(settings, again)
    _assert_one_version_each(settings, [job_id, again])
    with transaction(settings.database_url) as session:
        # The POST answered 503 left nothing behind: no job for lightgbm_random_1h.
        assert session.scalar(select(func.count()).where(
            TrainingJob.model_id == "lightgbm_random_1h")) == 0
        assert session.scalar(select(func.count()).select_from(TrainingJob)) == 2
    dispose_engines()


@contextmanager
def running_consumer(settings: Settings, log_path: Path) -> Iterator[WorkerProcess]:
    """`clm events consume` (its queue declared first), stopped on exit."""
    from kombu import Connection

    from app.bus.inbound import inbound_queue
    from app.bus.relay import exchange

    with Connection(settings.broker_url) as conn:
        channel = conn.channel()
        exchange(settings)(channel).declare()
        inbound_queue(settings)(channel).declare()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "events", "consume"], cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    handle = WorkerProcess(WorkerSpec("consumer"), proc, log_path)
    try:
        wait_for(lambda: "consuming " in handle.log_text() or not handle.alive(),
                 timeout=60, what="the consumer to start")
        assert handle.alive(), tail(handle.log_text())
        yield handle
    finally:
        handle.stop()


def publish_inbound(settings: Settings, body: str) -> None:
    """A raw message on the events exchange, as an external producer sends it."""
    from kombu import Connection, Producer

    from app.bus.relay import exchange

    with Connection(settings.broker_url) as conn:
        Producer(conn.channel(), exchange=exchange(settings)).publish(
            body, routing_key="drift.detected", content_type="application/json",
            content_encoding="utf-8")


# -- graceful stop: SIGTERM mid-fold ------------------------------------------------------
def test_sigterm_soft_shutdown_returns_the_running_fold_to_another_worker(
        pg_url, redis_broker_url, make_settings, tmp_path):
    soft_s = 1
    backend = _backend(make_settings, pg_url, redis_broker_url, **FAST_RECOVERY,
                       CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S=soft_s)
    settings = backend.settings
    seed_market(settings)
    # `clm worker` (what the Procfile and compose run): SIGTERM is a soft shutdown.
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), 1),
             WorkerSpec("train-a", ("train",), 1, via_clm=True),
             WorkerSpec("train-b", ("train",), 1, via_clm=True)]
    with running_workers(specs, log_dir=tmp_path / "logs") as workers, \
            running_beat(log_dir=tmp_path / "logs"):
        job_id = _submit(backend, "xgboost", "PLANTED", SLOWER)
        victim = wait_for(lambda: _running_fold(settings, job_id), timeout=120,
                          interval=0.05, what="a fold to start")
        node = victim.lease_owner.split("/")[0].rsplit(":", 1)[0]
        worker = next(w for w in workers if node.startswith(w.nodename_prefix))
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as `docker stop`
        stopped_at = time.monotonic()
        worker.proc.wait(timeout=soft_s + 30)
        stop_s = time.monotonic() - stopped_at
        job = _wait_final(backend, [job_id], timeout=180)[job_id]
        log = worker.log_text()

    assert "Initiating Soft Shutdown" in log, tail(log)
    assert stop_s < soft_s + 20, stop_s  # bounded: it did not wait for the fit
    assert job["status"] == "succeeded", job["error"]
    item = next(i for i in job["folds"]["items"]
                if (i["kind"], i["fold"]) == (victim.kind.value, victim.fold))
    # The stopped worker did not finish it; the other one did, on a later attempt.
    other = next(w for w in workers if w is not worker and w.spec.name.startswith("train"))
    assert item["result"]["worker"].startswith(other.nodename_prefix), item
    assert item["attempts"] >= 2
    _assert_consistent(settings, job_id)
    _assert_one_version_each(settings, [job_id])


def test_a_pool_process_cancelled_inside_native_code_does_not_fail_the_job(
        sqlite_url, make_settings):
    """Regression (found by the Redis restart above): Celery cancels a task by signalling
    its pool process; billiard's handler raises SystemExit, which XGBoost's native data
    callback swallows and turns into an XGBoostError. That error must not be recorded as
    the job's failure: the process exits and the lease/reaper hand the work on."""
    import billiard.common
    from xgboost.core import XGBoostError

    from app.flows import pipeline
    from app.services import jobs

    settings = make_settings(sqlite_url)
    seed_market(settings)
    with transaction(settings.database_url, immediate=True) as session:
        job_id = jobs.create_training_job(
            session, settings, model_type="xgboost", symbol="PLANTED", timeframe="1h",
            dataset_span_days=SPAN_DAYS, params=TINY)["job_id"]
    owner = "train@host:1/abc"
    with transaction(settings.database_url, immediate=True) as session:
        assert jobs.claim_stage(session, settings, job_id, "prepare", owner) is not None
    error = XGBoostError("Check failed: valid: Iterative DMatrix must have at least 1 batch.")
    # As after billiard's terminate handler ran in this process (private flag: billiard
    # offers a reader, terminate_handler_fired(), and a reset, but no setter).
    billiard.common._should_have_exited[0] = True
    try:
        with pytest.raises(SystemExit):
            pipeline._fail(settings, job_id, owner, 1, "validate_data", error)
    finally:
        billiard.common.clear_terminate_handler_fired()
    with transaction(settings.database_url) as session:
        assert jobs.get_job(session, job_id)["status"] == "running"  # left to its lease
    # Not cancelled: the same error is the job's failure, as before.
    pipeline._fail(settings, job_id, owner, 1, "validate_data", error)
    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
    assert job["status"] == "failed" and "XGBoostError" in job["error"]
