"""Evolve jobs: the `training_jobs` row that mirrors a strategy search.

Owns `create_evolve_job`, `evolve_job_running`, `evolve_generation_started`,
`evolve_trial_recorded`, `evolve_generation_completed`, `finish_evolve_job` and the
evolve step names (one step per generation, then `select_and_validate`). An evolve job's
status, progress (trials recorded / planned) and steps follow its search; it is never
claimed, leased or reaped here (the evolution reaper owns searches).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from app.core.domain import JobStatus, ModelType, TriggerReason, make_model_id, normalize_symbol
from app.core.logs import job_logger
from app.core.timeutil import utcnow
from app.models.jobs import (
    ACTIVE_JOB_STATUSES,
    JobKind,
    JobStage,
    StepStatus,
    TrainingJob,
    TrainingJobStep,
)
from app.services.jobs.state import finish_step, start_step
from app.services.jobs.views import get_job

log = logging.getLogger("app.services.jobs")  # one logger for the whole job service

# app.services.evolution.state calls these in the transactions where it changes the search, so
# the job and the search commit together. Every write is conditional on the job being an
# active evolve job: a duplicate delivery, or a search created before jobs had kinds (no
# job row), changes nothing.
EVOLVE_FINAL_STEP = "select_and_validate"


def evolve_step_name(generation: int) -> str:
    return f"generation_{int(generation)}"


def create_evolve_job(
    session: Session,
    *,
    job_id: str,
    search_id: str,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    generations: int,
    trials_planned: int,
    trigger_reason: str = TriggerReason.MANUAL.value,
    requested_by: str | None = None,
    regime: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Insert the queued job of a strategy search (kind `evolve`): one pending step per
    generation plus `select_and_validate`, progress = trials recorded / `trials_planned`.
    Any number may be active per model_id. Flushes only; returns the job dict."""
    now = now or utcnow()
    if generations < 1 or trials_planned < 1:
        raise ValueError("an evolve job needs at least one generation and one trial")
    mt = ModelType(model_type)
    job = TrainingJob(
        id=job_id, kind=JobKind.EVOLVE, model_id=make_model_id(mt.value, symbol, timeframe),
        model_type=mt, symbol=normalize_symbol(symbol), timeframe=timeframe,
        regime=regime, dataset_span_days=int(dataset_span_days), params={}, strategy=None,
        trigger_reason=TriggerReason(trigger_reason), requested_by=requested_by,
        status=JobStatus.QUEUED, stage=JobStage.PREPARE, attempts=0, dispatches=0,
        lease_owner=None, lease_expires_at=None, folds_total=int(trials_planned),
        folds_done=0, artifacts={"search_id": search_id}, created_at=now, updated_at=now,
    )
    session.add(job)
    session.flush()
    names = [evolve_step_name(g) for g in range(int(generations))] + [EVOLVE_FINAL_STEP]
    session.add_all(
        TrainingJobStep(job_id=job_id, position=i, name=name, status=StepStatus.PENDING,
                        attempts=0)
        for i, name in enumerate(names, start=1)
    )
    session.flush()
    job_logger(log, job_id, model_id=job.model_id).info("evolve job created for search %s",
                                                         search_id)
    return get_job(session, job_id)


def _active_evolve(job_id: str) -> Any:
    return and_(TrainingJob.id == job_id, TrainingJob.kind == JobKind.EVOLVE,
                TrainingJob.status.in_(ACTIVE_JOB_STATUSES))


def evolve_job_running(session: Session, job_id: str | None, *,
                       now: datetime | None = None) -> bool:
    """The search started (queued → running). False when nothing changed."""
    if not job_id:
        return False
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob).where(_active_evolve(job_id))
        .values(status=JobStatus.RUNNING, stage=JobStage.TRAIN,
                started_at=func.coalesce(TrainingJob.started_at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def evolve_generation_started(session: Session, job_id: str | None, generation: int, *,
                              trials: int, now: datetime | None = None) -> None:
    """A generation's trials were asked: the job runs, its generation step too."""
    if not evolve_job_running(session, job_id, now=now) or job_id is None:
        return
    start_step(session, job_id, evolve_step_name(generation), now=now)
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id,
               TrainingJobStep.name == evolve_step_name(generation))
        .values(detail={"trials": int(trials)})
        .execution_options(synchronize_session=False)
    )


def evolve_trial_recorded(session: Session, job_id: str | None, *,
                          now: datetime | None = None) -> None:
    """One trial was recorded (evaluated or failed): progress moves by one trial. The
    caller records each trial once (its own conditional update), so this counts once."""
    if not job_id:
        return
    now = now or utcnow()
    session.execute(
        update(TrainingJob).where(_active_evolve(job_id))
        .values(folds_done=TrainingJob.folds_done + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def evolve_generation_completed(session: Session, job_id: str | None, generation: int, *,
                                detail: Mapping[str, Any] | None = None,
                                now: datetime | None = None) -> None:
    """Every trial of `generation` is recorded: its step succeeded (with `detail`)."""
    if not job_id:
        return
    active = session.scalar(select(TrainingJob.id).where(_active_evolve(job_id)))
    if active is None:
        return
    finish_step(session, job_id, evolve_step_name(generation), detail=detail, now=now)


def finish_evolve_job(
    session: Session,
    job_id: str | None,
    *,
    status: str,
    error: str | None = None,
    detail: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """The search ended (`succeeded` or `failed`): the job ends with it; the final step
    carries `detail` (front, choice, hold-out). Unasked generations are skipped. False
    when the job was not an active evolve job."""
    if not job_id:
        return False
    now = now or utcnow()
    final = JobStatus(status)
    if final not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ValueError(f"an evolve job ends succeeded or failed, not {status!r}")
    job = session.scalars(select(TrainingJob).where(_active_evolve(job_id))).first()
    if job is None:
        return False
    job.status = final
    job.stage = JobStage.DONE
    job.error = error[:4000] if error else None
    job.started_at = job.started_at or started_at or now
    job.finished_at = now
    job.updated_at = now
    if final == JobStatus.SUCCEEDED:
        job.folds_done = max(job.folds_done, job.folds_total)
    for step in session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)):
        if step.name == EVOLVE_FINAL_STEP:
            step.status = (StepStatus.SUCCEEDED if final == JobStatus.SUCCEEDED
                           else StepStatus.FAILED)
            step.started_at = started_at or step.started_at or now
            step.finished_at = now
            step.attempts += 1
            step.detail = {**dict(detail or {}), **({"error": error[:1000]} if error else {})}
        elif step.status == StepStatus.RUNNING:
            step.status = StepStatus.FAILED
            step.finished_at = now
        elif step.status == StepStatus.PENDING:
            step.status = StepStatus.SKIPPED
    session.flush()
    job_logger(log, job_id).info("evolve job %s", final.value)
    return True
