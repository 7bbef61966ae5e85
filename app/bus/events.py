"""The event bus: envelope, transactional outbox, relay/publisher, inbound consumer.

Outbound. `emit(session, type, payload)` writes an `event_outbox` row in the caller's
transaction, so the event exists iff the change it announces committed. After the commit
a relay is kicked (a Celery task, best effort); the relay also runs from beat. The relay
publishes unpublished rows in id order to a durable kombu *topic* exchange
(`settings.events_exchange`, routing key = event type, persistent messages, message id =
event id) and only then marks them published. A crash between publishing and marking
republishes the same rows later: delivery is at-least-once and a duplicate carries the
same id. One relay publishes at a time (a PostgreSQL advisory lock; SQLite's write lock),
which keeps events in commit order per model.

Envelope: {"id", "type", "occurred_at", "source", "payload"} (JSON).

Inbound. `clm events consume` binds its durable queue (`clm.inbound`) to the inbound
types. Each message is validated (envelope + a schema per type); a malformed one is
refused into `event_dead_letters` with the reason. A valid one is handled in one
transaction with its `event_inbox` row (unique event id), so a redelivery is a no-op.
Handled types: drift.detected, performance.degraded, regime.changed, training.requested
(payload = body of POST /clm/train) and performance.reported (a live performance report).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import (
    REGIME_PATTERN,
    TIMEFRAMES,
    ModelType,
    Timeframe,
    TriggerReason,
    make_model_id,
)
from app.core.timeutil import ensure_utc, utcnow
from app.db import on_commit
from app.models.continuous import DeadLetter, InboxEvent, OutboxEvent

log = logging.getLogger(__name__)

__all__ = [
    "INBOUND_QUEUE",
    "INBOUND_TYPES",
    "OUTBOUND_TYPES",
    "InboundResult",
    "RelayResult",
    "consume",
    "emit",
    "make_envelope",
    "process_inbound",
    "publisher",
    "relay_outbox",
    "set_relay_kicker",
]

SOURCE = "clm"
OUTBOUND_TYPES = frozenset({
    "training.started", "training.completed", "training.failed", "evaluation.completed",
    "model.promoted", "model.rolled_back", "candidate.created",
})
INBOUND_TYPES = frozenset({
    "drift.detected", "performance.degraded", "training.requested", "regime.changed",
    "performance.reported",
})
INBOUND_QUEUE = "clm.inbound"
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# Any 64-bit constant: the advisory lock that lets one relay publish at a time.
_RELAY_LOCK_KEY = 0x434C4D5F52454C41
_MAX_BODY = 65_536


# -- envelope and outbox ----------------------------------------------------------------
def new_event_id() -> str:
    return str(uuid.uuid4())


def make_envelope(type: str, payload: Mapping[str, Any], *, source: str = SOURCE,
                  event_id: str | None = None, occurred_at: datetime | None = None
                  ) -> dict[str, Any]:
    """An envelope dict as it travels on the bus (ISO 8601 UTC timestamp, Z suffix)."""
    when = ensure_utc(occurred_at or utcnow())
    return {"id": event_id or new_event_id(), "type": type,
            "occurred_at": when.isoformat().replace("+00:00", "Z"), "source": source,
            "payload": dict(payload)}


def emit(session: Session, type: str, payload: Mapping[str, Any], *, source: str = SOURCE,
         occurred_at: datetime | None = None, event_id: str | None = None) -> str:
    """Write an event to the outbox in the caller's transaction; returns its id.

    The row commits (or rolls back) with the change it announces; a relay publishes it
    after the commit. `payload` must be JSON-serializable (checked here, not at publish).
    """
    if not isinstance(type, str) or not _TYPE_RE.match(type) or len(type) > 80:
        raise ValueError(f"event type must be a dotted lower-case name, got {type!r}")
    try:
        body = json.loads(json.dumps(dict(payload), allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event payload of {type} is not JSON-serializable: {exc}") from exc
    row = OutboxEvent(event_id=event_id or new_event_id(), type=type,
                      occurred_at=ensure_utc(occurred_at or utcnow()), source=source,
                      payload=body)
    session.add(row)
    session.flush()
    _arm_kick(session)
    return row.event_id


def job_event(session: Session, type: str, job: Any, **extra: Any) -> str:
    """Emit a training-job event (training.started / .completed / .failed,
    evaluation.completed) describing `job` (an app.models.jobs.TrainingJob row)."""
    if isinstance(extra.get("evaluation"), Mapping):
        # The outcome, not the job's bookkeeping (timings, config) that rides along.
        keep = ("passed", "gate_passed", "metrics", "failed_criteria", "promotion_score",
                "champion")
        extra["evaluation"] = {k: extra["evaluation"].get(k) for k in keep
                               if k in extra["evaluation"]}
    payload = {
        "job_id": job.id, "model_id": job.model_id, "model_type": str(job.model_type),
        "symbol": job.symbol, "timeframe": job.timeframe,
        "trigger_reason": str(job.trigger_reason), "regime": job.regime,
        "status": str(job.status), **extra,
    }
    return emit(session, type, payload)


def version_event(session: Session, type: str, version: Any, *, actor: str | None,
                  reason: str | None, retired: Any = None) -> str:
    """Emit a model-version event (model.promoted / model.rolled_back) for `version` (an
    app.models.registry.ModelVersion row); `retired` is the version it replaced."""
    return emit(session, type, {
        "model_id": version.model_id, "version": version.version,
        "model_type": str(version.model_type), "symbol": version.symbol,
        "timeframe": version.timeframe, "regime": version.regime,
        "status": str(version.status), "retired": retired.version if retired else None,
        "actor": actor, "reason": reason, "sharpe": version.sharpe,
    })


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return ensure_utc(value).isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


# After-commit relay kick. Best effort: the beat relay is the guarantee.
RELAY_TASK = "clm.events.relay"
_KICK_KEY = "clm_outbox_kick"
_kicker: Callable[[], None] | None = None
_kick_configured = False


def _celery_kick() -> None:
    from app.bus.producer import TaskMessage, send

    send([TaskMessage(RELAY_TASK, "default")], retry=False)


def set_relay_kicker(kicker: Callable[[], None] | None) -> None:
    """Replace what runs after a commit that emitted events (None: nothing; tests that
    relay by hand use it so no relay task is published to a broker nobody consumes)."""
    global _kicker, _kick_configured
    _kicker = kicker
    _kick_configured = True


def _kick() -> None:
    kicker = _kicker if _kick_configured else _celery_kick
    if kicker is not None:
        kicker()


def _arm_kick(session: Session) -> None:
    # Once per transaction, however many events it emitted; dropped on rollback.
    on_commit(session, _kick, key=_KICK_KEY)


# -- publishing -------------------------------------------------------------------------
def exchange(settings: Settings) -> Any:
    """The durable topic exchange events travel on."""
    from kombu import Exchange

    return Exchange(settings.events_exchange, type="topic", durable=True)


def connection(settings: Settings) -> Any:
    from kombu import Connection

    from app.bus.broker import transport_options

    return Connection(settings.broker_url, transport_options=transport_options(settings),
                      connect_timeout=5)


class Publisher:
    """Publishes envelopes to the events exchange over one connection."""

    def __init__(self, settings: Settings, conn: Any) -> None:
        from kombu import Producer

        self.exchange = exchange(settings)
        self.producer = Producer(conn.channel(), exchange=self.exchange)
        self.exchange(self.producer.channel).declare()
        # kombu's filesystem transport orders a queue by file name, which starts with the
        # publishing millisecond: two events in the same millisecond could swap. The
        # embedded broker therefore publishes at most one event per millisecond.
        self._one_per_ms = settings.is_embedded_broker
        self._last_ms = -1

    @staticmethod
    def _now_ms() -> int:
        return round(time.monotonic() * 1000)  # the transport's own clock and rounding

    def publish(self, envelope: Mapping[str, Any]) -> None:
        if self._one_per_ms:
            # Read after the previous publish finished, so its file name's millisecond is
            # at most _last_ms.
            while self._now_ms() <= self._last_ms:
                time.sleep(0.0002)
        self.producer.publish(
            dict(envelope), routing_key=str(envelope["type"]), serializer="json",
            delivery_mode=2, message_id=str(envelope["id"]),
            headers={"event_id": str(envelope["id"]), "event_type": str(envelope["type"])},
            retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                      "interval_step": 0.5, "interval_max": 2},
        )
        if self._one_per_ms:
            self._last_ms = self._now_ms()


@contextmanager
def publisher(settings: Settings) -> Iterator[Publisher]:
    """A Publisher on a fresh broker connection (closed afterwards)."""
    with connection(settings) as conn:
        conn.ensure_connection(max_retries=3)
        yield Publisher(settings, conn)


@dataclass
class RelayResult:
    published: int = 0
    batches: int = 0
    skipped_locked: bool = False
    error: str | None = None
    event_ids: list[str] = field(default_factory=list)


def _take_relay_lock(session: Session) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                    {"k": _RELAY_LOCK_KEY - (1 << 63)}).scalar())
    return True  # SQLite: BEGIN IMMEDIATE already made us the only writer


def relay_outbox(
    settings: Settings,
    *,
    batch_size: int = 100,
    max_batches: int | None = None,
    before_publish: Callable[[list[str]], None] | None = None,
    after_publish: Callable[[list[str]], None] | None = None,
) -> RelayResult:
    """Publish unpublished outbox rows in id order, then mark them; repeat until none.

    `before_publish(event_ids)` / `after_publish(event_ids)` run around publishing a batch,
    before it is marked (instrumentation; tests crash the relay there to prove nothing is
    lost and duplicates keep their id). A broker
    failure stops the relay after marking what was published; the error is kept on the
    row and the next relay retries it.
    """
    from app.db import transaction

    result = RelayResult()
    with publisher(settings) as pub:
        while max_batches is None or result.batches < max_batches:
            with transaction(settings.database_url, immediate=True) as session:
                if not _take_relay_lock(session):
                    result.skipped_locked = True
                    break
                rows = list(session.scalars(
                    select(OutboxEvent).where(OutboxEvent.published_at.is_(None))
                    .order_by(OutboxEvent.id).limit(batch_size)
                ))
                if not rows:
                    break
                if before_publish is not None:
                    before_publish([r.event_id for r in rows])
                done: list[OutboxEvent] = []
                failed: OutboxEvent | None = None
                for row in rows:
                    try:
                        pub.publish(row.envelope())
                    except Exception as exc:  # recorded, retried by the next relay
                        failed = row
                        result.error = f"{type(exc).__name__}: {exc}"
                        break
                    done.append(row)
                if after_publish is not None and done:
                    after_publish([r.event_id for r in done])
                now = utcnow()
                for row in done:
                    row.published_at = now
                    row.publish_attempts = (row.publish_attempts or 0) + 1
                    result.event_ids.append(row.event_id)
                if failed is not None:
                    failed.publish_attempts = (failed.publish_attempts or 0) + 1
                    failed.last_error = result.error
                result.published += len(done)
                result.batches += 1
            if failed is not None or len(rows) < batch_size:
                break
    return result


def list_events(
    session: Session, *, type: str | None = None, since: datetime | None = None,
    published: bool | None = None, before_id: int | None = None, limit: int = 50,
) -> list[OutboxEvent]:
    """Outbox events newest first (keyset `before_id`); `limit + 1` rows fetched."""
    stmt = select(OutboxEvent)
    if type:
        stmt = stmt.where(OutboxEvent.type == type)
    if since is not None:
        stmt = stmt.where(OutboxEvent.occurred_at >= since)
    if published is True:
        stmt = stmt.where(OutboxEvent.published_at.is_not(None))
    elif published is False:
        stmt = stmt.where(OutboxEvent.published_at.is_(None))
    if before_id is not None:
        stmt = stmt.where(OutboxEvent.id < before_id)
    return list(session.scalars(stmt.order_by(OutboxEvent.id.desc()).limit(limit + 1)))


# -- inbound schemas --------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Envelope(BaseModel):
    """An inbound envelope (unknown top-level keys are ignored for forward compatibility)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=80)
    occurred_at: datetime
    source: str = Field(min_length=1, max_length=80)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must include a timezone (e.g. 2025-01-01T00:00:00Z)")
        return value

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable")
        return value


