"""What is due, and arbitration: tracked models, the scheduler tick, trigger decisions.

Owns the `tracked_models` and `trigger_decisions` tables:
- `track_model` / `untrack_model` / `list_tracked`: the tracked set is every model_id
  with a production version plus any tracked explicitly (own interval and thresholds).
- `record_request`: every reason to retrain (periodic slot, drift, performance, regime,
  a manual event) is first recorded as a *pending* decision, unique per
  (model_id, reason, dedupe_key). A second scheduler seeing the same due slot, or a
  redelivered event, hits the unique key and changes nothing.
- `arbitrate`: pending decisions are grouped per model_id and decided together:
  * a job for the model is already active → all are **coalesced** into it;
  * within `trigger_cooldown_hours` after the model's last finished training → the
    automatic ones are **suppressed** (manual requests are never suppressed);
  * otherwise the highest priority (manual > performance > drift > regime > periodic)
    **triggers** one job with its reason and the rest are coalesced into that job.
  Every outcome stays in the table and is served by GET /clm/triggers.
- `run_tick`: reads the tracked set in one query, finds the periodic slots that are due
  (per-type intervals from settings unless the tracked row overrides), records them and
  arbitrates everything pending. Cost is one query plus work proportional to what is
  due, not to what is tracked; enqueueing happens after the caller commits
  (`TickResult.job_ids`).

Concurrency: arbitration locks the pending rows it decides (FOR UPDATE on PostgreSQL;
SQLite callers open the unit of work with `transaction(url, immediate=True)`), and the
database refuses a second active job per model_id, which arbitration turns into a
coalesced outcome.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, literal, null, select, true, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import (
    ModelStatus,
    ModelType,
    TriggerReason,
    make_model_id,
    split_model_id,
)
from app.core.errors import DomainError, InvalidInput, NotFound
from app.core.timeutil import ensure_utc, isoformat
from app.models.continuous import TrackedModel, TrackingSource, TriggerDecision, TriggerOutcome
from app.models.registry import ModelVersion

__all__ = [
    "DEFAULT_DATASET_SPAN_DAYS",
    "PRIORITY",
    "TickResult",
    "arbitrate",
    "due_at",
    "interval_hours_for",
    "list_decisions",
    "list_tracked",
    "parse_model_id",
    "record_direct_request",
    "record_request",
    "run_tick",
    "slot_key",
    "track_model",
    "untrack_model",
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

def parse_model_id(model_id: str) -> tuple[str, str, str]:
    """(model_type, SYMBOL, timeframe) of a contract model id; NotFound when it cannot be
    one (the API answers 404 for an id that cannot exist)."""
    parts = split_model_id(model_id)
    if parts is None:
        raise NotFound(f"model {model_id!r} not found: not a model id")
    return parts


def interval_hours_for(settings: Settings, model_type: str, override: float | None) -> float:
    """Periodic retraining interval: the tracked row's own, else the per-type setting."""
    if override is not None:
        return float(override)
    return float(settings.retrain_interval_hours.get(
        str(model_type), settings.retrain_interval_hours.get("other", 168.0)))


def due_at(anchor: datetime | None, interval_hours: float) -> datetime | None:
    """When the next periodic training is due (None: never trained → due now)."""
    if anchor is None:
        return None
    return ensure_utc(anchor) + timedelta(hours=interval_hours)


def slot_key(when: datetime, hours: float) -> str:
    """Name of the `hours`-long slot holding `when` (UTC epoch slots): checks that run
    more often than that share one decision per slot."""
    seconds = max(hours, 1e-6) * 3600.0
    index = math.floor(ensure_utc(when).timestamp() / seconds)
    return f"{int(hours * 3600)}s:{index}"


