"""What a training job's workers are sent, and when: task names and queues, the messages,
dispatch deadlines, and publishing after commit.

Owns `STAGE_TASKS` / `WORK_TASKS` / `REAP_TASK` (the Celery task names the pipeline's
workers register, and their queues), `Dispatch` (one task message, ids only),
`stage_dispatch` / `item_dispatch`, the lease length and the dispatch deadline (with its
backoff), and `pending_dispatches` (what a job waits for right now; app.flows.pipeline
publishes it again by id).

Every state change that needs a worker (app.services.jobs.creation, .state, .reaper)
registers its messages with `app.bus.producer.send_after_commit` inside its transaction:
they go out once the change commits, never for a change that rolled back. A broker that
is down is logged, not raised: the work stays in the database with a dispatch deadline,
and the reaper publishes it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import JobStatus
from app.models.jobs import (
    JobKind,
    JobStage,
    TrainingJob,
    TrainingJobWorkItem,
    WorkKind,
    WorkStatus,
)

# Which Celery task runs a stage / a work item, and on which queue.
STAGE_TASKS: dict[JobStage, tuple[str, str]] = {
    JobStage.PREPARE: ("clm.job.prepare", "data"),
    JobStage.EVALUATE: ("clm.job.evaluate", "evaluate"),
    JobStage.REGISTER: ("clm.job.register", "evaluate"),
}
WORK_TASKS: dict[WorkKind, tuple[str, str]] = {
    WorkKind.FOLD: ("clm.job.train_fold", "train"),
    WorkKind.CHAMPION: ("clm.job.train_fold", "train"),
    WorkKind.FINAL: ("clm.job.final_fit", "train"),
}
REAP_TASK = "clm.jobs.reap"

# A never-claimed message is republished after lease × 2^n (n = dispatches so far, capped),
# so a job waiting behind a long queue is not flooded with duplicates.
_MAX_DISPATCH_BACKOFF_EXP = 5


@dataclass(frozen=True)
class Dispatch:
    """A task to publish after commit: by name, with ids only."""

    task: str
    queue: str
    job_id: str
    kind: str | None = None
    fold: int | None = None

    @property
    def args(self) -> list[Any]:
        if self.kind is None:
            return [self.job_id]
        return [self.job_id, self.kind, self.fold]


def stage_dispatch(job_id: str, stage: JobStage | str) -> Dispatch:
    task, queue = STAGE_TASKS[JobStage(stage)]
    return Dispatch(task, queue, job_id)


def item_dispatch(job_id: str, kind: WorkKind | str, fold: int) -> Dispatch:
    task, queue = WORK_TASKS[WorkKind(kind)]
    return Dispatch(task, queue, job_id, WorkKind(kind).value, int(fold))


def lease_duration(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.job_lease_seconds)


def dispatch_deadline(settings: Settings, now: datetime, dispatches: int) -> datetime:
    """When unclaimed work counts as lost: lease × 2^(dispatches − 1), capped."""
    exp = min(max(dispatches - 1, 0), _MAX_DISPATCH_BACKOFF_EXP)
    return now + lease_duration(settings) * (2**exp)


def pending_dispatches(session: Session, job_id: str) -> list[Dispatch]:
    """What a job is waiting for right now (used to (re)publish it by id)."""
    job = session.get(TrainingJob, job_id)
    if (job is None or job.kind != JobKind.TRAIN
            or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING)):
        return []  # an evolve job is published by app.flows.evolution
    if job.stage in STAGE_TASKS:
        return [stage_dispatch(job_id, job.stage)]
    if job.stage == JobStage.TRAIN:
        items = session.scalars(
            select(TrainingJobWorkItem).where(
                TrainingJobWorkItem.job_id == job_id,
                TrainingJobWorkItem.status != WorkStatus.DONE)
        ).all()
        return [item_dispatch(job_id, i.kind, i.fold) for i in items]
    return []
