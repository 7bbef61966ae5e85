"""HTTP adapter for continuous learning: trigger decisions, tracked models, drift reports,
live performance reports, regime champions and the event log.

Thin: parse (pydantic, 422 naming the field), open the unit of work, call the services
(app.services.triggers, app.services.checks.performance, app.bus.outbox) or, for a live
report, the flow app.flows.live (jobs it starts publish themselves after the commit).
Viewers read, operators write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import Field, StrictInt, field_validator
from sqlalchemy import select

from app.api.pagination import PageQuery, decode_cursor, int_cursor, page
from app.api.problems import unprocessable
from app.api.schema import StrictModel, Symbol, documented, parse_body, parse_query
from app.api.security import current_actor, require_role
from app.bus.outbox import list_events as outbox_events
from app.core.config import Settings
from app.core.domain import ModelType, Timeframe, TriggerReason
from app.core.errors import NotFound
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows.live import report_live
from app.models.continuous import (
    DeadLetter,
    DriftReport,
    RegimeChampion,
    TrackingSource,
    TriggerOutcome,
)
from app.services import triggers
from app.services.checks.performance import LiveReport, list_reports

bp = Blueprint("continuous", __name__)
TAG = "continuous"


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


def _int_cursor(cursor: str | None) -> int | None:
    return int_cursor(cursor)


class SinceQuery(PageQuery):
    """A page query with a timezone-aware `since` filter."""

    since: datetime | None = Field(None, description="at or after (ISO 8601 with timezone)")

    @field_validator("since")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a timezone (e.g. 2025-01-01T00:00:00Z)")
        if value is not None:
            # Near the calendar's ends the UTC equivalent may not exist: the client's
            # mistake (422), not a server error.
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                raise ValueError("date is out of range") from None
        return value


# -- trigger decisions ------------------------------------------------------------------
class TriggerQuery(SinceQuery):
    model_id: str | None = Field(None, max_length=120)
    reason: TriggerReason | None = None
    outcome: TriggerOutcome | None = None
    job_id: str | None = Field(None, max_length=36)


@bp.get("/clm/triggers")
@documented("Trigger decisions (triggered, coalesced, suppressed by cooldown, rejected, "
            "pending), newest first", role="viewer", query=TriggerQuery, tag=TAG)
@require_role("viewer")
def list_triggers() -> Any:
    q = parse_query(TriggerQuery)
    before = _int_cursor(q.cursor)
    with transaction(_settings().database_url) as session:
        rows = triggers.list_decisions(
            session, model_id=q.model_id, reason=q.reason.value if q.reason else None,
            outcome=q.outcome.value if q.outcome else None, job_id=q.job_id, since=q.since,
            before_id=before, limit=q.limit,
        )
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, [r["id"] for r in items], q.limit))


# -- tracked models ---------------------------------------------------------------------
class TrackedQuery(PageQuery):
    model_id: str | None = Field(None, max_length=120)
    model_type: ModelType | None = None
    source: TrackingSource | None = None


class TrackBody(StrictModel):
    model_type: ModelType
    symbol: Symbol
    timeframe: Timeframe
    interval_hours: float | None = Field(
        None, gt=0, le=24 * 366, description="periodic retraining interval (default per type)")
    drift_psi_threshold: float | None = Field(None, gt=0, le=10)
    drift_feature_share: float | None = Field(None, gt=0, le=1)
    degraded_sharpe: float | None = Field(None, ge=-100, le=100)
    min_trades: StrictInt | None = Field(None, ge=1, le=1_000_000)
    dataset_span_days: StrictInt | None = Field(None, ge=1, le=3650)
    params: dict[str, Any] | None = Field(None, description="trainer hyperparameters")


@bp.get("/clm/tracked")
@documented("Tracked models: every model with a production version plus those tracked "
            "explicitly, with interval, thresholds and next due time", role="viewer",
            query=TrackedQuery, tag=TAG)
@require_role("viewer")
def list_tracked() -> Any:
    q = parse_query(TrackedQuery)
    after = decode_cursor(q.cursor)
    if after is not None and not isinstance(after, str):
        raise unprocessable("cursor", "not a cursor returned by this API")
    settings = _settings()
    with transaction(settings.database_url) as session:
        items, keys = triggers.list_tracked(
            session, settings, model_id=q.model_id,
            model_type=q.model_type.value if q.model_type else None,
            source=q.source.value if q.source else None, after=after, limit=q.limit,
        )
    return jsonify(page(items, keys, q.limit))


@bp.post("/clm/tracked")
@documented("Track a (model_type, symbol, timeframe) with its own interval and thresholds "
            "(201 new, 200 updated)", role="operator", body=TrackBody,
            responses={200: "Updated", 201: "Tracked", 422: "Invalid body"}, tag=TAG)
@require_role("operator")
def track() -> Any:
    body = parse_body(TrackBody)
    settings = _settings()
    with transaction(settings.database_url, immediate=True) as session:
        # Params the trainer would refuse are refused first (422 naming params.<key>).
        item, created = triggers.track_model(
            session, settings, model_type=body.model_type.value, symbol=body.symbol,
            timeframe=body.timeframe.value, interval_hours=body.interval_hours,
            drift_psi_threshold=body.drift_psi_threshold,
            drift_feature_share=body.drift_feature_share,
            degraded_sharpe=body.degraded_sharpe, min_trades=body.min_trades,
            dataset_span_days=body.dataset_span_days, params=body.params,
            actor=current_actor()[:120], now=utcnow(),
        )
    response = jsonify(item)
    response.status_code = 201 if created else 200
    return response


@bp.delete("/clm/tracked/<model_id>")
@documented("Untrack a model (also a production one: it stays untracked until tracked "
            "again)", role="operator", responses={200: "Untracked", 404: "Not tracked"},
            tag=TAG)
@require_role("operator")
def untrack(model_id: str) -> Any:
    settings = _settings()
    with transaction(settings.database_url, immediate=True) as session:
        out = triggers.untrack_model(session, settings, model_id, now=utcnow())
    return jsonify(out)


# -- drift ------------------------------------------------------------------------------
class DriftQuery(SinceQuery):
    model_id: str | None = Field(None, max_length=120)
    version: str | None = Field(None, max_length=64)
    drifted: bool | None = None


@bp.get("/clm/drift")
@documented("Drift reports (one per check: PSI and KS per feature and for predictions), "
            "newest first", role="viewer", query=DriftQuery, tag=TAG)
@require_role("viewer")
def list_drift() -> Any:
    q = parse_query(DriftQuery)
    before = _int_cursor(q.cursor)
    stmt = select(DriftReport)
    if q.model_id:
        stmt = stmt.where(DriftReport.model_id == q.model_id)
    if q.version:
        stmt = stmt.where(DriftReport.version == q.version)
    if q.drifted is not None:
        stmt = stmt.where(DriftReport.drifted.is_(q.drifted))
    if q.since is not None:
        stmt = stmt.where(DriftReport.checked_at >= q.since)
    if before is not None:
        stmt = stmt.where(DriftReport.id < before)
    with transaction(_settings().database_url) as session:
        rows = session.scalars(stmt.order_by(DriftReport.id.desc()).limit(q.limit + 1)).all()
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, [r["id"] for r in items], q.limit))


@bp.get("/clm/drift/<report_id>")
@documented("One drift report", role="viewer",
            responses={200: "The report", 404: "Unknown report"}, tag=TAG)
@require_role("viewer")
def get_drift(report_id: str) -> Any:
    # An id that cannot exist (not a digit string, or past the database's integer
    # range) is unknown: 404, never a database error.
    if not report_id.isascii() or not report_id.isdigit() or len(report_id) > 18:
        raise NotFound(f"drift report {report_id} not found")
    with transaction(_settings().database_url) as session:
        row = session.get(DriftReport, int(report_id))
        if row is None:
            raise NotFound(f"drift report {report_id} not found")
        return jsonify(row.to_dict())


# -- performance ------------------------------------------------------------------------
class PerformanceQuery(PageQuery):
    model_id: str | None = Field(None, max_length=120)
    version: str | None = Field(None, max_length=64)
    source: str | None = Field(None, pattern=r"^(paper|live)$")


@bp.post("/clm/performance")
@documented("Report live results of a model version (realized returns / trades); judged "
            "over the rolling window: may start a performance_degraded job and, with "
            "CLM_AUTO_ROLLBACK, roll back", role="operator", body=LiveReport,
            responses={201: "Recorded", 404: "Unknown model or version",
                       409: "No production version", 422: "Invalid body"}, tag=TAG)
@require_role("operator")
def report_performance() -> Any:
    body = parse_body(LiveReport)
    settings = _settings()
    with transaction(settings.database_url, immediate=True) as session:
        out = report_live(session, settings, body, now=utcnow(),
                          reported_by=current_actor()[:120]).result
    response = jsonify(out)
    response.status_code = 201
    return response


@bp.get("/clm/performance")
@documented("Performance reports (paper and live), newest first", role="viewer",
            query=PerformanceQuery, tag=TAG)
@require_role("viewer")
def list_performance() -> Any:
    q = parse_query(PerformanceQuery)
    before = _int_cursor(q.cursor)
    with transaction(_settings().database_url) as session:
        rows = list_reports(session, model_id=q.model_id, version=q.version, source=q.source,
                            before_id=before, limit=q.limit)
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, [r["id"] for r in items], q.limit))


# -- regime champions -------------------------------------------------------------------
class ChampionQuery(PageQuery):
    model_id: str | None = Field(None, max_length=120)
    regime: str | None = Field(None, max_length=40)


@bp.get("/clm/regimes/champions")
@documented("The champion version per (model_id, regime)", role="viewer",
            query=ChampionQuery, tag=TAG)
@require_role("viewer")
def regime_champions() -> Any:
    q = parse_query(ChampionQuery)
    before = _int_cursor(q.cursor)
    stmt = select(RegimeChampion)
    if q.model_id:
        stmt = stmt.where(RegimeChampion.model_id == q.model_id)
    if q.regime:
        stmt = stmt.where(RegimeChampion.regime == q.regime)
    if before is not None:
        stmt = stmt.where(RegimeChampion.id < before)
    with transaction(_settings().database_url) as session:
        rows = session.scalars(stmt.order_by(RegimeChampion.id.desc()).limit(q.limit + 1)).all()
        keys = [r.id for r in rows]
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, keys, q.limit))


# -- events -----------------------------------------------------------------------------
class EventQuery(SinceQuery):
    type: str | None = Field(None, max_length=80, description="e.g. training.completed")
    published: bool | None = Field(None, description="relayed to the bus yet")


@bp.get("/clm/events")
@documented("Recent outbound events (the outbox), newest first, with publication state",
            role="viewer", query=EventQuery, tag=TAG)
@require_role("viewer")
def list_events() -> Any:
    q = parse_query(EventQuery)
    before = _int_cursor(q.cursor)
    with transaction(_settings().database_url) as session:
        rows = outbox_events(session, type=q.type, since=q.since, published=q.published,
                       before_id=before, limit=q.limit)
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, [r["seq"] for r in items], q.limit))


class DeadLetterQuery(PageQuery):
    type: str | None = Field(None, max_length=80)


@bp.get("/clm/events/dead-letters")
@documented("Inbound messages refused as malformed or unprocessable, with the reason",
            role="viewer", query=DeadLetterQuery, tag=TAG)
@require_role("viewer")
def list_dead_letters() -> Any:
    q = parse_query(DeadLetterQuery)
    before = _int_cursor(q.cursor)
    stmt = select(DeadLetter)
    if q.type:
        stmt = stmt.where(DeadLetter.type == q.type)
    if before is not None:
        stmt = stmt.where(DeadLetter.id < before)
    with transaction(_settings().database_url) as session:
        rows = session.scalars(stmt.order_by(DeadLetter.id.desc()).limit(q.limit + 1)).all()
        items = [r.to_dict() for r in rows]
    return jsonify(page(items, [r["id"] for r in items], q.limit))
