"""What the scheduler did, for reading: decisions and the scheduler's status section.

Owns `list_decisions` (GET /clm/triggers) and `scheduler_state` (the "scheduler" section
of GET /clm/status: tracked models, decisions of the last 24 h by outcome, what is
pending, the outbox backlog and the configured cadence).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import TriggerReason
from app.core.timeutil import isoformat, utcnow
from app.models.continuous import DeadLetter, OutboxEvent, TriggerDecision, TriggerOutcome
from app.services.triggers.tracking import tracked_union

__all__ = ["list_decisions", "scheduler_state"]


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
    now = now or utcnow()
    u = tracked_union()
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
