"""The job reaper: recovers train-job work whose lease or dispatch deadline passed.

Owns `reap` and `ReapResult`. Unclaimed work past its dispatch deadline (message lost,
broker down at publish) is published again without spending an attempt; an owner whose
lease expired (worker killed, heartbeat stopped) costs an attempt, and after
`job_max_attempts` the job fails with the reason. What it publishes goes out after its
transaction commits (`app.bus.producer.send_after_commit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bus.producer import send_after_commit
from app.core.config import Settings
from app.core.domain import JobStatus
from app.core.logs import job_logger
from app.core.timeutil import utcnow
from app.models.jobs import (
    ACTIVE_JOB_STATUSES,
    JobKind,
    JobStage,
    TrainingJob,
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
from app.services.jobs.state import fail_job, reset_running_steps

log = logging.getLogger("app.services.jobs")  # one logger for the whole job service


@dataclass
class ReapResult:
    """What one reaper pass did. `dispatches`: the messages it registered to be published
    after its commit (a report, like the id lists; nobody publishes them again)."""

    dispatches: list[Dispatch] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # lost leases given a new attempt
    redispatched: list[str] = field(default_factory=list)  # never-claimed work republished
    failed: list[str] = field(default_factory=list)  # attempts spent


def reap(session: Session, settings: Settings, now: datetime | None = None) -> ReapResult:
    """Recover work whose lease or dispatch deadline passed (see the package docstring).

    Safe to run concurrently (rows are locked with SKIP LOCKED on PostgreSQL; SQLite
    callers use an immediate transaction) and as often as wanted: everything it does is
    conditional on the deadline having passed. Train jobs only: an evolve job's liveness
    is its search's, which app.flows.evolution.reap looks after.
    """
    now = now or utcnow()
    out = ReapResult()
    lease = lease_duration(settings)
    jobs = session.scalars(
        select(TrainingJob)
        .where(
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES),
            TrainingJob.stage.in_([JobStage.PREPARE, JobStage.EVALUATE, JobStage.REGISTER]),
            TrainingJob.lease_expires_at < now,
        )
        .order_by(TrainingJob.lease_expires_at)
        .limit(500)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        jl = job_logger(log, job.id, stage=job.stage.value)
        if job.lease_owner is None:
            job.dispatches += 1
            job.lease_expires_at = dispatch_deadline(settings, now, job.dispatches)
            out.dispatches.append(stage_dispatch(job.id, job.stage))
            out.redispatched.append(job.id)
            jl.info("stage %s not claimed by its deadline: published again (%d)",
                    job.stage.value, job.dispatches)
        elif job.attempts >= settings.job_max_attempts:
            fail_job(session, job.id, (
                f"stage {job.stage.value}: the worker's lease ({settings.job_lease_seconds}s) "
                f"expired on attempt {job.attempts} of {settings.job_max_attempts} "
                f"(last owner {job.lease_owner}); giving up"), now=now)
            out.failed.append(job.id)
        else:
            jl.warning("lease of %s expired on stage %s: retrying (attempt %d of %d)",
                       job.lease_owner, job.stage.value, job.attempts + 1,
                       settings.job_max_attempts)
            job.attempts += 1
            job.lease_owner = None
            job.lease_expires_at = now + lease
            job.dispatches += 1
            reset_running_steps(session, job.id)
            out.dispatches.append(stage_dispatch(job.id, job.stage))
            out.recovered.append(job.id)
    W = TrainingJobWorkItem
    items = session.scalars(
        select(W)
        .join(TrainingJob, TrainingJob.id == W.job_id)
        .where(
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status == JobStatus.RUNNING,
            TrainingJob.stage == JobStage.TRAIN,
            W.status != WorkStatus.DONE,
            W.lease_expires_at < now,
        )
        .order_by(W.lease_expires_at)
        .limit(2000)
        .with_for_update(of=W, skip_locked=True)
    ).all()
    failed_jobs: set[str] = set()
    # Jobs with a work item whose lease is alive are making progress: their unclaimed
    # items are most likely waiting behind it in the train queue, not lost, so they are
    # republished only once nothing of that job is running (no flood of duplicates).
    busy = set(session.scalars(
        select(W.job_id).where(W.job_id.in_({i.job_id for i in items}),
                               W.lease_owner.is_not(None), W.lease_expires_at >= now)
    ).all()) if items else set()
    for item in items:
        if item.job_id in failed_jobs:
            continue
        jl = job_logger(log, item.job_id, kind=item.kind.value, fold=item.fold)
        if item.lease_owner is None:
            if item.job_id in busy:
                continue
            item.dispatches += 1
            item.lease_expires_at = dispatch_deadline(settings, now, item.dispatches)
            out.dispatches.append(item_dispatch(item.job_id, item.kind, item.fold))
            out.redispatched.append(item.job_id)
            jl.info("%s %d not claimed by its deadline: published again", item.kind.value,
                    item.fold)
        elif item.attempts >= settings.job_max_attempts:
            fail_job(session, item.job_id, (
                f"train stage, {item.kind.value} {item.fold}: the worker's lease "
                f"({settings.job_lease_seconds}s) expired on attempt {item.attempts} of "
                f"{settings.job_max_attempts} (last owner {item.lease_owner}); giving up"),
                step="final_fit" if item.kind == WorkKind.FINAL else "train_folds", now=now)
            failed_jobs.add(item.job_id)
            out.failed.append(item.job_id)
        else:
            jl.warning("lease of %s expired on %s %d: retrying (attempt %d of %d)",
                       item.lease_owner, item.kind.value, item.fold, item.attempts + 1,
                       settings.job_max_attempts)
            item.attempts += 1
            item.lease_owner = None
            item.status = WorkStatus.PENDING
            item.lease_expires_at = now + lease
            item.dispatches += 1
            out.dispatches.append(item_dispatch(item.job_id, item.kind, item.fold))
            out.recovered.append(item.job_id)
    session.flush()
    send_after_commit(session, out.dispatches, settings)
    return out
