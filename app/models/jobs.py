"""Training-job schema: the job row (state machine, lease, fan-in counter), its steps and its
parallel work items (walk-forward folds, champion folds, the final fit).

The database is the source of truth for a job: the broker only carries its id. Every
transition is a conditional UPDATE against these rows (see app/services/jobs/), so at-least-once
delivery is safe. The partial unique index `uq_training_jobs_one_active` lets the database
itself refuse a second queued/running *training* job for the same model_id.

A job has a `kind`: `train` (the pipeline below) or `evolve` (a strategy search started by
POST /clm/evolve; its state mirrors the search's, written by app.services.evolution.state through
app.services.jobs, and its steps are the search's generations). A search may run while the model
trains, so the one-active index covers `train` jobs only; several searches of one model
may run at once. Only train jobs have stages, leases and work items that the jobs reaper
looks after; the evolution reaper owns searches.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.domain import JobStatus, ModelType, TriggerReason
from app.core.timeutil import utcnow
from app.models.base import Base, JSONType
from app.models.registry import str_enum

# Statuses that make a job "active": at most one train job per model_id (partial unique
# index).
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# The index's predicate, shared with migration 0005 (keep the two texts identical).
ONE_ACTIVE_TRAIN_JOB_WHERE = "status IN ('queued', 'running') AND kind = 'train'"


class JobKind(enum.StrEnum):
    """What a job runs."""

    TRAIN = "train"  # the training pipeline (stages, work items, a registered version)
    EVOLVE = "evolve"  # a strategy search (app.flows.evolution): status/progress mirror it


class JobStage(enum.StrEnum):
    """Where a job's pipeline is; each stage is run by one kind of Celery task."""

    PREPARE = "prepare"  # validate request, fetch + validate data, features, folds
    TRAIN = "train"  # fan-out: fold, champion-fold and final-fit work items
    EVALUATE = "evaluate"  # fan-in: evaluate, gate, champion comparison
    REGISTER = "register"  # register the version, decide its status, finish the job
    DONE = "done"


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class WorkKind(enum.StrEnum):
    """A parallel work item of the train stage."""

    FOLD = "fold"  # challenger walk-forward fold
    CHAMPION = "champion"  # the production model's strategy, retrained on the same fold
    FINAL = "final"  # the deployable model, trained on every row


class WorkStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class TrainingJob(Base):
    """One training request and everything the pipeline learned while running it."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[JobKind] = mapped_column(
        str_enum(JobKind, "job_kind"), default=JobKind.TRAIN, server_default=JobKind.TRAIN.value
    )
    model_id: Mapped[str] = mapped_column(String(120), index=True)
    model_type: Mapped[ModelType] = mapped_column(str_enum(ModelType, "model_type"), index=True)
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    regime: Mapped[str | None] = mapped_column(String(40))
    dataset_span_days: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Feature windows / thresholds chosen by a strategy search (None: the defaults).
    strategy: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    trigger_reason: Mapped[TriggerReason] = mapped_column(
        str_enum(TriggerReason, "trigger_reason"), index=True
    )
    requested_by: Mapped[str | None] = mapped_column(String(120))
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus, "job_status"), index=True)
    stage: Mapped[JobStage] = mapped_column(str_enum(JobStage, "job_stage"))
    # 1 + the number of times a stage's lease expired under a worker (bounded by
    # CLM_JOB_MAX_ATTEMPTS). A message that was never picked up does not count.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # How often the current stage was (re)published; spaces out redispatches.
    dispatches: Mapped[int] = mapped_column(Integer, default=0)
    # The lease: who runs the current single-task stage, until when. With no owner,
    # lease_expires_at is the dispatch deadline (when the reaper publishes again).
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # Fan-in counter of the train stage: work items done / total. Evolve jobs: trials
    # recorded / trials planned (population x generations).
    folds_total: Mapped[int] = mapped_column(Integer, default=0)
    folds_done: Mapped[int] = mapped_column(Integer, default=0)
    # URIs and facts passed between steps (dataset, folds, model), never frames.
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        # One active train job per model_id, enforced by the database itself.
        Index(
            "uq_training_jobs_one_active",
            "model_id",
            unique=True,
            postgresql_where=text(ONE_ACTIVE_TRAIN_JOB_WHERE),
            sqlite_where=text(ONE_ACTIVE_TRAIN_JOB_WHERE),
        ),
        # Keyset pagination, newest first.
        Index("ix_training_jobs_created_at_id", "created_at", "id"),
    )


class TrainingJobStep(Base):
    """One of the ten pipeline steps of a train job (an evolve job: one per generation of
    its search, then `select_and_validate`), with its timings."""

    __tablename__ = "training_job_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("training_jobs.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    status: Mapped[StepStatus] = mapped_column(str_enum(StepStatus, "step_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_training_job_steps_job_name"),)


class TrainingJobWorkItem(Base):
    """A parallel unit of the train stage, with its own lease (unique per job/kind/fold)."""

    __tablename__ = "training_job_work_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("training_jobs.id", ondelete="CASCADE")
    )
    kind: Mapped[WorkKind] = mapped_column(str_enum(WorkKind, "work_kind"))
    fold: Mapped[int] = mapped_column(Integer)
    status: Mapped[WorkStatus] = mapped_column(str_enum(WorkStatus, "work_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatches: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # Prediction or model artifact {uri, sha256, format, ...} and timings.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("job_id", "kind", "fold", name="uq_training_job_work_items_key"),
        Index("ix_training_job_work_items_job_status", "job_id", "status"),
    )
