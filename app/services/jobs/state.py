"""A train job's state machine: claims, leases, steps, work items, the fan-in, the end.

Owns every transition a worker makes on a train job (see the package docstring for the
states): `claim_stage` / `claim_work_item` (one conditional UPDATE each, so a duplicate
delivery finds the lease held and exits; the claim's `attempts` is its fencing token,
which every later write of that worker names in its WHERE — app.services.jobs.fencing),
lease renewal and release, steps
(`begin_step` / `end_step` / `start_step` / `finish_step`), `start_train_stage` (the
fan-out), `complete_work_item` (the fan-in counter), `record_evaluation`, `succeed_job`
and `fail_job`, and `LeaseLost`. A transition that needs a worker registers its message
with `app.bus.producer.send_after_commit`; none of them commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from app.bus.outbox import job_event  # outbox: events commit with the change (app/bus/outbox.py)
from app.bus.producer import send_after_commit
from app.core.config import Settings
from app.core.domain import JobStatus
from app.core.logs import job_logger
from app.core.timeutil import utcnow
from app.models.jobs import (
    ACTIVE_JOB_STATUSES,
    JobKind,
    JobStage,
    StepStatus,
    TrainingJob,
    TrainingJobStep,
    TrainingJobWorkItem,
    WorkKind,
    WorkStatus,
)
from app.services.jobs.dispatch import (
    Dispatch,
    dispatch_deadline,
    item_dispatch,
    lease_duration,
    stage_dispatch,
)
from app.services.jobs.fencing import (
    FencingRefused,
    LeaseLost,
    item_fence,
    refuse,
    stage_fence,
)
from app.services.jobs.views import item_dict, job_snapshot

__all__ = ["FencingRefused", "LeaseLost"]  # re-exported: callers catch them from here

log = logging.getLogger("app.services.jobs")  # one logger for the whole job service


def new_owner(worker: str) -> str:
    """A lease owner token unique per delivery: a redelivered copy never inherits a lease."""
    return f"{worker}/{uuid.uuid4().hex[:12]}"


def _attempts_after_claim() -> Any:
    # SET expressions see the row's old values: first claim → 1; taking over an owner's
    # expired lease → +1; claiming work nobody owned (after the reaper freed it) → same.
    return case(
        (TrainingJob.attempts == 0, 1),
        (TrainingJob.lease_owner.is_not(None), TrainingJob.attempts + 1),
        else_=TrainingJob.attempts,
    )


def claim_stage(
    session: Session,
    settings: Settings,
    job_id: str,
    stage: JobStage | str,
    owner: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Take the job's lease for `stage` (queued → running). None: someone else holds it,
    the job moved on or finished — a duplicate delivery, which should just exit."""
    now = now or utcnow()
    stage = JobStage(stage)
    result = session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == job_id,
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.stage == stage,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES),
            or_(
                TrainingJob.lease_owner.is_(None),
                and_(
                    TrainingJob.lease_expires_at < now,
                    TrainingJob.attempts < settings.job_max_attempts,
                ),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            attempts=_attempts_after_claim(),
            lease_owner=owner,
            lease_expires_at=now + lease_duration(settings),
            started_at=func.coalesce(TrainingJob.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    job = session.get(TrainingJob, job_id)
    assert job is not None
    if job.started_at == now:  # this claim started the job (first claim only)
        job_event(session, "training.started", job)
    job_logger(log, job_id, stage=stage.value, owner=owner).info(
        "claimed stage %s (attempt %d)", stage.value, job.attempts
    )
    return job_snapshot(job)


def renew_stage_lease(
    session: Session, settings: Settings, job_id: str, owner: str, attempt: int,
    *, now: datetime | None = None,
) -> bool:
    """Heartbeat: extend the job lease if this claim (`owner`, `attempt`) still holds it.
    False when it does not (a stale attempt is logged `fencing: refused`)."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(*stage_fence(job_id, owner, attempt))
        .values(lease_expires_at=now + lease_duration(settings))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    refuse(session, "lease renewal", job_id, owner, attempt)
    return False


def hold_stage_lease(session: Session, settings: Settings, job_id: str, owner: str,
                     attempt: int, *, now: datetime | None = None) -> None:
    """The fence of a stage holder's write transaction: one UPDATE that renews the lease
    only where this claim's owner and attempt still hold it (and locks the job row until
    commit); FencingRefused / LeaseLost otherwise."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(*stage_fence(job_id, owner, attempt))
        .values(lease_expires_at=now + lease_duration(settings), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "write", job_id, owner, attempt)


def release_stage_lease(session: Session, settings: Settings, job_id: str, owner: str,
                        attempt: int, *, now: datetime | None = None) -> bool:
    """Give the lease back without spending an attempt (transient error: a retry follows;
    if it never comes, the reaper republishes at the deadline)."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.lease_owner == owner,
               TrainingJob.attempts == int(attempt))
        .values(lease_owner=None, lease_expires_at=now + lease_duration(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def start_step(session: Session, job_id: str, name: str, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == name)
        .values(status=StepStatus.RUNNING, attempts=TrainingJobStep.attempts + 1,
                started_at=now, finished_at=None)
        .execution_options(synchronize_session=False)
    )


def finish_step(
    session: Session,
    job_id: str,
    name: str,
    *,
    status: StepStatus = StepStatus.SUCCEEDED,
    detail: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> None:
    now = now or utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now}
    if detail is not None:
        values["detail"] = dict(detail)
    if started_at is not None:
        values["started_at"] = started_at
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == name)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def begin_step(session: Session, settings: Settings, job_id: str, owner: str, attempt: int,
               name: str, *, now: datetime | None = None) -> None:
    """Mark a step running, behind the stage's fence (which renews the lease)."""
    now = now or utcnow()
    hold_stage_lease(session, settings, job_id, owner, attempt, now=now)
    start_step(session, job_id, name, now=now)


def end_step(session: Session, settings: Settings, job_id: str, owner: str, attempt: int,
             name: str, detail: Mapping[str, Any] | None = None, *,
             now: datetime | None = None) -> None:
    """Mark a step succeeded, behind the stage's fence (which renews the lease)."""
    now = now or utcnow()
    hold_stage_lease(session, settings, job_id, owner, attempt, now=now)
    finish_step(session, job_id, name, detail=detail, now=now)


def update_artifacts(session: Session, job_id: str, owner: str, attempt: int,
                     changes: Mapping[str, Any]) -> None:
    """Merge `changes` into the job's artifact map (this claim only: fenced UPDATE)."""
    current = session.scalar(select(TrainingJob.artifacts).where(TrainingJob.id == job_id))
    result = session.execute(
        update(TrainingJob)
        .where(*stage_fence(job_id, owner, attempt))
        .values(artifacts={**(current or {}), **dict(changes)})
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "artifacts update", job_id, owner, attempt)


def start_train_stage(
    session: Session,
    settings: Settings,
    job_id: str,
    owner: str,
    attempt: int,
    items: Sequence[tuple[WorkKind | str, int]],
    artifacts: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> None:
    """End the prepare stage: record artifacts, create the work items, hand the job over to
    the fan-out (job lease released; each item gets a dispatch deadline and its message,
    published after the commit). One fenced UPDATE: a stale prepare changes nothing."""
    now = now or utcnow()
    if not items:
        raise ValueError("a train stage needs at least one work item")
    current = session.scalar(select(TrainingJob.artifacts).where(TrainingJob.id == job_id))
    handed = session.execute(
        update(TrainingJob)
        .where(*stage_fence(job_id, owner, attempt), TrainingJob.stage == JobStage.PREPARE)
        .values(artifacts={**(current or {}), **dict(artifacts)}, stage=JobStage.TRAIN,
                lease_owner=None, lease_expires_at=None, dispatches=0,
                folds_total=len(items), folds_done=0, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if handed.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "fan-out", job_id, owner, attempt)
    deadline = dispatch_deadline(settings, now, 1)
    dispatches: list[Dispatch] = []
    for kind, fold in items:
        kind = WorkKind(kind)
        session.add(TrainingJobWorkItem(
            job_id=job_id, kind=kind, fold=int(fold), status=WorkStatus.PENDING, attempts=0,
            dispatches=1, lease_owner=None, lease_expires_at=deadline,
        ))
        dispatches.append(item_dispatch(job_id, kind, fold))
    session.flush()
    send_after_commit(session, dispatches, settings)


def claim_work_item(
    session: Session,
    settings: Settings,
    job_id: str,
    kind: WorkKind | str,
    fold: int,
    owner: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Take the lease of one work item of a running train stage. None: a duplicate (held,
    done, or the job moved on/failed) that should just exit."""
    now = now or utcnow()
    kind = WorkKind(kind)
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if (job is None or job.kind != JobKind.TRAIN or job.status != JobStatus.RUNNING
            or job.stage != JobStage.TRAIN):
        return None
    W = TrainingJobWorkItem
    result = session.execute(
        update(W)
        .where(
            W.job_id == job_id, W.kind == kind, W.fold == int(fold),
            W.status != WorkStatus.DONE,
            or_(
                W.lease_owner.is_(None),
                and_(W.lease_expires_at < now, W.attempts < settings.job_max_attempts),
            ),
        )
        .values(
            status=WorkStatus.RUNNING,
            attempts=case(
                (W.attempts == 0, 1),
                (W.lease_owner.is_not(None), W.attempts + 1),
                else_=W.attempts,
            ),
            lease_owner=owner,
            lease_expires_at=now + lease_duration(settings),
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    step = "final_fit" if kind == WorkKind.FINAL else "train_folds"
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == step,
               TrainingJobStep.status.in_([StepStatus.PENDING, StepStatus.RUNNING]))
        .values(status=StepStatus.RUNNING,
                started_at=func.coalesce(TrainingJobStep.started_at, now),
                attempts=case((TrainingJobStep.status == StepStatus.PENDING,
                               TrainingJobStep.attempts + 1), else_=TrainingJobStep.attempts))
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    item = session.scalars(select(W).where(W.job_id == job_id, W.kind == kind,
                                           W.fold == int(fold))).one()
    job = session.get(TrainingJob, job_id)
    assert job is not None
    job_logger(log, job_id, kind=kind.value, fold=int(fold), owner=owner).info(
        "claimed %s %d (attempt %d)", kind.value, fold, item.attempts
    )
    return {"job": job_snapshot(job), "item": item_dict(item)}


def renew_item_lease(
    session: Session, settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
    owner: str, attempt: int, *, now: datetime | None = None,
) -> bool:
    """Heartbeat of a work item; False (a stale attempt logged `fencing: refused`) when
    this claim no longer holds it."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJobWorkItem)
        .where(*item_fence(job_id, kind, fold, owner, attempt))
        .values(lease_expires_at=now + lease_duration(settings))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    refuse(session, "lease renewal", job_id, owner, attempt, kind=kind, fold=fold)
    return False


def release_item_lease(
    session: Session, settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
    owner: str, attempt: int, *, now: datetime | None = None,
) -> bool:
    now = now or utcnow()
    result = session.execute(
        update(TrainingJobWorkItem)
        .where(*item_fence(job_id, kind, fold, owner, attempt))
        .values(lease_owner=None, status=WorkStatus.PENDING,
                lease_expires_at=now + lease_duration(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def complete_work_item(
    session: Session,
    settings: Settings,
    job_id: str,
    kind: WorkKind | str,
    fold: int,
    owner: str,
    attempt: int,
    result: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> bool:
    """Record a finished work item and count it into the fan-in.

    Only the lease holder's first completion counts (conditional UPDATE naming its owner
    and attempt: the fence), so a redelivered, duplicate or stale task never counts. The
    completion that brings `folds_done` to `folds_total` moves the job to the evaluate
    stage, registers the evaluate task to be published after the commit and returns True.
    Raises LeaseLost (FencingRefused for a stale attempt) when this claim no longer owns
    the item.
    """
    now = now or utcnow()
    kind = WorkKind(kind)
    W = TrainingJobWorkItem
    done = session.execute(
        update(W)
        .where(*item_fence(job_id, kind, fold, owner, attempt))
        .values(status=WorkStatus.DONE, result=dict(result), finished_at=now,
                lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "completion", job_id, owner, attempt, kind=kind, fold=fold)
    # The fan-in counter: the UPDATE takes the job row's lock, so concurrent completions
    # serialize here and each reads the count including its own.
    counted = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.RUNNING,
               TrainingJob.stage == JobStage.TRAIN)
        .values(folds_done=TrainingJob.folds_done + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id} is no longer training")
    folds_done, folds_total = session.execute(
        select(TrainingJob.folds_done, TrainingJob.folds_total).where(TrainingJob.id == job_id)
    ).one()
    remaining = dict(
        session.execute(
            select(W.kind, func.count()).where(W.job_id == job_id, W.status != WorkStatus.DONE)
            .group_by(W.kind)
        ).all()
    )
    if kind == WorkKind.FINAL:
        finish_step(session, job_id, "final_fit", detail=_public_result(result), now=now)
    elif not remaining.get(WorkKind.FOLD) and not remaining.get(WorkKind.CHAMPION):
        folds = session.scalars(
            select(W).where(W.job_id == job_id, W.kind != WorkKind.FINAL).order_by(W.kind, W.fold)
        ).all()
        finish_step(session, job_id, "train_folds", now=now, detail={
            "folds": sum(1 for f in folds if f.kind == WorkKind.FOLD),
            "champion_folds": sum(1 for f in folds if f.kind == WorkKind.CHAMPION),
            "fit_s": round(sum(float((f.result or {}).get("fit_s", 0.0)) for f in folds), 3),
        })
    job_logger(log, job_id, kind=kind.value, fold=int(fold)).info(
        "%s %d done (%d/%d)", kind.value, fold, folds_done, folds_total
    )
    if folds_done < folds_total:
        return False
    advanced = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.stage == JobStage.TRAIN,
               TrainingJob.folds_done >= TrainingJob.folds_total)
        .values(stage=JobStage.EVALUATE, lease_owner=None, dispatches=1,
                lease_expires_at=dispatch_deadline(settings, now, 1))
        .execution_options(synchronize_session=False)
    )
    if advanced.rowcount != 1:  # type: ignore[attr-defined]
        return False
    job_logger(log, job_id).info("all %d work items done: evaluating", folds_total)
    send_after_commit(session, [stage_dispatch(job_id, JobStage.EVALUATE)], settings)
    return True


def _public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in {"uri", "fit_s", "train_rows", "n_threads",
                                                    "worker", "size"}}


def record_evaluation(
    session: Session, job_id: str, owner: str, attempt: int, evaluation: Mapping[str, Any],
    *, now: datetime | None = None,
) -> None:
    """Store the evaluation and move on to the register stage (this claim only)."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(*stage_fence(job_id, owner, attempt), TrainingJob.stage == JobStage.EVALUATE)
        .values(evaluation=dict(evaluation), stage=JobStage.REGISTER, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "evaluation", job_id, owner, attempt)
    job = session.get(TrainingJob, job_id, populate_existing=True)
    assert job is not None
    job_event(session, "evaluation.completed", job, evaluation=job.evaluation)


def succeed_job(
    session: Session, job_id: str, owner: str, attempt: int, *, version: str | None,
    evaluation: Mapping[str, Any] | None = None, now: datetime | None = None,
) -> dict[str, Any]:
    """Finish the job (this claim only): succeeded, with the version it registered."""
    now = now or utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED, "stage": JobStage.DONE, "version": version,
        "lease_owner": None, "lease_expires_at": None, "finished_at": now, "updated_at": now}
    if evaluation is not None:
        values["evaluation"] = dict(evaluation)
    result = session.execute(
        update(TrainingJob).where(*stage_fence(job_id, owner, attempt)).values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise refuse(session, "completion", job_id, owner, attempt)
    job = session.get(TrainingJob, job_id, populate_existing=True)
    assert job is not None
    job_event(session, "training.completed", job, version=version)
    job_logger(log, job_id, version=version).info("job succeeded: version %s", version)
    return job_snapshot(job)


def fail_job(
    session: Session,
    job_id: str,
    error: str,
    *,
    owner: str | None = None,
    attempt: int | None = None,
    step: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Mark an active job failed with `error` (and the step that failed). With `owner` and
    `attempt` (a worker's failure), only if that claim still holds the job or one of its
    work items — a fenced UPDATE, so a stale attempt cannot fail a job that moved on.
    False if nothing changed (already finished, or the lease moved on)."""
    now = now or utcnow()
    if owner is not None:
        if attempt is None:
            raise ValueError("a worker's failure names its claim's attempt (fencing token)")
        W = TrainingJobWorkItem
        held = session.execute(
            update(TrainingJob).where(*stage_fence(job_id, owner, attempt))
            .values(updated_at=now).execution_options(synchronize_session=False)
        ).rowcount or session.execute(  # type: ignore[attr-defined]
            update(W).where(W.job_id == job_id, W.lease_owner == owner,
                            W.attempts == int(attempt), W.status == WorkStatus.RUNNING)
            .values(lease_owner=None).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not held:
            refuse(session, "failure", job_id, owner, attempt)
            return False
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return False
    job.status = JobStatus.FAILED
    job.error = error[:4000]
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    steps = session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)).all()
    for s in steps:
        if s.name == step or (step is None and s.status == StepStatus.RUNNING):
            s.status = StepStatus.FAILED
            s.finished_at = now
            s.started_at = s.started_at or now
            s.detail = {**(s.detail or {}), "error": error[:1000]}
        elif s.status == StepStatus.RUNNING:
            s.status = StepStatus.FAILED
            s.finished_at = now
        elif s.status == StepStatus.PENDING:
            s.status = StepStatus.SKIPPED
    # Free the work items so nothing waits on them.
    session.execute(
        update(TrainingJobWorkItem)
        .where(TrainingJobWorkItem.job_id == job_id, TrainingJobWorkItem.status != WorkStatus.DONE)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    if job.kind == JobKind.TRAIN:  # a search announces itself (app.flows.evolution)
        job_event(session, "training.failed", job, error=job.error, step=step)
    job_logger(log, job_id, step=step).warning("job failed: %s", error)
    return True


def reset_running_steps(session: Session, job_id: str) -> None:
    """Steps a lost worker left running go back to pending (the stage runs again)."""
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.status == StepStatus.RUNNING)
        .values(status=StepStatus.PENDING)
        .execution_options(synchronize_session=False)
    )
