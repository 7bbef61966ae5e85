"""Every way a training job starts: `request_training`.

The API (POST /clm/train), the scheduler tick, inbound events, the drift, regime and
performance checks, candidate training and automatic strategy variants all come here,
so every reason to retrain is a trigger decision (GET /clm/triggers) and every job is
created by `app.services.jobs.create_training_job`, which publishes it after the
caller's transaction commits (`app.db.on_commit`).

Two ways to decide:
- `decide="now"` — a person or program asked for this job (API, candidate training,
  automatic variants): the job is created on the spot; when the model already has an
  active job the request is recorded as *coalesced* into it and the outcome names that
  job (the API answers 409 with it).
- `decide="arbitrate"` — a reason to retrain noticed by CLM (tick, events, checks): a
  pending decision, then arbitration (one active job per model, cooldown, priorities)
  decides it together with everything else pending for the model.

Runs inside the caller's transaction (open it with `transaction(url, immediate=True)`:
the one-active-job rule reads before it writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import TriggerReason, make_model_id, split_model_id
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import utcnow
from app.models.continuous import TriggerDecision
from app.services import jobs, triggers


@dataclass
class TrainingOutcome:
    """What one request came to."""

    decision: TriggerDecision
    job: dict[str, Any] | None = None  # the job this request created
    active_job_id: str | None = None  # coalesced into this active job (decide="now")
    started: list[str] = field(default_factory=list)  # every job arbitration started

    @property
    def job_id(self) -> str | None:
        return self.job["job_id"] if self.job else self.decision.job_id


def request_training(
    session: Session,
    settings: Settings,
    *,
    model_id: str | None = None,
    model_type: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    reason: str = TriggerReason.MANUAL.value,
    source: str,
    requested_by: str | None = None,
    decide: Literal["now", "arbitrate"] = "now",
    dedupe_key: str | None = None,
    params: Mapping[str, Any] | None = None,
    dataset_span_days: int | None = None,
    regime: str | None = None,
    strategy: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> TrainingOutcome:
    """Record a reason to train a model and start (or coalesce) its job; see the module
    docstring. Name the model by `model_id` or by type, symbol and timeframe.

    `decide="now"` raises `InvalidInput` for a request the job would refuse (nothing is
    recorded then); `decide="arbitrate"` needs a `dedupe_key` (a second request with the
    same key is the same decision) and never raises for a job that cannot start: the
    decision is recorded as rejected with the reason.
    """
    now = now or utcnow()
    if decide == "arbitrate":
        if dedupe_key is None:
            raise ValueError("an arbitrated training request needs a dedupe_key")
        if model_id is None:
            try:
                model_id = make_model_id(str(model_type), str(symbol), str(timeframe))
            except ValueError as exc:
                raise InvalidInput("model", str(exc)) from None
        merged = dict(details or {})
        if strategy:
            merged["strategy"] = dict(strategy)
        decision = triggers.record_request(
            session, settings, model_id=model_id, reason=reason, dedupe_key=dedupe_key,
            source=source, now=now, requested_by=requested_by, params=params,
            dataset_span_days=dataset_span_days, regime=regime, details=merged)
        started = arbitrate(session, settings, now=now, model_ids=[model_id])
        session.refresh(decision)
        return TrainingOutcome(decision=decision, started=started)
    if model_type is None:  # named by model_id (the job validates type, symbol, timeframe)
        parts = split_model_id(model_id)
        if parts is None:
            raise NotFound(f"model {model_id!r} not found: not a model id")
        model_type, symbol, timeframe = parts
    try:
        job = jobs.create_training_job(
            session, settings, model_type=str(model_type), symbol=str(symbol),
            timeframe=str(timeframe),
            dataset_span_days=(triggers.DEFAULT_DATASET_SPAN_DAYS if dataset_span_days is None
                               else dataset_span_days),
            params=params, trigger_reason=reason, requested_by=requested_by, regime=regime,
            strategy=strategy, now=now)
    except jobs.ActiveJobExists as exc:
        decision = triggers.record_direct_request(
            session, model_id=exc.model_id, job_id=exc.job_id, created=False, now=now,
            reason=reason, source=source, requested_by=requested_by, regime=regime,
            params=params, dataset_span_days=dataset_span_days, details=details)
        return TrainingOutcome(decision=decision, active_job_id=exc.job_id)
    decision = triggers.record_direct_request(
        session, model_id=job["model_id"], job_id=job["job_id"], created=True, now=now,
        reason=reason, source=source, requested_by=requested_by, regime=regime,
        params=job["params"], dataset_span_days=dataset_span_days, details=details,
        new_job=True)
    return TrainingOutcome(decision=decision, job=job, started=[job["job_id"]])


def arbitrate(session: Session, settings: Settings, *, now: datetime,
              model_ids: Sequence[str] | None = None) -> list[str]:
    """Decide every pending decision (of `model_ids`, or all); the jobs it starts are
    published after the caller's transaction commits. Returns their ids."""
    return triggers.arbitrate(session, settings, now=now, model_ids=model_ids)
