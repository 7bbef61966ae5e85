"""Relaying the outbox: one short transaction per batch until nothing is left.

The bus (app/bus/relay.py) publishes and marks one batch in a transaction it is given;
this use case owns the transactions, so a crash loses at most the marking of the batch
in flight (its events are published again, with the same ids). Called by the periodic
check (app.flows.checks.relay) and `clm events relay`.
"""

from __future__ import annotations

from collections.abc import Callable

from app.bus.relay import RelayResult, publisher, relay_batch
from app.core.config import Settings
from app.db import transaction

__all__ = ["RelayResult", "relay_outbox"]


def relay_outbox(
    settings: Settings,
    *,
    batch_size: int = 100,
    max_batches: int | None = None,
    before_publish: Callable[[list[str]], None] | None = None,
    after_publish: Callable[[list[str]], None] | None = None,
) -> RelayResult:
    """Publish unpublished outbox rows in id order, then mark them; repeat until none
    (or `max_batches`). See `app.bus.relay.relay_batch` for the hooks and failures."""
    result = RelayResult()
    with publisher(settings) as pub:
        while max_batches is None or result.batches < max_batches:
            with transaction(settings.database_url, immediate=True) as session:
                more = relay_batch(session, pub, result, batch_size=batch_size,
                                   before_publish=before_publish,
                                   after_publish=after_publish)
            if not more:
                break
    return result
