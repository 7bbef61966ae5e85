"""Trigger decisions and arbitration (the `trigger_decisions` table).

Owns `record_request`, `record_direct_request` and `arbitrate`:
- every reason to retrain (periodic slot, drift, performance, regime, a manual event) is
  first recorded as a *pending* decision, unique per (model_id, reason, dedupe_key). A
  second scheduler seeing the same due slot, or a redelivered event, hits the unique key
  and changes nothing (`slot_key` names the time slot checks use in their keys);
- `arbitrate`: pending decisions are grouped per model_id and decided together:
  * a job for the model is already active → all are **coalesced** into it;
  * within `trigger_cooldown_hours` after the model's last finished training → the
    automatic ones are **suppressed** (manual requests are never suppressed);
  * otherwise the highest priority (manual > performance > drift > regime > periodic)
    **triggers** one job with its reason and the rest are coalesced into that job.
  Every outcome stays in the table and is served by GET /clm/triggers. A job it creates
  publishes itself after the caller's commit (app.services.jobs.create_training_job);
  callers go through app.flows.training.

Concurrency: arbitration locks the pending rows it decides (FOR UPDATE on PostgreSQL;
SQLite callers open the unit of work with `transaction(url, immediate=True)`), and the
database refuses a second active job per model_id, which arbitration turns into a
coalesced outcome.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelType, TriggerReason
from app.core.errors import DomainError
from app.core.timeutil import ensure_utc, isoformat
from app.ml.data.store import MarketDataStore
from app.models.continuous import TrackedModel, TrackingSource, TriggerDecision, TriggerOutcome
from app.models.jobs import ACTIVE_JOB_STATUSES, JobKind, TrainingJob
from app.services.jobs import ActiveJobExists, create_training_job
from app.services.triggers.tracking import parse_model_id, production_row

__all__ = [
    "DEFAULT_DATASET_SPAN_DAYS",
    "PRIORITY",
    "arbitrate",
    "chunks",
    "job_facts",
    "record_direct_request",
    "record_request",
    "slot_key",
]

# Higher wins when several reasons are pending for one model at once.
PRIORITY: dict[str, int] = {
    TriggerReason.MANUAL.value: 50,
    TriggerReason.PERFORMANCE_DEGRADED.value: 40,
    TriggerReason.DRIFT_DETECTED.value: 30,
    TriggerReason.REGIME_CHANGE.value: 20,
    TriggerReason.PERIODIC.value: 10,
}
# Training window when neither the tracked row nor the production lineage says.
DEFAULT_DATASET_SPAN_DAYS = 90
# IN-lists are chunked so a tick over many due models stays within driver limits.
_CHUNK = 500


def slot_key(when: datetime, hours: float) -> str:
    """Name of the `hours`-long slot holding `when` (UTC epoch slots): checks that run
    more often than that share one decision per slot."""
    seconds = max(hours, 1e-6) * 3600.0
    index = math.floor(ensure_utc(when).timestamp() / seconds)
    return f"{int(hours * 3600)}s:{index}"


def _defaults_for(session: Session, model_id: str) -> dict[str, Any]:
    """Training parameters for an automatic retrain: the tracked row's, else those of the
    production version (same hyper-parameters, window as long as its training data)."""
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          ).scalar_one_or_none()
    prod = production_row(session, model_id)
    params: dict[str, Any] | None = row.params if row is not None else None
    span = row.dataset_span_days if row is not None else None
    if params is None and prod is not None:
        params = dict(prod.params or {})
    if span is None and prod is not None:
        span = _span_from_lineage(prod.lineage or {})
    return {"params": params or {}, "dataset_span_days": span or DEFAULT_DATASET_SPAN_DAYS}


def _span_from_lineage(lineage: Mapping[str, Any]) -> int | None:
    dataset = lineage.get("dataset") or {}
    try:
        first = datetime.fromisoformat(str(dataset["first_timestamp"]))
        last = datetime.fromisoformat(str(dataset["last_timestamp"]))
    except (KeyError, TypeError, ValueError):
        return None
    return max(1, math.ceil((last - first).total_seconds() / 86400.0))


def record_request(
    session: Session,
    settings: Settings,
    *,
    model_id: str,
    reason: str,
    dedupe_key: str,
    source: str,
    now: datetime,
    details: Mapping[str, Any] | None = None,
    regime: str | None = None,
    params: Mapping[str, Any] | None = None,
    dataset_span_days: int | None = None,
    requested_by: str | None = None,
) -> TriggerDecision:
    """Record a reason to retrain `model_id` as a pending decision (idempotent by
    (model_id, reason, dedupe_key): an existing decision is returned unchanged).

    Nothing starts here: `arbitrate` decides. Params and window default to the tracked
    row's, else the production version's.
    """
    reason = TriggerReason(reason).value
    model_type, symbol, timeframe = parse_model_id(model_id)
    key = str(dedupe_key)[:200]
    existing = _decision_by_key(session, model_id, reason, key)
    if existing is not None:
        return existing
    defaults = _defaults_for(session, model_id) if (params is None or
                                                    dataset_span_days is None) else {}
    decision = TriggerDecision(
        model_id=model_id, model_type=ModelType(model_type), symbol=symbol,
        timeframe=timeframe, reason=TriggerReason(reason), priority=PRIORITY[reason],
        dedupe_key=key, outcome=TriggerOutcome.PENDING, details=dict(details or {}),
        regime=regime,
        params=dict(params) if params is not None else defaults.get("params"),
        dataset_span_days=(dataset_span_days if dataset_span_days is not None
                           else defaults.get("dataset_span_days")),
        source=source, requested_by=requested_by, requested_at=now,
    )
    try:
        # A savepoint: a concurrent twin committing first makes this insert fail without
        # aborting the caller's transaction (PostgreSQL) — then we return the twin.
        with session.begin_nested():
            session.add(decision)
            session.flush()
    except IntegrityError:
        twin = _decision_by_key(session, model_id, reason, key)
        if twin is None:
            raise
        return twin
    return decision


def record_direct_request(
    session: Session,
    *,
    model_id: str,
    job_id: str,
    created: bool,
    now: datetime,
    reason: str = TriggerReason.MANUAL.value,
    source: str = "api",
    requested_by: str | None = None,
    details: Mapping[str, Any] | None = None,
    regime: str | None = None,
    params: Mapping[str, Any] | None = None,
    dataset_span_days: int | None = None,
    new_job: bool = False,
) -> TriggerDecision:
    """Record a training request that was decided on the spot, not by `arbitrate`
    (POST /clm/train): `created` → **triggered** with the job it started; otherwise
    **coalesced** into `job_id`, the model's active job that made the request a 409.

    Decided already, so arbitration never sees it. A triggered request is keyed by its job
    (recording it twice changes nothing); every coalesced request is its own decision.
    `new_job`: the caller created `job_id` in this transaction (no decision can name it).
    """
    reason = TriggerReason(reason).value
    model_type, symbol, timeframe = parse_model_id(model_id)
    key = f"{source}:job:{job_id}" if created else f"{source}:{uuid.uuid4().hex}"
    # A coalesced key is random and a new job has no decision yet: nothing to look up.
    if created and not new_job:
        existing = _decision_by_key(session, model_id, reason, key)
        if existing is not None:
            return existing
    if created:
        outcome, detail = TriggerOutcome.TRIGGERED, (
            f"started a {reason} job (priority {PRIORITY[reason]}), requested via {source}")
    else:
        outcome, detail = TriggerOutcome.COALESCED, (
            f"a job for {model_id} is already active; the {source} request was answered "
            "409 with its id")
    decision = TriggerDecision(
        model_id=model_id, model_type=ModelType(model_type), symbol=symbol,
        timeframe=timeframe, reason=TriggerReason(reason), priority=PRIORITY[reason],
        dedupe_key=key, outcome=TriggerOutcome.PENDING, details=dict(details or {}),
        regime=regime, params=dict(params) if params is not None else None,
        dataset_span_days=dataset_span_days, source=source, requested_by=requested_by,
        requested_at=now,
    )
    _decide(decision, outcome, now, job_id=job_id, detail=detail)
    session.add(decision)
    session.flush()
    return decision


def _decision_by_key(session: Session, model_id: str, reason: str, key: str
                     ) -> TriggerDecision | None:
    return session.execute(
        select(TriggerDecision).where(
            TriggerDecision.model_id == model_id,
            TriggerDecision.reason == TriggerReason(reason),
            TriggerDecision.dedupe_key == key,
        )
    ).scalar_one_or_none()


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def job_facts(session: Session, model_ids: Sequence[str]
               ) -> tuple[dict[str, str], dict[str, datetime], dict[str, datetime]]:
    """Per model: its active job id, when its last training finished, when its last job
    was created (three grouped queries per chunk of ids, not one per model). Training jobs
    only: a strategy search (an evolve job) is not a training."""
    train = TrainingJob.kind == JobKind.TRAIN

    active: dict[str, str] = {}
    finished: dict[str, datetime] = {}
    created: dict[str, datetime] = {}
    for chunk in chunks(list(model_ids)):
        for mid, job_id in session.execute(
            select(TrainingJob.model_id, TrainingJob.id).where(
                train, TrainingJob.model_id.in_(chunk),
                TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
        ):
            active[mid] = job_id
        for mid, last in session.execute(
            select(TrainingJob.model_id, func.max(TrainingJob.finished_at))
            .where(train, TrainingJob.model_id.in_(chunk),
                   TrainingJob.finished_at.is_not(None))
            .group_by(TrainingJob.model_id)
        ):
            if last is not None:
                finished[mid] = ensure_utc(last)
        for mid, last in session.execute(
            select(TrainingJob.model_id, func.max(TrainingJob.created_at))
            .where(train, TrainingJob.model_id.in_(chunk)).group_by(TrainingJob.model_id)
        ):
            if last is not None:
                created[mid] = ensure_utc(last)
    return active, finished, created



def _decide(d: TriggerDecision, outcome: TriggerOutcome, now: datetime, *,
            job_id: str | None = None, detail: str | None = None,
            cooldown_until: datetime | None = None) -> None:
    d.outcome = outcome
    d.job_id = job_id
    d.detail = detail
    d.decided_at = now
    d.cooldown_until = cooldown_until


def _note_training(session: Session, d: TriggerDecision, job_id: str, now: datetime) -> None:
    """Restart the model's periodic clock: it is being retrained now. A model that is not
    tracked (no row, no production version, e.g. a one-off manual request) stays so."""
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == d.model_id)
                          ).scalar_one_or_none()
    if row is None:
        if production_row(session, d.model_id) is None:
            return
        row = TrackedModel(model_id=d.model_id, model_type=d.model_type, symbol=d.symbol,
                           timeframe=d.timeframe, source=TrackingSource.PRODUCTION,
                           enabled=True, created_at=now)
        session.add(row)
    row.anchor_at = now
    row.last_job_id = job_id
    row.updated_at = now


def _clamp_span(settings: Settings, symbol: str, timeframe: str, span: int) -> int:
    """An automatic retrain uses at most the days of data the store holds (a person's
    request is taken as asked: the job refuses it, naming what is stored)."""
    try:
        coverage = MarketDataStore.from_settings(settings).coverage(symbol, timeframe)
    except (OSError, ValueError):
        return span
    if coverage is None:
        return span
    days = (coverage.last - coverage.first).total_seconds() / 86400.0
    return max(1, min(span, math.floor(days)))


def _start_job(session: Session, settings: Settings, d: TriggerDecision,
               now: datetime) -> str:
    """Create the training job for a winning decision (inside a savepoint, so a refusal
    leaves the arbitration transaction usable). Raises ActiveJobExists or DomainError."""
    span = int(d.dataset_span_days or DEFAULT_DATASET_SPAN_DAYS)
    if d.reason != TriggerReason.MANUAL:
        span = _clamp_span(settings, d.symbol, d.timeframe, span)
    with session.begin_nested():
        job = create_training_job(
            session, settings, model_type=str(d.model_type), symbol=d.symbol,
            timeframe=d.timeframe, dataset_span_days=span,
            params=dict(d.params or {}), trigger_reason=str(d.reason),
            requested_by=d.requested_by or f"clm-trigger:{d.source}", regime=d.regime,
            strategy=(d.details or {}).get("strategy"), now=now,
        )
    return str(job["job_id"])


def arbitrate(
    session: Session,
    settings: Settings,
    *,
    now: datetime,
    model_ids: Sequence[str] | None = None,
) -> list[str]:
    """Decide every pending decision (of `model_ids`, or all); returns the ids of the jobs
    created (each publishes itself after the caller commits). See the module docstring
    for the rules."""
    stmt = select(TriggerDecision).where(TriggerDecision.outcome == TriggerOutcome.PENDING)
    if model_ids is not None:
        if not model_ids:
            return []
        stmt = stmt.where(TriggerDecision.model_id.in_(list(model_ids)))
    pending = list(session.scalars(
        stmt.order_by(TriggerDecision.model_id, TriggerDecision.id).with_for_update()))
    if not pending:
        return []
    groups: dict[str, list[TriggerDecision]] = {}
    for d in pending:
        groups.setdefault(d.model_id, []).append(d)
    active, finished, _created = job_facts(session, list(groups))
    cooldown = timedelta(hours=settings.trigger_cooldown_hours)
    started: list[str] = []
    for model_id, group in groups.items():
        group.sort(key=lambda d: (-d.priority, d.id))
        running = active.get(model_id)
        if running is not None:
            for d in group:
                _decide(d, TriggerOutcome.COALESCED, now, job_id=running,
                        detail=f"a job for {model_id} is already active")
            continue
        last = finished.get(model_id)
        until = last + cooldown if last is not None else None
        in_cooldown = until is not None and now < until
        candidates = [d for d in group
                      if not in_cooldown or d.reason == TriggerReason.MANUAL]
        for d in group:
            if d not in candidates:
                _decide(d, TriggerOutcome.SUPPRESSED, now, cooldown_until=until,
                        detail=f"cooldown after the training that finished at "
                               f"{isoformat(last)} lasts until {isoformat(until)}")
        job_id: str | None = None
        winner: TriggerDecision | None = None
        for d in candidates:
            if job_id is not None:
                won = f"decision {winner.id} ({winner.reason})" if winner else "another decision"
                _decide(d, TriggerOutcome.COALESCED, now, job_id=job_id,
                        detail=f"coalesced into the job started for {won}")
                continue
            try:
                job_id = _start_job(session, settings, d, now)
            except ActiveJobExists as exc:
                # Someone else (POST /clm/train, another tick) won the race.
                job_id = str(exc.job_id)
                _decide(d, TriggerOutcome.COALESCED, now, job_id=job_id,
                        detail=f"a job for {model_id} is already active")
                winner = d
                continue
            except (DomainError, ValueError, LookupError) as exc:
                _decide(d, TriggerOutcome.REJECTED, now,
                        detail=f"could not start a job: {exc}")
                continue
            _decide(d, TriggerOutcome.TRIGGERED, now, job_id=job_id,
                    detail=f"started a {d.reason} job (priority {d.priority})")
            _note_training(session, d, job_id, now)
            started.append(job_id)
            winner = d
    session.flush()
    return started