# -- tracked models ---------------------------------------------------------------------
def _tracked_union() -> Any:
    """Every tracked model as one selectable: enabled explicit/production rows plus
    production models with no tracked row. Columns: model_id, model_type, symbol,
    timeframe, source, interval_hours, anchor_at, last_job_id, row_id."""
    t = TrackedModel
    explicit = select(
        t.model_id.label("model_id"), t.model_type.label("model_type"),
        t.symbol.label("symbol"), t.timeframe.label("timeframe"), t.source.label("source"),
        t.interval_hours.label("interval_hours"), t.anchor_at.label("anchor_at"),
        t.last_job_id.label("last_job_id"), t.id.label("row_id"),
    ).where(t.enabled == true())
    mv = ModelVersion
    implicit = select(
        mv.model_id, mv.model_type, mv.symbol, mv.timeframe,
        literal(TrackingSource.PRODUCTION.value), null(), mv.created_at, null(), null(),
    ).where(
        mv.status == ModelStatus.PRODUCTION,
        ~select(t.id).where(t.model_id == mv.model_id).exists(),
    )
    return union_all(explicit, implicit).subquery("tracked")


def _tracked_dict(row: Any, settings: Settings, extra: TrackedModel | None = None
                  ) -> dict[str, Any]:
    interval = interval_hours_for(settings, row.model_type, row.interval_hours)
    nxt = due_at(row.anchor_at, interval)
    out: dict[str, Any] = {
        "model_id": row.model_id,
        "model_type": str(row.model_type),
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "source": str(row.source),
        "enabled": True,
        "interval_hours": interval,
        "interval_overridden": row.interval_hours is not None,
        "last_trained_at": isoformat(row.anchor_at) if row.anchor_at else None,
        "next_due_at": isoformat(nxt) if nxt else None,
        "last_job_id": row.last_job_id,
        "thresholds": {
            "drift_psi_threshold": settings.drift_psi_threshold,
            "drift_feature_share": settings.drift_feature_share,
            "degraded_sharpe": settings.degraded_sharpe,
            "min_trades": settings.performance_min_trades,
        },
        "dataset_span_days": None,
        "params": None,
    }
    if extra is not None:
        out["enabled"] = bool(extra.enabled)
        for key in ("drift_psi_threshold", "drift_feature_share", "degraded_sharpe",
                    "min_trades"):
            value = getattr(extra, key)
            if value is not None:
                out["thresholds"][key] = value
        out["dataset_span_days"] = extra.dataset_span_days
        out["params"] = extra.params
        out["created_by"] = extra.created_by
        out["created_at"] = isoformat(extra.created_at)
    return out


def tracked_overrides(session: Session, model_id: str) -> dict[str, Any]:
    """The per-model thresholds a tracked row sets (only the non-default ones)."""
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          ).scalar_one_or_none()
    if row is None:
        return {}
    keys = ("drift_psi_threshold", "drift_feature_share", "degraded_sharpe", "min_trades")
    return {k: getattr(row, k) for k in keys if getattr(row, k) is not None}


