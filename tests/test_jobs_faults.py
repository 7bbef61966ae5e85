"""Faults with real workers: a worker SIGKILLed in the middle of a training step.

Embedded (SQLite + filesystem broker): the whole worker dies (main process and pool
child); its in-flight message is gone with it, and the reaper (run here in the test)
re-publishes the fold once its lease expired. PostgreSQL + Redis: only the pool child
dies; Celery requeues the message (reject_on_worker_lost), the redelivery finds the dead
child's lease still held and exits, and `clm beat`'s reaper recovers the fold. Either
way the job finishes on the surviving worker with exactly one version registered.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from app.db import transaction
from app.flows.pipeline import execute_reap
from app.models.jobs import TrainingJobWorkItem, WorkStatus
from app.models.registry import ModelVersion
from tests.support.pipeline import SPAN_DAYS, make_backend, seed_market
from tests.support.workers import WorkerSpec, running_beat, running_workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Slow enough (~1 s per fold on an idle core) to be caught in the middle of training,
# and still a model that passes the gate on the planted series.
SLOW = {"n_estimators": 1500, "max_depth": 5, "learning_rate": 0.01}
LEASE_S = 3


def _running_fold(settings, job_id):
    with transaction(settings.database_url) as session:
        return session.scalars(
            select(TrainingJobWorkItem).where(
                TrainingJobWorkItem.job_id == job_id,
                TrainingJobWorkItem.kind == "fold",
                TrainingJobWorkItem.status == WorkStatus.RUNNING,
                TrainingJobWorkItem.lease_owner.is_not(None),
            )
        ).first()


@pytest.mark.parametrize("backend_name", ["embedded", "postgres_redis"])
def test_worker_killed_mid_training_job_still_finishes_with_one_version(
    backend_name, request, make_settings, tmp_path
):
    env = {"CLM_JOB_LEASE_SECONDS": LEASE_S, "CLM_REAPER_INTERVAL_S": 1}
    backend = make_backend(request, make_settings, backend_name, **env)
    settings = backend.settings
    seed_market(settings)
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), 1),
             WorkerSpec("train-a", ("train",), 1), WorkerSpec("train-b", ("train",), 1)]
    whole_worker = backend_name == "embedded"
    with running_workers(specs, log_dir=tmp_path / "logs") as workers:
        r = backend.client.post("/clm/train", headers=backend.auth("operator"), json={
            "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
            "dataset_span_days": SPAN_DAYS, "params": SLOW})
        assert r.status_code == 202
        job_id = r.get_json()["job_id"]

        victim = wait_for(lambda: _running_fold(settings, job_id), timeout=90, interval=0.05,
                          what="a fold to start training")
        owner = victim.lease_owner  # "<node>@<host>:<child pid>/<token>"
        node, child_pid = owner.split("/")[0].rsplit(":", 1)
        worker = next(w for w in workers if node.startswith(w.nodename_prefix))
        if whole_worker:
            worker.kill(signal.SIGKILL)
        else:
            os.kill(int(child_pid), signal.SIGKILL)
        killed_at = time.monotonic()

        def finished():
            if whole_worker:
                execute_reap(settings)  # the test is the beat here
            r = backend.client.get(f"/clm/jobs/{job_id}", headers=backend.auth("viewer"))
            body = r.get_json()
            return body if body["status"] in ("succeeded", "failed") else None

        if whole_worker:
            job = wait_for(finished, timeout=150, interval=0.5, what="the job to finish")
        else:
            with running_beat(log_dir=tmp_path / "logs"):
                job = wait_for(finished, timeout=150, interval=0.5, what="the job to finish")

    assert job["status"] == "succeeded", job["error"]
    assert time.monotonic() - killed_at >= LEASE_S - 1  # it waited for the lease, not less
    item = next(i for i in job["folds"]["items"]
                if (i["kind"], i["fold"]) == ("fold", victim.fold))
    assert item["attempts"] >= 2  # the lost lease cost one attempt
    assert item["result"]["worker"] != owner.split("/")[0]  # redone by another process
    with transaction(settings.database_url) as session:
        by_job = session.scalar(select(func.count()).where(ModelVersion.job_id == job_id))
        by_model = session.scalar(
            select(func.count()).where(ModelVersion.model_id == "xgboost_planted_1h"))
    assert by_job == by_model == 1
    assert job["version_status"] == "candidate"
