"""Fencing tokens on PostgreSQL: a claim's attempt number is checked in every write a
worker makes, so a worker that lost its lease (partition, SIGSTOP, long pause) and comes
back cannot write over the attempt that took the work over.

No worker processes here (tests/distributed/ runs them across network namespaces): the
pipeline's own executors and stage runs are driven in this process, on a real
PostgreSQL database, with the take-over made by a claim `now` past the lease.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core.domain import JobStatus
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows.pipeline import execute_stage, execute_work_item
from app.flows.pipeline.evaluate import run_evaluate, run_register
from app.flows.pipeline.runtime import StageRun
from app.models.jobs import JobStage, TrainingJob, TrainingJobStep, TrainingJobWorkItem
from app.models.registry import ModelVersion
from app.services import jobs
from tests.support.pipeline import seed_market

TINY = {"n_estimators": 10, "max_depth": 3}


@pytest.fixture
def settings(pg_url, make_settings):
    return make_settings(pg_url, CLM_TRAIN_THREADS=1)


def _create(settings) -> str:
    with transaction(settings.database_url, immediate=True) as session:
        return jobs.create_training_job(
            session, settings, model_type="xgboost", symbol="PLANTED", timeframe="1h",
            dataset_span_days=60, params=TINY)["job_id"]


def _taken_over(settings, job_id: str, stage: str) -> tuple[dict, dict]:
    """Claim `stage` as A, then as B once A's lease has expired (as after a partition)."""
    with transaction(settings.database_url, immediate=True) as session:
        a = jobs.claim_stage(session, settings, job_id, stage, "hostA:1/a")
    later = utcnow() + timedelta(seconds=settings.job_lease_seconds + 1)
    with transaction(settings.database_url, immediate=True) as session:
        b = jobs.claim_stage(session, settings, job_id, stage, "hostB:1/b", now=later)
    assert a is not None and b is not None
    assert b["attempts"] == a["attempts"] + 1
    return a, b


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fencing: refused" in r.getMessage()]


def test_every_stage_write_of_a_stale_attempt_is_refused(settings, caplog):
    seed_market(settings, bars=1500)
    job_id = _create(settings)
    a, b = _taken_over(settings, job_id, "prepare")
    caplog.set_level(logging.WARNING, logger="app.services.jobs")
    stale = ("hostA:1/a", a["attempts"])
    writes = {
        "renew": lambda s: jobs.renew_stage_lease(s, settings, job_id, *stale),
        "begin_step": lambda s: jobs.begin_step(s, settings, job_id, *stale, "fetch_data"),
        "end_step": lambda s: jobs.end_step(s, settings, job_id, *stale, "fetch_data"),
        "artifacts": lambda s: jobs.update_artifacts(s, job_id, *stale, {"raw": "x"}),
        "fan_out": lambda s: jobs.start_train_stage(s, settings, job_id, *stale,
                                                    [("final", 0)], {"raw": "x"}),
        "evaluation": lambda s: jobs.record_evaluation(s, job_id, *stale, {"passed": True}),
        "succeed": lambda s: jobs.succeed_job(s, job_id, *stale, version="v_stale"),
        "fail": lambda s: jobs.fail_job(s, job_id, "stale failure", owner=stale[0],
                                        attempt=stale[1]),
    }
    for name, write in writes.items():
        with transaction(settings.database_url, immediate=True) as session:
            if name in ("renew", "fail"):
                assert write(session) is False, name
            else:
                with pytest.raises(jobs.FencingRefused) as exc:
                    write(session)
                assert (exc.value.attempt, exc.value.current) == (1, 2), name
    lines = _refusals(caplog)
    assert len(lines) == len(writes)
    assert all(job_id in line and "attempt 1" in line and "attempt 2" in line
               for line in lines), lines
    # Nothing of A's landed: B still holds the job, its steps and artifacts are untouched.
    with transaction(settings.database_url) as session:
        job = session.get(TrainingJob, job_id)
        fetch = session.scalars(select(TrainingJobStep).where(
            TrainingJobStep.job_id == job_id, TrainingJobStep.name == "fetch_data")).one()
        assert (job.status, job.stage, job.attempts, job.lease_owner) == (
            JobStatus.RUNNING, JobStage.PREPARE, 2, "hostB:1/b")
        assert job.artifacts == {} and job.version is None and job.evaluation is None
        assert fetch.status.value == "pending"
        assert session.scalar(select(func.count()).select_from(TrainingJobWorkItem)
                              .where(TrainingJobWorkItem.job_id == job_id)) == 0
    # B's writes go through: its token is the current one.
    with transaction(settings.database_url, immediate=True) as session:
        assert jobs.renew_stage_lease(session, settings, job_id, "hostB:1/b", b["attempts"])
        jobs.begin_step(session, settings, job_id, "hostB:1/b", b["attempts"], "fetch_data")


