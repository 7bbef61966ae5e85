"""The outbox relay: publishing outbox rows to the events exchange, in order.

Owns the exchange (`exchange`: a durable kombu *topic* exchange,
`settings.events_exchange`, routing key = event type), broker connections
(`connection`), `Publisher` / `publisher` (persistent messages, message id = event id)
and `relay_batch`: unpublished rows are published in id order and only then marked
published, in the caller's transaction (app.flows.outbox.relay_outbox runs the batches).
A crash between publishing and marking republishes the same rows later:
delivery is at-least-once and a duplicate carries the same id. One relay publishes at a
time (a PostgreSQL advisory lock; SQLite's write lock), which keeps events in commit
order per model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.bus.broker import transport_options
from app.core.config import Settings
from app.core.timeutil import utcnow
from app.models.continuous import OutboxEvent

__all__ = ["Publisher", "RelayResult", "connection", "exchange", "publisher", "relay_batch"]

# Any 64-bit constant: the advisory lock that lets one relay publish at a time.
_RELAY_LOCK_KEY = 0x434C4D5F52454C41


def exchange(settings: Settings) -> Any:
    """The durable topic exchange events travel on."""
    from kombu import Exchange

    return Exchange(settings.events_exchange, type="topic", durable=True)


def connection(settings: Settings) -> Any:
    """A kombu connection to the configured broker (not yet connected)."""
    from kombu import Connection

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
    """What one relay run published (and the error that stopped it, if any)."""

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


def relay_batch(
    session: Session,
    pub: Publisher,
    result: RelayResult,
    *,
    batch_size: int = 100,
    before_publish: Callable[[list[str]], None] | None = None,
    after_publish: Callable[[list[str]], None] | None = None,
) -> bool:
    """Publish up to `batch_size` unpublished outbox rows in id order and mark them, in
    the caller's transaction (open it with `immediate=True`; it holds the relay lock
    while it publishes). Adds to `result`; returns True when another batch may follow.

    `before_publish(event_ids)` / `after_publish(event_ids)` run around publishing the
    batch, before it is marked (instrumentation; tests crash the relay there to prove
    nothing is lost and duplicates keep their id). A broker failure stops the batch
    after marking what was published; the error is kept on the row and the next relay
    retries it.
    """
    if not _take_relay_lock(session):
        result.skipped_locked = True
        return False
    rows = list(session.scalars(
        select(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        .order_by(OutboxEvent.id).limit(batch_size)
    ))
    if not rows:
        return False
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
    return failed is None and len(rows) == batch_size
