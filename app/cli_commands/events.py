"""`clm events`: the inbound event consumer (and a one-shot outbox relay).

`clm events consume` binds the durable queue `clm.inbound` to the inbound event types on
the exchange `settings.events_exchange` (default clm.events) and handles each message
once by event id; malformed ones go to the dead-letter record. Stops cleanly on
SIGINT/SIGTERM after the message in hand. A database or broker outage is waited out
(retry with backoff), not a reason to exit; the loop touches `var/events-consumer.alive`
for the liveness probe.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click


@click.group()
def events() -> None:
    """Event bus: consume inbound events, relay the outbox."""


@events.command("consume")
@click.option("--queue", "queue_name", default=None, help="queue name (default clm.inbound)")
@click.option("--max-messages", type=click.IntRange(min=1), default=None,
              help="stop after handling this many messages")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=None,
              help="stop when nothing arrived for this many seconds")
def consume(queue_name: str | None, max_messages: int | None,
            idle_timeout: float | None) -> None:
    """Consume drift.detected, performance.degraded, training.requested, regime.changed
    and performance.reported events (idempotent by event id)."""
    # lazy: start-up (`clm --help` must not import the bus, the flows and the ML stack)
    from app.bus.inbound import INBOUND_QUEUE, INBOUND_TYPES, InboundResult
    from app.core.config import get_settings
    from app.flows.inbound import consume_events
    from app.migrate import assert_at_head

    settings = get_settings()
    assert_at_head(settings.database_url)
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def report(result: InboundResult) -> None:
        click.echo(json.dumps({"status": result.status, "id": result.event_id,
                               "type": result.type, "reason": result.reason,
                               "job_ids": result.job_ids}), nl=True)
        sys.stdout.flush()

    name = queue_name or INBOUND_QUEUE
    click.echo(f"consuming {', '.join(sorted(INBOUND_TYPES))} from exchange "
               f"{settings.events_exchange} on queue {name}", err=True)
    heartbeat = Heartbeat(settings.var_dir / "events-consumer.alive")

    def should_stop() -> bool:
        heartbeat.beat()
        return stop["now"]

    handled = 0
    delay = 1.0
    while True:
        try:
            handled += consume_events(
                settings, queue_name=name,
                max_messages=None if max_messages is None else max_messages - handled,
                idle_timeout=idle_timeout, on_result=report, should_stop=should_stop)
            break
        except Exception as exc:
            # A database or broker outage: the message in hand was requeued. Wait and
            # consume again rather than exit (a Procfile runner would stop every process).
            if not _transient(exc) or stop["now"]:
                raise
            click.echo(f"consumer: {type(exc).__name__}: {exc}; retrying in {delay:.0f}s",
                       err=True)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not stop["now"]:
                heartbeat.beat()  # alive, waiting out the outage
                time.sleep(0.2)
            if stop["now"]:
                break
            delay = min(delay * 2, 30.0)
    click.echo(f"handled {handled} message(s)", err=True)


def _transient(exc: BaseException) -> bool:
    """Outages worth waiting out: the database or the broker not answering."""
    from kombu.exceptions import OperationalError as BrokerOperationalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    kinds: tuple[type[BaseException], ...] = (
        OperationalError, BrokerOperationalError, ConnectionError, TimeoutError)
    try:
        import redis.exceptions

        kinds += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    except ImportError:  # pragma: no cover - redis is a dependency of celery[redis]
        pass
    return isinstance(exc, kinds)


class Heartbeat:
    """Touches a file at most every few seconds while the consume loop turns: a liveness
    probe (`python -m app.liveness events`) checks that its age is small."""

    def __init__(self, path: Path, every_s: float = 5.0) -> None:
        self.path = path
        self.every_s = every_s
        self._last = 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError:
            pass  # a liveness hint, never a reason to stop consuming


@events.command("relay")
def relay() -> None:
    """Publish every unpublished outbox event now (beat does this periodically)."""
    # lazy: start-up
    from app.core.config import get_settings
    from app.flows.outbox import relay_outbox

    result = relay_outbox(get_settings())
    click.echo(json.dumps({"published": result.published, "error": result.error}))
    if result.error:
        sys.exit(1)