def list_tracked(
    session: Session,
    settings: Settings,
    *,
    model_id: str | None = None,
    model_type: str | None = None,
    source: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Tracked models ordered by model_id (keyset `after`), `limit + 1` rows fetched so
    the caller can tell whether there is a next page. Returns (items, keys)."""
    u = _tracked_union()
    stmt = select(u)
    if model_id:
        stmt = stmt.where(u.c.model_id == model_id)
    if model_type:
        stmt = stmt.where(u.c.model_type == model_type)
    if source:
        stmt = stmt.where(u.c.source == source)
    if after is not None:
        stmt = stmt.where(u.c.model_id > after)
    rows = session.execute(stmt.order_by(u.c.model_id).limit(limit + 1)).all()
    ids = [r.row_id for r in rows if r.row_id is not None]
    extras = {}
    if ids:
        extras = {t.id: t for t in session.scalars(select(TrackedModel)
                                                   .where(TrackedModel.id.in_(ids)))}
    items = [_tracked_dict(r, settings, extras.get(r.row_id)) for r in rows]
    return items, [r.model_id for r in rows]


def _production_row(session: Session, model_id: str) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.model_id == model_id,
                                   ModelVersion.status == ModelStatus.PRODUCTION)
    ).scalar_one_or_none()


def track_model(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    interval_hours: float | None = None,
    drift_psi_threshold: float | None = None,
    drift_feature_share: float | None = None,
    degraded_sharpe: float | None = None,
    min_trades: int | None = None,
    dataset_span_days: int | None = None,
    params: Mapping[str, Any] | None = None,
    actor: str | None = None,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Track a model explicitly (or update its overrides). Returns (tracked, created).

    A new row's periodic clock starts at its production version's training time when it
    has one, otherwise it is due at the next tick (never trained).
    """
    try:
        model_id = make_model_id(model_type, symbol, timeframe)
    except ValueError as exc:
        field_name = "timeframe" if "timeframe" in str(exc) else (
            "symbol" if "symbol" in str(exc) else "model_type")
        raise InvalidInput(field_name, str(exc)) from None
    _check_positive("interval_hours", interval_hours)
    _check_positive("drift_psi_threshold", drift_psi_threshold)
    if drift_feature_share is not None and not (0 < drift_feature_share <= 1):
        raise InvalidInput("drift_feature_share", "must be in (0, 1]")
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          .with_for_update()).scalar_one_or_none()
    created = row is None
    if row is None:
        prod = _production_row(session, model_id)
        row = TrackedModel(
            model_id=model_id, model_type=ModelType(model_type),
            symbol=symbol.strip().upper(), timeframe=timeframe,
            anchor_at=prod.created_at if prod is not None else None,
            created_by=actor, created_at=now,
        )
        session.add(row)
    elif not row.enabled:
        created = True  # re-tracking a model that was untracked
    row.source = TrackingSource.EXPLICIT
    row.enabled = True
    row.interval_hours = interval_hours
    row.drift_psi_threshold = drift_psi_threshold
    row.drift_feature_share = drift_feature_share
    row.degraded_sharpe = degraded_sharpe
    row.min_trades = min_trades
    row.dataset_span_days = dataset_span_days
    row.params = dict(params) if params is not None else None
    row.updated_at = now
    session.flush()
    items, _ = list_tracked(session, settings, model_id=model_id, limit=1)
    return items[0], created


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InvalidInput(name, "must be a positive number")


def untrack_model(session: Session, settings: Settings, model_id: str, *, now: datetime
                  ) -> dict[str, Any]:
    """Stop tracking `model_id` (explicit or production). The row is kept disabled, so a
    production model stays untracked and its history remains. NotFound when not tracked."""
    model_type, symbol, timeframe = parse_model_id(model_id)
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          .with_for_update()).scalar_one_or_none()
    if row is None or not row.enabled:
        prod = _production_row(session, model_id) if row is None else None
        if prod is None:
            raise NotFound(f"model {model_id} is not tracked")
        row = TrackedModel(model_id=model_id, model_type=ModelType(model_type), symbol=symbol,
                           timeframe=timeframe, source=TrackingSource.PRODUCTION,
                           anchor_at=prod.created_at, created_at=now)
        session.add(row)
    row.enabled = False
    row.updated_at = now
    session.flush()
    return {"model_id": model_id, "tracked": False, "source": str(row.source),
            "untracked_at": isoformat(now)}


# -- decisions --------------------------------------------------------------------------
def _defaults_for(session: Session, model_id: str) -> dict[str, Any]:
    """Training parameters for an automatic retrain: the tracked row's, else those of the
    production version (same hyper-parameters, window as long as its training data)."""
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          ).scalar_one_or_none()
    prod = _production_row(session, model_id)
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
) -> TriggerDecision:
    """Record a training request that was decided on the spot, not by `arbitrate`
    (POST /clm/train): `created` → **triggered** with the job it started; otherwise
    **coalesced** into `job_id`, the model's active job that made the request a 409.

    Decided already, so arbitration never sees it. A triggered request is keyed by its job
    (recording it twice changes nothing); every coalesced request is its own decision.
    """
    reason = TriggerReason(reason).value
    model_type, symbol, timeframe = parse_model_id(model_id)
    key = f"{source}:job:{job_id}" if created else f"{source}:{uuid.uuid4().hex}"
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


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _job_facts(session: Session, model_ids: Sequence[str]
               ) -> tuple[dict[str, str], dict[str, datetime], dict[str, datetime]]:
    """Per model: its active job id, when its last training finished, when its last job
    was created (three grouped queries per chunk of ids, not one per model). Training jobs
    only: a strategy search (an evolve job) is not a training."""
    from app.models.jobs import ACTIVE_JOB_STATUSES, JobKind, TrainingJob

    train = TrainingJob.kind == JobKind.TRAIN

    active: dict[str, str] = {}
    finished: dict[str, datetime] = {}
    created: dict[str, datetime] = {}
    for chunk in _chunks(list(model_ids)):
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


