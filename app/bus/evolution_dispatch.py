"""Publishing evolution tasks by name, with ids only, after the caller committed.

Owns the task names and queues of the strategy search. The coordinator (ask one
generation, finish the search) runs on `default`; trial evaluations run on `evaluate`,
so they spread over every worker that consumes it. A broker that is down is logged,
not raised: the search state is in the database and the reaper publishes again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings, get_settings

log = logging.getLogger(__name__)

ADVANCE_TASK = "clm.evolution.advance_search"
EVALUATE_TASK = "clm.evolution.evaluate_trial"
REAP_TASK = "clm.evolution.reap"
ADVANCE_QUEUE = "default"
EVALUATE_QUEUE = "evaluate"


@dataclass(frozen=True)
class EvolutionDispatch:
    task: str
    queue: str
    args: tuple[Any, ...]


def advance(search_id: str) -> EvolutionDispatch:
    return EvolutionDispatch(ADVANCE_TASK, ADVANCE_QUEUE, (search_id,))


def evaluate(candidate_id: int) -> EvolutionDispatch:
    return EvolutionDispatch(EVALUATE_TASK, EVALUATE_QUEUE, (int(candidate_id),))


_producers: dict[tuple[str, str | None], Any] = {}


def _producer(settings: Settings) -> Any:
    # One Celery app per broker (tests switch brokers); tasks are sent by name. Keyed by
    # URL: Settings holds dicts, so it cannot be an lru_cache key.
    key = (settings.broker_url, str(settings.var_dir))
    app = _producers.get(key)
    if app is None:
        from workers.celery_app import create_celery_app

        app = _producers[key] = create_celery_app(settings)
    return app


def publish(dispatches: Iterable[EvolutionDispatch], settings: Settings | None = None) -> int:
    """Send each dispatch; returns how many were published."""
    settings = settings or get_settings()
    sent = 0
    for d in dispatches:
        try:
            _producer(settings).send_task(
                d.task, args=list(d.args), queue=d.queue, routing_key=d.queue, retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5,
                              "interval_max": 1.0},
            )
            sent += 1
        except Exception as exc:  # the reaper republishes from the database
            log.warning("could not publish %s%s (%s: %s); the reaper will publish it again",
                        d.task, d.args, type(exc).__name__, exc)
    return sent
