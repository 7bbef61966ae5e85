"""Reading training jobs: the API shape, the pipeline's snapshot, lists, counts, and the
fleet facts GET /metrics reports.

Owns `STEP_NAMES` (the ten steps every train job records, which its progress counts),
`JobNotFound`, `job_snapshot` (plain data for the pipeline), `job_to_dict` / `get_job` /
`list_jobs` (contract: GET /clm/jobs[/{job_id}]), `parse_cursor_time`, `job_counts`,
`work_items`, and the plain queries behind the job metrics (app.api.metrics turns them
into Prometheus families). Read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.core.domain import JobStatus, ModelType, TriggerReason
from app.core.errors import NotFound
from app.core.timeutil import isoformat
from app.models.jobs import (
    JobKind,
    StepStatus,
    TrainingJob,
    TrainingJobStep,
    TrainingJobWorkItem,
    WorkKind,
    WorkStatus,
)
from app.services.jobs.requests import is_job_id

# The seed's ten pipeline steps, in order; every job records each of them.
STEP_NAMES: tuple[str, ...] = (
    "validate_request",
    "fetch_data",
    "validate_data",
    "build_features",
    "split_folds",
    "train_folds",
    "evaluate",
    "final_fit",
    "register_version",
    "decide_promotion",
)


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id}", job_id=job_id)


def job_snapshot(job: TrainingJob) -> dict[str, Any]:
    """The job row as plain data for the pipeline (no steps)."""
    return {
        "job_id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "stage": job.stage.value,
        "model_id": job.model_id,
        "model_type": job.model_type.value,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "regime": job.regime,
        "dataset_span_days": job.dataset_span_days,
        "params": dict(job.params or {}),
        "strategy": dict(job.strategy) if job.strategy else None,
        "trigger_reason": job.trigger_reason.value,
        "requested_by": job.requested_by,
        "attempts": job.attempts,
        "lease_owner": job.lease_owner,
        "folds_total": job.folds_total,
        "folds_done": job.folds_done,
        "artifacts": dict(job.artifacts or {}),
        "evaluation": dict(job.evaluation) if job.evaluation else None,
        "version": job.version,
        "error": job.error,
    }


def item_dict(item: TrainingJobWorkItem) -> dict[str, Any]:
    result = dict(item.result or {})
    return {
        "kind": item.kind.value,
        "fold": item.fold,
        "status": item.status.value,
        "attempts": item.attempts,
        "worker": result.get("worker") or (item.lease_owner or "").rsplit("/", 1)[0] or None,
        "fit_s": result.get("fit_s"),
        "started_at": isoformat(item.started_at),
        "finished_at": isoformat(item.finished_at),
        "result": result or None,
    }


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _progress(job: TrainingJob, steps: Sequence[TrainingJobStep],
              items: Sequence[TrainingJobWorkItem]) -> float:
    if job.status == JobStatus.SUCCEEDED:
        return 1.0
    if job.kind == JobKind.EVOLVE:  # trials recorded / trials planned
        return round(min(job.folds_done / job.folds_total, 1.0), 4) if job.folds_total else 0.0
    done = 0.0
    folds = [i for i in items if i.kind != WorkKind.FINAL]
    for s in steps:
        if s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            done += 1.0
        elif s.status == StepStatus.RUNNING and s.name == "train_folds" and folds:
            done += sum(1 for i in folds if i.status == WorkStatus.DONE) / len(folds)
    return round(min(done / len(STEP_NAMES), 1.0), 4)


def job_to_dict(job: TrainingJob, steps: Sequence[TrainingJobStep],
                items: Sequence[TrainingJobWorkItem]) -> dict[str, Any]:
    """The API shape of a job (contract: GET /clm/jobs/{job_id}). An evolve job also has
    `search_id` and `trials` {total, done}; its steps are the search's generations."""
    evaluation = dict(job.evaluation) if job.evaluation else None
    evolve = job.kind == JobKind.EVOLVE
    out = {
        "job_id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "model_id": job.model_id,
        "model_type": job.model_type.value,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "regime": job.regime,
        "dataset_span_days": job.dataset_span_days,
        "params": dict(job.params or {}),
        "strategy": dict(job.strategy) if job.strategy else None,
        "trigger_reason": job.trigger_reason.value,
        "requested_by": job.requested_by,
        "stage": job.stage.value,
        "attempts": job.attempts,
        "progress": _progress(job, steps, items),
        "steps": [
            {
                "name": s.name,
                "status": s.status.value,
                "started_at": isoformat(s.started_at),
                "finished_at": isoformat(s.finished_at),
                "duration_s": _duration(s.started_at, s.finished_at),
                "attempts": s.attempts,
                "detail": s.detail,
            }
            for s in sorted(steps, key=lambda s: s.position)
        ],
        "folds": {
            "total": 0 if evolve else job.folds_total,
            "done": 0 if evolve else job.folds_done,
            "items": [item_dict(i) for i in sorted(items, key=lambda i: (i.kind.value, i.fold))],
        },
        "evaluation": evaluation,
        "version": job.version,
        "version_status": (evaluation or {}).get("decision", {}).get("status")
        if job.version else None,
        "error": job.error,
        "lease": {"owner": job.lease_owner, "expires_at": isoformat(job.lease_expires_at)},
        "artifacts": dict(job.artifacts or {}),
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
        "duration_s": _duration(job.started_at, job.finished_at),
    }
    if evolve:
        out["search_id"] = (job.artifacts or {}).get("search_id")
        out["trials"] = {"total": job.folds_total, "done": job.folds_done}
    return out


