"""Starting a training job: the one-active-job rule and the insert that publishes itself.

Owns `create_training_job` (validate, insert the queued job with its ten pending steps,
and register its first message to be published after the commit), `find_active_job` and
`ActiveJobExists`. The one-active-train-job-per-model rule is the database's partial
unique index: the job's INSERT ... ON CONFLICT DO NOTHING is the whole decision (one
round-trip; the caller's transaction stays usable when it says no).
Callers start jobs through app.flows.training.request_training, which records the
trigger decision with the job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from app.bus.producer import send_after_commit
from app.core.config import Settings
from app.core.domain import JobStatus, ModelType, TriggerReason
from app.core.errors import Conflict
from app.core.logs import job_logger
from app.core.timeutil import utcnow
from app.models.jobs import (
    ACTIVE_JOB_STATUSES,
    ONE_ACTIVE_TRAIN_JOB_WHERE,
    JobKind,
    JobStage,
    StepStatus,
    TrainingJob,
    TrainingJobStep,
)
from app.services.jobs.dispatch import dispatch_deadline, stage_dispatch
from app.services.jobs.requests import validate_training_request
from app.services.jobs.views import STEP_NAMES, job_to_dict

log = logging.getLogger("app.services.jobs")  # one logger for the whole job service


class ActiveJobExists(Conflict):
    """The model already has a queued or running job; `job_id` names it (HTTP 409)."""

    def __init__(self, job_id: str, model_id: str) -> None:
        super().__init__(
            f"model {model_id} already has an active training job {job_id}",
            job_id=job_id,
            model_id=model_id,
        )
        self.job_id = job_id
        self.model_id = model_id


def find_active_job(session: Session, model_id: str) -> str | None:
    """The model's queued or running *train* job (a running strategy search does not
    count: it may run while the model trains)."""
    return session.scalars(
        select(TrainingJob.id).where(
            TrainingJob.model_id == model_id, TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES)
        )
    ).first()


def create_training_job(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    params: Mapping[str, Any] | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    requested_by: str | None = None,
    regime: str | None = None,
    strategy: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Validate and insert a queued job with its ten steps; returns the job dict.

    Raises `InvalidInput` (field named) or `ActiveJobExists(job_id)` when the model
    already has a queued/running job — decided by the database's partial unique index,
    so two concurrent requests cannot both win. Open the session with
    `transaction(url, immediate=True)` (SQLite: read-then-write must hold the write lock
    from the start); the job is published after that transaction commits.
    """
    req = validate_training_request(
        settings, model_type=model_type, symbol=symbol, timeframe=timeframe,
        dataset_span_days=dataset_span_days, params=params, trigger_reason=trigger_reason,
        regime=regime, strategy=strategy,
    )
    now = now or utcnow()
    job_id = str(uuid.uuid4())
    job = TrainingJob(
        id=job_id, kind=JobKind.TRAIN, model_id=req.model_id,
        model_type=ModelType(req.model_type),
        symbol=req.symbol, timeframe=req.timeframe, regime=req.regime,
        dataset_span_days=req.dataset_span_days, params=req.params, strategy=req.strategy,
        trigger_reason=TriggerReason(req.trigger_reason), requested_by=requested_by,
        status=JobStatus.QUEUED, stage=JobStage.PREPARE, attempts=0, dispatches=1,
        lease_owner=None, lease_expires_at=dispatch_deadline(settings, now, 1),
        folds_total=0, folds_done=0, artifacts={}, created_at=now, updated_at=now,
    )
    steps = [TrainingJobStep(job_id=job_id, position=i, name=name,
                             status=StepStatus.PENDING, attempts=0)
             for i, name in enumerate(STEP_NAMES, start=1)]
    # One statement decides: the insert does nothing when the partial unique index says
    # the model has an active job (no pre-check SELECT, no savepoint to keep the caller's
    # transaction usable); only then is the active job looked up, for the 409.
    values = {c.key: getattr(job, c.key) for c in _JOB_COLUMNS}
    for _attempt in range(3):
        if session.execute(_insert_unless_active(session, values)).first() is not None:
            break
        active = find_active_job(session, req.model_id)
        if active is not None:
            raise ActiveJobExists(active, req.model_id)
        # the conflicting job finished between the two statements: insert again
    else:
        raise Conflict(f"model {req.model_id} keeps starting training jobs; try again",
                       model_id=req.model_id)
    session.execute(insert(TrainingJobStep),
                    [{"job_id": job_id, "position": st.position, "name": st.name,
                      "status": st.status, "attempts": 0} for st in steps])
    job_logger(log, job_id, model_id=req.model_id).info(
        "training job created (%s, trigger %s)", req.model_id, req.trigger_reason
    )
    # Published once the creating transaction commits (a worker must find the row); a
    # lost message is published again by the reaper at the dispatch deadline.
    send_after_commit(session, [stage_dispatch(job_id, JobStage.PREPARE)], settings)
    # The answer is built from the rows just written (what get_job would read back).
    return job_to_dict(job, steps, [])


_JOB_COLUMNS = [c for c in TrainingJob.__table__.columns
                if c.key not in ("version", "error", "evaluation", "started_at", "finished_at")]


def _insert_unless_active(session: Session, values: dict[str, Any]) -> Any:
    """INSERT the job ... ON CONFLICT (the one-active-job index) DO NOTHING RETURNING id."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return (dialect_insert(TrainingJob).values(**values)
            .on_conflict_do_nothing(index_elements=["model_id"],
                                    index_where=text(ONE_ACTIVE_TRAIN_JOB_WHERE))
            .returning(TrainingJob.id))