def _rejected_periodic(session: Session, model_ids: Sequence[str]) -> dict[str, set[str]]:
    """Periodic slot keys whose decision was rejected, per model (one query per chunk)."""
    out: dict[str, set[str]] = {}
    for chunk in _chunks(list(model_ids)):
        for mid, key in session.execute(
            select(TriggerDecision.model_id, TriggerDecision.dedupe_key).where(
                TriggerDecision.model_id.in_(chunk),
                TriggerDecision.reason == TriggerReason.PERIODIC,
                TriggerDecision.outcome == TriggerOutcome.REJECTED)
        ):
            out.setdefault(mid, set()).add(key)
    return out


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
        if _production_row(session, d.model_id) is None:
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
    from app.ml.data.store import MarketDataStore

    try:
        coverage = MarketDataStore(settings.data_dir).coverage(symbol, timeframe)
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
    from app.services.jobs import create_training_job

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
    created, to enqueue after the caller commits. See the module docstring for the rules."""
    from app.services.jobs import ActiveJobExists

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
    active, finished, _created = _job_facts(session, list(groups))
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


# -- the tick ---------------------------------------------------------------------------
@dataclass
class TickResult:
    """What one scheduler tick saw and did."""

    now: datetime
    tracked: int = 0
    due: int = 0
    requested: list[int] = field(default_factory=list)  # decision ids recorded now
    job_ids: list[str] = field(default_factory=list)  # enqueue these after commit
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"now": isoformat(self.now), "tracked": self.tracked, "due": self.due,
                "requested": list(self.requested), "job_ids": list(self.job_ids),
                "seconds": dict(self.seconds)}


def run_tick(session: Session, settings: Settings, *, now: datetime) -> TickResult:
    """One scheduler tick at `now` (pass a frozen clock in tests).

    1. one query for the whole tracked set (explicit rows ∪ production models);
    2. periodic slots due at `now`, checked against the model's newest job (a training
       started elsewhere, e.g. POST /clm/train, restarts the clock too);
    3. a pending `periodic` decision per due slot (key = the due time);
    4. arbitration of everything pending (other triggers included).
    """
    import time

    now = ensure_utc(now)
    t0 = time.perf_counter()
    u = _tracked_union()
    rows = session.execute(
        select(u.c.model_id, u.c.model_type, u.c.interval_hours, u.c.anchor_at)
    ).all()
    result = TickResult(now=now, tracked=len(rows))
    # model_id -> (due time or None for "never trained", interval, anchor)
    due: dict[str, tuple[datetime | None, float, datetime | None]] = {}
    for model_id, model_type, interval_override, anchor in rows:
        interval = interval_hours_for(settings, model_type, interval_override)
        when = due_at(anchor, interval)
        if when is None or when <= now:
            due[model_id] = (when, interval, anchor)
    t1 = time.perf_counter()
    if due:
        _active, _finished, created = _job_facts(session, list(due))
        for model_id, (when, interval, anchor) in list(due.items()):
            newest = created.get(model_id)
            if newest is not None and (anchor is None or newest > ensure_utc(anchor)):
                # Trained since the scheduler last looked (e.g. POST /clm/train): the
                # periodic clock restarts at that job.
                when = newest + timedelta(hours=interval)
                if when > now:
                    del due[model_id]
                    continue
                due[model_id] = (when, interval, anchor)
        result.due = len(due)
        rejected = _rejected_periodic(session, list(due))
        for model_id, (when, interval, _anchor) in due.items():
            key = f"periodic:{isoformat(when)}" if when is not None else "periodic:initial"
            if key in rejected.get(model_id, ()):
                # The slot's job could not start (e.g. no data yet): try again once per
                # cooldown period instead of never (or on every tick).
                key = f"{key}:retry:{slot_key(now, settings.trigger_cooldown_hours)}"
            d = record_request(
                session, settings, model_id=model_id, reason="periodic", dedupe_key=key,
                source="tick", now=now, requested_by="clm-scheduler",
                details={"due_at": isoformat(when) if when else None,
                         "interval_hours": interval},
            )
            if d.outcome == TriggerOutcome.PENDING:
                result.requested.append(d.id)
    t2 = time.perf_counter()
    result.job_ids = arbitrate(session, settings, now=now)
    t3 = time.perf_counter()
    result.seconds = {"scan": t1 - t0, "request": t2 - t1, "arbitrate": t3 - t2}
    return result


# -- reading decisions ------------------------------------------------------------------
def list_decisions(
    session: Session,
    *,
    model_id: str | None = None,
    reason: str | None = None,
    outcome: str | None = None,
    job_id: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[TriggerDecision]:
    """Decisions newest first (keyset `before_id`); fetches `limit + 1` rows."""
    stmt = select(TriggerDecision)
    conds = []
    if model_id:
        conds.append(TriggerDecision.model_id == model_id)
    if reason:
        conds.append(TriggerDecision.reason == TriggerReason(reason))
    if outcome:
        conds.append(TriggerDecision.outcome == TriggerOutcome(outcome))
    if job_id:
        conds.append(TriggerDecision.job_id == job_id)
    if since is not None:
        conds.append(TriggerDecision.requested_at >= since)
    if before_id is not None:
        conds.append(TriggerDecision.id < before_id)
    if conds:
        stmt = stmt.where(and_(*conds))
    return list(session.scalars(stmt.order_by(TriggerDecision.id.desc()).limit(limit + 1)))


def scheduler_state(session: Session, settings: Settings, *, now: datetime | None = None
                    ) -> dict[str, Any]:
    """The scheduler's section of GET /clm/status: tracked models, decisions of the last
    24 h by outcome, what is pending, the outbox backlog and the configured cadence."""
    from app.core.timeutil import utcnow
    from app.models.continuous import DeadLetter, OutboxEvent

    now = now or utcnow()
    u = _tracked_union()
    tracked = session.scalar(select(func.count()).select_from(u)) or 0
    since = now - timedelta(hours=24)
    outcomes = dict(session.execute(
        select(TriggerDecision.outcome, func.count()).where(
            TriggerDecision.requested_at >= since).group_by(TriggerDecision.outcome)).all())
    backlog, oldest = session.execute(
        select(func.count(), func.min(OutboxEvent.occurred_at))
        .where(OutboxEvent.published_at.is_(None))).one()
    return {
        "tracked_models": int(tracked),
        "decisions_24h": {str(o.value): int(outcomes.get(o, 0)) for o in TriggerOutcome},
        "pending": int(outcomes.get(TriggerOutcome.PENDING, 0)),
        "outbox": {"unpublished": int(backlog or 0),
                   "oldest_unpublished_at": isoformat(oldest) if oldest else None},
        "dead_letters": int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0),
        "config": {
            "tick_s": settings.scheduler_tick_s,
            "drift_check_s": settings.drift_check_interval_s,
            "performance_check_s": settings.performance_check_interval_s,
            "relay_s": settings.outbox_relay_interval_s,
            "cooldown_hours": settings.trigger_cooldown_hours,
            "retrain_interval_hours": dict(settings.retrain_interval_hours),
            "auto_rollback": settings.auto_rollback,
        },
    }