def test_the_same_owner_with_an_old_attempt_is_refused(settings, caplog):
    """The attempt alone fences: an owner token that matches but names an older attempt
    (a claim record replayed from before the take-over) writes nothing."""
    seed_market(settings, bars=1500)
    job_id = _create(settings)
    a, _b = _taken_over(settings, job_id, "prepare")
    with transaction(settings.database_url, immediate=True) as session:
        session.execute(TrainingJob.__table__.update().where(TrainingJob.id == job_id)
                        .values(lease_owner="hostA:1/a"))
    with pytest.raises(jobs.FencingRefused), \
            transaction(settings.database_url, immediate=True) as session:
        jobs.hold_stage_lease(session, settings, job_id, "hostA:1/a", a["attempts"])


def test_a_stale_work_item_completion_is_refused_and_not_counted(settings, caplog):
    seed_market(settings, bars=1500)
    job_id = _create(settings)
    assert execute_stage(settings, job_id, "prepare", worker="prep") == "done"
    with transaction(settings.database_url, immediate=True) as session:
        a = jobs.claim_work_item(session, settings, job_id, "final", 0, "hostA:1/a")
    later = utcnow() + timedelta(seconds=settings.job_lease_seconds + 1)
    with transaction(settings.database_url, immediate=True) as session:
        b = jobs.claim_work_item(session, settings, job_id, "final", 0, "hostB:1/b",
                                 now=later)
    assert (a["item"]["attempts"], b["item"]["attempts"]) == (1, 2)
    caplog.set_level(logging.WARNING, logger="app.services.jobs")
    with transaction(settings.database_url, immediate=True) as session:
        assert not jobs.renew_item_lease(session, settings, job_id, "final", 0, "hostA:1/a", 1)
    with pytest.raises(jobs.FencingRefused), \
            transaction(settings.database_url, immediate=True) as session:
        jobs.complete_work_item(session, settings, job_id, "final", 0, "hostA:1/a", 1,
                                {"uri": "cas://stale"})
    lines = _refusals(caplog)
    assert len(lines) == 2 and all("final 0" in line and job_id in line for line in lines)
    with transaction(settings.database_url) as session:
        job = session.get(TrainingJob, job_id)
        item = session.scalars(select(TrainingJobWorkItem).where(
            TrainingJobWorkItem.job_id == job_id, TrainingJobWorkItem.kind == "final")).one()
        assert job.folds_done == 0 and item.lease_owner == "hostB:1/b" and item.result is None
    with transaction(settings.database_url, immediate=True) as session:
        jobs.complete_work_item(session, settings, job_id, "final", 0, "hostB:1/b", 2,
                                {"uri": "cas://fresh"})
        assert session.get(TrainingJob, job_id).folds_done == 1


def test_a_stale_register_stage_makes_no_second_version(settings, caplog):
    """The whole pipeline to the evaluate stage, then A claims it, loses it to B, B
    evaluates and registers; A's stage run comes back and every write of it is refused:
    exactly one version, made by B."""
    seed_market(settings, bars=1500)
    job_id = _create(settings)
    assert execute_stage(settings, job_id, "prepare", worker="prep") == "done"
    with transaction(settings.database_url) as session:
        todo = jobs.pending_dispatches(session, job_id)
    for d in todo:
        assert execute_work_item(settings, job_id, d.kind, int(d.fold or 0), "w") == "done"
    a, b = _taken_over(settings, job_id, "evaluate")
    run_b = StageRun(settings, b, "hostB:1/b")
    evaluation, drift = run_evaluate(run_b)
    run_register(run_b, evaluation, drift)
    caplog.set_level(logging.WARNING, logger="app.services.jobs")
    run_a = StageRun(settings, a, "hostA:1/a")
    with pytest.raises(jobs.FencingRefused):
        run_evaluate(run_a)
    with pytest.raises(jobs.FencingRefused):  # even straight to the register steps
        run_register(run_a, evaluation, drift)
    assert len(_refusals(caplog)) == 2
    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
        versions = session.scalars(select(ModelVersion).where(
            ModelVersion.job_id == job_id)).all()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert [v.version for v in versions] == [job["version"]]