class ModelRef(_Strict):
    """Which model an event is about: `model_id`, or model_type + symbol + timeframe."""

    model_id: str | None = Field(None, max_length=120)
    model_type: ModelType | None = None
    symbol: str | None = Field(None, max_length=30)
    timeframe: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    def resolved_id(self) -> str:
        if self.model_id:
            from app.services.triggers import parse_model_id

            parse_model_id(self.model_id)
            return self.model_id
        if self.model_type is None or not self.symbol or not self.timeframe:
            raise ValueError("give model_id, or model_type + symbol + timeframe")
        if self.timeframe not in TIMEFRAMES:
            raise ValueError(f"timeframe must be one of {', '.join(TIMEFRAMES)}")
        return make_model_id(self.model_type.value, self.symbol, self.timeframe)


class DriftDetected(ModelRef):
    psi: float | None = None
    features: list[str] | None = None


class PerformanceDegraded(ModelRef):
    sharpe: float | None = None
    trades: int | None = Field(None, ge=0)


class RegimeChanged(ModelRef):
    regime: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")


class TrainingRequested(_Strict):
    """The body of POST /clm/train."""

    model_type: ModelType
    symbol: str = Field(min_length=1, max_length=30)
    timeframe: Timeframe
    dataset_span_days: StrictInt = Field(ge=1, le=3650)
    params: dict[str, Any] = Field(default_factory=dict)
    trigger_reason: TriggerReason = TriggerReason.MANUAL
    regime: str | None = Field(None, pattern=REGIME_PATTERN)
    strategy: dict[str, Any] | None = None


