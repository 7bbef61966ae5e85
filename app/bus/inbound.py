"""Inbound events: what may arrive on the bus, how a message is read, the consume loop.

Owns the inbound types and their queue (`INBOUND_TYPES`, `INBOUND_QUEUE`,
`inbound_queue`: the durable queue `clm.inbound` bound to every inbound type on the
events exchange), the message schemas (`Envelope`; payloads `DriftDetected`,
`PerformanceDegraded`, `RegimeChanged`, `TrainingRequested` = the body of POST
/clm/train; `performance.reported` carries a live report, validated by its handler),
`parse_message` (decode + validate; `Refused` naming what is wrong, which the handler
turns into a dead letter), `InboundResult` and `consume(settings, handler, ...)`: the
transport loop that hands each raw message to `handler(body, routing_key)` and acks it
once the handler returned (requeued when it raised). What an event *does* is
app.flows.inbound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from app.bus.relay import connection, exchange
from app.core.config import Settings
from app.core.domain import (
    REGIME_PATTERN,
    TIMEFRAMES,
    ModelType,
    Timeframe,
    TriggerReason,
    make_model_id,
)

__all__ = [
    "INBOUND_QUEUE",
    "INBOUND_TYPES",
    "DriftDetected",
    "Envelope",
    "Handler",
    "InboundResult",
    "ModelRef",
    "PerformanceDegraded",
    "Refused",
    "RegimeChanged",
    "TrainingRequested",
    "body_text",
    "consume",
    "errors_text",
    "inbound_queue",
    "parse_message",
]

INBOUND_TYPES = frozenset({
    "drift.detected", "performance.degraded", "training.requested", "regime.changed",
    "performance.reported",
})
INBOUND_QUEUE = "clm.inbound"
# A dead letter keeps at most this much of the body.
_MAX_BODY = 65_536


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
        """The model id named. A `model_id` is taken as given: recording the decision
        refuses one that cannot be a model id (NotFound, a dead letter)."""
        if self.model_id:
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


# -- reading a message -------------------------------------------------------------------
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


def errors_text(exc: ValidationError, prefix: str) -> str:
    """Pydantic errors as one line: `{prefix}{field}: {message}; ...`."""
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
        raise Refused(f"malformed envelope: {errors_text(exc, '')}", data) from None
    if envelope.type not in INBOUND_TYPES:
        raise Refused(f"unsupported event type {envelope.type!r}; handled: "
                      f"{', '.join(sorted(INBOUND_TYPES))}", data)
    return envelope


def body_text(body: Any) -> str:
    """The body as text for a dead letter (bytes decoded leniently), truncated."""
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

def inbound_queue(settings: Settings, name: str = INBOUND_QUEUE) -> Any:
    """The consumer's durable queue, bound to every inbound type on the exchange."""
    from kombu import Queue, binding

    ex = exchange(settings)
    return Queue(name, exchange=ex, bindings=[binding(ex, routing_key=t)
                                               for t in sorted(INBOUND_TYPES)],
                 durable=True, auto_delete=False)


# Handles one raw message body (with its routing key); raises to have it requeued.
Handler = Callable[[Any, str | None], InboundResult]


def consume(
    settings: Settings, handler: Handler, *, queue_name: str = INBOUND_QUEUE,
    max_messages: int | None = None, idle_timeout: float | None = None,
    on_result: Callable[[InboundResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Consume inbound events until `max_messages` were handled, nothing arrived for
    `idle_timeout` seconds, or `should_stop()` says so. Returns the number handled.

    Each message goes to `handler(body, routing_key)` (app.flows.inbound.process_inbound
    bound to the settings). A message is acked after the handler returned (its
    transaction committed, or it was dead-lettered); when the handler raises (a database
    or broker outage) it is requeued and the consumer stops with the error.
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
                result = handler(message.body, message.delivery_info.get("routing_key"))
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
