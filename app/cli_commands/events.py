"""`clm events`: the inbound event consumer (and a one-shot outbox relay).

`clm events consume` binds the durable queue `clm.inbound` to the inbound event types on
the exchange `settings.events_exchange` (default clm.events) and handles each message
once by event id; malformed ones go to the dead-letter record. Stops cleanly on
SIGINT/SIGTERM after the message in hand.
"""

from __future__ import annotations

import json
import signal
import sys
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
    from app.config import get_settings
    from app.events import INBOUND_QUEUE, INBOUND_TYPES, InboundResult
    from app.events import consume as run_consumer
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
    handled = run_consumer(settings, queue_name=name, max_messages=max_messages,
                           idle_timeout=idle_timeout, on_result=report,
                           should_stop=lambda: stop["now"])
    click.echo(f"handled {handled} message(s)", err=True)


@events.command("relay")
def relay() -> None:
    """Publish every unpublished outbox event now (beat does this periodically)."""
    from app.config import get_settings
    from app.events import relay_outbox

    result = relay_outbox(get_settings())
    click.echo(json.dumps({"published": result.published, "error": result.error}))
    if result.error:
        sys.exit(1)