# -- inbound processing -----------------------------------------------------------------
@dataclass
class InboundResult:
    """What happened to one inbound message."""

    status: str  # processed | duplicate | dead_letter
    event_id: str | None = None
    type: str | None = None
    reason: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)


class Refused(ValueError):
    """A message that can never be handled (goes to the dead-letter record); carries the
    id and type when the envelope had readable ones, so the dead letter names them."""

    def __init__(self, reason: str, data: Any = None) -> None:
        super().__init__(reason)
        raw = data if isinstance(data, dict) else {}
        self.event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        self.type = raw.get("type") if isinstance(raw.get("type"), str) else None


def _errors_text(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{prefix}{loc}: {err.get('msg')}" if loc else f"{prefix}{err.get('msg')}")
    return "; ".join(parts)


def parse_message(body: Any) -> Envelope:
    """Decode and validate an inbound message body; Refused naming what is wrong."""
    data = body
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            data = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("body is not UTF-8 text") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise Refused(f"body is not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise Refused(f"envelope must be a JSON object, got {type(data).__name__}")
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise Refused(f"malformed envelope: {_errors_text(exc, '')}", data) from None
    if envelope.type not in INBOUND_TYPES:
        raise Refused(f"unsupported event type {envelope.type!r}; handled: "
                      f"{', '.join(sorted(INBOUND_TYPES))}", data)
    return envelope


def _body_text(body: Any) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body).decode("utf-8", errors="replace")
    elif isinstance(body, str):
        raw = body
    else:
        try:
            raw = json.dumps(body, default=str)
        except (TypeError, ValueError):
            raw = repr(body)
    return raw[:_MAX_BODY]


def _dead_letter(settings: Settings, body: Any, reason: str, *, routing_key: str | None,
                 event_id: str | None = None, type: str | None = None) -> None:
    from app.db import transaction

    with transaction(settings.database_url) as session:
        session.add(DeadLetter(event_id=(event_id or None) and event_id[:64],
                               type=(type or None) and type[:80],
                               routing_key=(routing_key or None) and routing_key[:200],
                               reason=reason, body=_body_text(body), received_at=utcnow()))


def _handle(session: Session, settings: Settings, envelope: Envelope, now: datetime
            ) -> tuple[dict[str, Any], list[str]]:
    """Act on a validated event inside the inbox transaction; returns (outcome, job ids)."""
    from app.services.triggers import arbitrate, record_request

    payload = envelope.payload
    kind = envelope.type
    requester = f"event:{envelope.source}"[:120]
    key = f"event:{envelope.id}"
    try:
        if kind == "performance.reported":
            from app.services.checks.performance import LiveReport, record_live_report

            body = LiveReport.model_validate(payload)
            result = record_live_report(session, settings, body, now=now,
                                        reported_by=requester, event_id=envelope.id)
            model_ids = [body.model_id] if result.get("decision") else []
            jobs = arbitrate(session, settings, now=now, model_ids=model_ids)
            return {"performance_report_id": result["report"]["id"],
                    "degraded": result["rolling"]["degraded"],
                    "rollback": result.get("rollback")}, jobs
        if kind == "training.requested":
            req = TrainingRequested.model_validate(payload)
            model_id = make_model_id(req.model_type.value, req.symbol, req.timeframe.value)
            decision = record_request(
                session, settings, model_id=model_id, reason=req.trigger_reason.value,
                dedupe_key=key, source="event", now=now, requested_by=requester,
                params=req.params, dataset_span_days=req.dataset_span_days,
                regime=req.regime,
                details={"event_id": envelope.id,
                         **({"strategy": req.strategy} if req.strategy else {})},
            )
        else:
            schema: type[ModelRef] = {"drift.detected": DriftDetected,
                                      "performance.degraded": PerformanceDegraded,
                                      "regime.changed": RegimeChanged}[kind]
            ref = schema.model_validate(payload)
            model_id = ref.resolved_id()
            reason = {"drift.detected": "drift_detected",
                      "performance.degraded": "performance_degraded",
                      "regime.changed": "regime_change"}[kind]
            decision = record_request(
                session, settings, model_id=model_id, reason=reason, dedupe_key=key,
                source="event", now=now, requested_by=requester,
                regime=getattr(ref, "regime", None),
                details={"event_id": envelope.id,
                         **ref.model_dump(mode="json", exclude_none=True)},
            )
    except ValidationError as exc:
        raise Refused(f"malformed {kind} payload: {_errors_text(exc, 'payload.')}") from None
    jobs = arbitrate(session, settings, now=now, model_ids=[model_id])
    session.refresh(decision)
    return {"decision_id": decision.id, "outcome": str(decision.outcome),
            "job_id": decision.job_id}, jobs


def process_inbound(
    settings: Settings, body: Any, *, routing_key: str | None = None,
    enqueue: Callable[[str], None] | None = None, now: datetime | None = None,
) -> InboundResult:
    """Handle one inbound message end to end (validate → inbox + effect in one
    transaction → enqueue jobs after commit). Malformed or unprocessable messages are
    dead-lettered; database/broker outages propagate (the message is not acked)."""
    from app.core.errors import DomainError
    from app.db import transaction

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
    for job_id in jobs:
        (enqueue or _enqueue_job)(job_id)
    return InboundResult("processed", envelope.id, envelope.type, outcome=outcome,
                         job_ids=jobs)


def _enqueue_job(job_id: str) -> None:
    from app.services.jobs import enqueue_job

    enqueue_job(job_id)


def inbound_queue(settings: Settings, name: str = INBOUND_QUEUE) -> Any:
    """The consumer's durable queue, bound to every inbound type on the exchange."""
    from kombu import Queue, binding

    ex = exchange(settings)
    return Queue(name, exchange=ex, bindings=[binding(ex, routing_key=t)
                                               for t in sorted(INBOUND_TYPES)],
                 durable=True, auto_delete=False)


def consume(
    settings: Settings, *, queue_name: str = INBOUND_QUEUE, max_messages: int | None = None,
    idle_timeout: float | None = None, on_result: Callable[[InboundResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Consume inbound events until `max_messages` were handled, nothing arrived for
    `idle_timeout` seconds, or `should_stop()` says so. Returns the number handled.

    A message is acked after its transaction committed (or it was dead-lettered); on a
    database or broker outage it is requeued and the consumer stops with the error.
    """
    handled = 0
    with connection(settings) as conn:
        conn.ensure_connection(max_retries=3)
        queue = inbound_queue(settings, queue_name)

        def on_message(message: Any) -> None:
            # Raw bodies (no kombu decoding): a body that is not JSON must reach the
            # dead-letter record, not die in the decoder.
            nonlocal handled
            try:
                result = process_inbound(settings, message.body,
                                         routing_key=message.delivery_info.get("routing_key"))
            except Exception:
                message.requeue()
                raise
            message.ack()
            handled += 1
            if on_result is not None:
                on_result(result)

        with conn.Consumer(queue, on_message=on_message, prefetch_count=1):
            idle = 0.0
            while max_messages is None or handled < max_messages:
                if should_stop is not None and should_stop():
                    break
                try:
                    conn.drain_events(timeout=1.0)
                    idle = 0.0
                except TimeoutError:
                    idle += 1.0
                    if idle_timeout is not None and idle >= idle_timeout:
                        break
    return handled