def get_job(session: Session, job_id: str) -> dict[str, Any]:
    """One job with steps, work items, progress, evaluation, version and error."""
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise JobNotFound(str(job_id))
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    steps = session.scalars(
        select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)
        .execution_options(populate_existing=True)
    ).all()
    items = session.scalars(
        select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id == job_id)
        .execution_options(populate_existing=True)
    ).all()
    return job_to_dict(job, steps, items)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    model_id: str | None = None,
    model_type: str | None = None,
    trigger_reason: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    after: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Jobs (every kind unless `kind` says) newest first, filtered; fetches `limit + 1`
    rows. Returns the items and their keyset keys ([created_at, id]) for
    `app.api.pagination.page`."""
    q = select(TrainingJob)
    if kind is not None:
        q = q.where(TrainingJob.kind == JobKind(kind))
    if status is not None:
        q = q.where(TrainingJob.status == JobStatus(status))
    if model_id is not None:
        q = q.where(TrainingJob.model_id == model_id)
    if model_type is not None:
        q = q.where(TrainingJob.model_type == ModelType(model_type))
    if trigger_reason is not None:
        q = q.where(TrainingJob.trigger_reason == TriggerReason(trigger_reason))
    if after is not None:
        created = parse_cursor_time(str(after[0]))
        q = q.where(or_(TrainingJob.created_at < created,
                        and_(TrainingJob.created_at == created, TrainingJob.id < str(after[1]))))
    jobs = session.scalars(
        q.order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit + 1)
    ).all()
    ids = [j.id for j in jobs]
    steps: dict[str, list[TrainingJobStep]] = {i: [] for i in ids}
    items: dict[str, list[TrainingJobWorkItem]] = {i: [] for i in ids}
    if ids:
        for s in session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id.in_(ids))):
            steps[s.job_id].append(s)
        for w in session.scalars(
            select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id.in_(ids))
        ):
            items[w.job_id].append(w)
    out = [job_to_dict(j, steps[j.id], items[j.id]) for j in jobs]
    keys = [[isoformat(j.created_at) or "", j.id] for j in jobs]
    return out, keys


def parse_cursor_time(value: str) -> datetime:
    """The created_at of a list cursor key (ValueError if it is not an ISO timestamp)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("cursor time must carry a timezone")
    return parsed


def job_counts(session: Session) -> dict[str, int]:
    """Number of jobs per status (every status present, zeros included)."""
    counts = dict(
        session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status)).all()
    )
    return {s.value: int(counts.get(s, 0)) for s in JobStatus}


def work_items(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's work items (kind, fold, status, result), in (kind, fold) order."""
    rows = session.scalars(
        select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id == job_id)
        .order_by(TrainingJobWorkItem.kind, TrainingJobWorkItem.fold)
        .execution_options(populate_existing=True)
    ).all()
    return [item_dict(r) for r in rows]


# -- fleet facts (GET /metrics: app.api.metrics builds the Prometheus families) ---------
# Train jobs only: strategy searches have their own metrics.
_TRAIN = TrainingJob.kind == JobKind.TRAIN


def train_jobs_by_status_and_trigger(session: Session) -> list[tuple[str, str, int]]:
    """(status, trigger_reason, count) of train jobs, for the groups that exist."""
    return [
        (JobStatus(status).value, TriggerReason(reason).value, count)
        for status, reason, count in session.execute(
            select(TrainingJob.status, TrainingJob.trigger_reason, func.count())
            .where(_TRAIN).group_by(TrainingJob.status, TrainingJob.trigger_reason)
        )
    ]


def lost_stage_leases(session: Session) -> int:
    """Stage leases that expired under a worker: attempts beyond the first, summed."""
    recovered = session.scalar(
        select(func.coalesce(func.sum(TrainingJob.attempts - 1), 0))
        .where(_TRAIN, TrainingJob.attempts > 1)
    )
    return int(recovered or 0)


def train_job_durations(session: Session, since: datetime) -> dict[tuple[str, ...], list[float]]:
    """Seconds from first claim to finish of train jobs finished since `since`, grouped
    by (model_type, status)."""
    rows: dict[tuple[str, ...], list[float]] = {}
    for model_type, status, started, finished in session.execute(
        select(TrainingJob.model_type, TrainingJob.status, TrainingJob.started_at,
               TrainingJob.finished_at)
        .where(_TRAIN, TrainingJob.finished_at >= since, TrainingJob.started_at.is_not(None))
    ):
        key = (ModelType(model_type).value, JobStatus(status).value)
        rows.setdefault(key, []).append((finished - started).total_seconds())
    return rows


def train_step_durations(session: Session, since: datetime) -> dict[tuple[str, ...], list[float]]:
    """Seconds of the train jobs' steps that succeeded since `since`, grouped by (step,)."""
    rows: dict[tuple[str, ...], list[float]] = {}
    for name, started, finished in session.execute(
        select(TrainingJobStep.name, TrainingJobStep.started_at, TrainingJobStep.finished_at)
        .join(TrainingJob, TrainingJob.id == TrainingJobStep.job_id)
        .where(_TRAIN, TrainingJobStep.status == StepStatus.SUCCEEDED,
               TrainingJobStep.finished_at >= since)
    ):
        rows.setdefault((name,), []).append((finished - started).total_seconds())
    return rows
