"""Inbound events as use cases: what each event type does, exactly once per event id.

Owns `process_inbound` (one message end to end: validate → its `event_inbox` row and its
effect in one transaction; a redelivery is a no-op), the dead-letter record of messages
that can never be handled, and `consume_events` (the consume loop of app.bus.inbound
with `process_inbound` as its handler, for `clm events consume`). Effects:
- drift.detected, performance.degraded, regime.changed, training.requested (payload =
  body of POST /clm/train): a training request arbitrated with everything pending for
  the model (app.flows.training.request_training, decide="arbitrate");
- performance.reported: a live performance report (app.flows.live.report_live).
Jobs started here publish themselves after the commit. Database or broker outages
propagate (the consumer requeues the message); malformed or unprocessable messages are
dead-lettered with the reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.inbound import (
    INBOUND_QUEUE,
    DriftDetected,
    Envelope,
    InboundResult,
    ModelRef,
    PerformanceDegraded,
    Refused,
    RegimeChanged,
    TrainingRequested,
    body_text,
    consume,
    errors_text,
    parse_message,
)
from app.core.config import Settings
from app.core.domain import make_model_id
from app.core.errors import DomainError
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows.live import report_live
from app.flows.training import request_training
from app.models.continuous import DeadLetter, InboxEvent
from app.services.checks.performance import LiveReport

__all__ = ["consume_events", "process_inbound"]

# Event type → (payload schema, trigger reason) of the events that name a model.
_MODEL_EVENTS: dict[str, tuple[type[ModelRef], str]] = {
    "drift.detected": (DriftDetected, "drift_detected"),
    "performance.degraded": (PerformanceDegraded, "performance_degraded"),
    "regime.changed": (RegimeChanged, "regime_change"),
}


def _dead_letter(settings: Settings, body: Any, reason: str, *, routing_key: str | None,
                 event_id: str | None = None, type: str | None = None) -> None:
    with transaction(settings.database_url) as session:
        session.add(DeadLetter(event_id=(event_id or None) and event_id[:64],
                               type=(type or None) and type[:80],
                               routing_key=(routing_key or None) and routing_key[:200],
                               reason=reason, body=body_text(body), received_at=utcnow()))


def _handle(session: Session, settings: Settings, envelope: Envelope, now: datetime
            ) -> tuple[dict[str, Any], list[str]]:
    """Act on a validated event inside the inbox transaction; returns (outcome, job ids)."""
    payload = envelope.payload
    kind = envelope.type
    requester = f"event:{envelope.source}"[:120]
    key = f"event:{envelope.id}"
    try:
        if kind == "performance.reported":
            body = LiveReport.model_validate(payload)
            live = report_live(session, settings, body, now=now, reported_by=requester,
                               event_id=envelope.id)
            return {"performance_report_id": live.result["report"]["id"],
                    "degraded": live.result["rolling"]["degraded"],
                    "rollback": live.result.get("rollback")}, live.job_ids
        if kind == "training.requested":
            req = TrainingRequested.model_validate(payload)
            outcome = request_training(
                session, settings,
                model_id=make_model_id(req.model_type.value, req.symbol, req.timeframe.value),
                reason=req.trigger_reason.value, source="event", requested_by=requester,
                decide="arbitrate", dedupe_key=key, params=req.params,
                dataset_span_days=req.dataset_span_days, regime=req.regime,
                strategy=req.strategy, details={"event_id": envelope.id}, now=now,
            )
        else:
            schema, reason = _MODEL_EVENTS[kind]
            ref = schema.model_validate(payload)
            outcome = request_training(
                session, settings, model_id=ref.resolved_id(), reason=reason,
                source="event", requested_by=requester, decide="arbitrate",
                dedupe_key=key, regime=getattr(ref, "regime", None),
                details={"event_id": envelope.id,
                         **ref.model_dump(mode="json", exclude_none=True)},
                now=now,
            )
    except ValidationError as exc:
        raise Refused(f"malformed {kind} payload: {errors_text(exc, 'payload.')}") from None
    decision = outcome.decision
    return {"decision_id": decision.id, "outcome": str(decision.outcome),
            "job_id": decision.job_id}, outcome.started


def process_inbound(
    settings: Settings, body: Any, *, routing_key: str | None = None,
    now: datetime | None = None,
) -> InboundResult:
    """Handle one inbound message end to end (validate → inbox + effect in one
    transaction; the jobs it starts publish themselves after the commit). Malformed or
    unprocessable messages are dead-lettered; database/broker outages propagate (the
    message is not acked)."""
    try:
        envelope = parse_message(body)
    except Refused as exc:
        _dead_letter(settings, body, str(exc), routing_key=routing_key,
                     event_id=exc.event_id, type=exc.type)
        return InboundResult("dead_letter", exc.event_id, exc.type, reason=str(exc))
    when = now or utcnow()
    try:
        with transaction(settings.database_url, immediate=True) as session:
            if session.execute(select(InboxEvent.id).where(
                    InboxEvent.event_id == envelope.id)).first() is not None:
                return InboundResult("duplicate", envelope.id, envelope.type)
            inbox = InboxEvent(event_id=envelope.id, type=envelope.type,
                               source=envelope.source, occurred_at=envelope.occurred_at,
                               received_at=when, payload=envelope.payload)
            session.add(inbox)
            session.flush()  # a concurrent twin fails here on the unique event id
            outcome, jobs = _handle(session, settings, envelope, when)
            inbox.outcome = outcome
    except IntegrityError:
        return InboundResult("duplicate", envelope.id, envelope.type)
    except (Refused, DomainError, ValueError, LookupError) as exc:
        reason = exc.detail if isinstance(exc, DomainError) else str(exc)
        _dead_letter(settings, body, reason, routing_key=routing_key,
                     event_id=envelope.id, type=envelope.type)
        return InboundResult("dead_letter", envelope.id, envelope.type, reason=reason)
    return InboundResult("processed", envelope.id, envelope.type, outcome=outcome,
                         job_ids=jobs)


def consume_events(settings: Settings, *, queue_name: str = INBOUND_QUEUE,
                   **options: Any) -> int:
    """Consume inbound events (app.bus.inbound.consume: `max_messages`, `idle_timeout`,
    `on_result`, `should_stop`), handling each with `process_inbound`."""
    def handle(body: Any, routing_key: str | None) -> InboundResult:
        return process_inbound(settings, body, routing_key=routing_key)

    return consume(settings, handle, queue_name=queue_name, **options)
