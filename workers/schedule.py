"""Celery beat schedule as data: a small fixed set of periodic tasks (not one per model).

Each entry's task decides in the database what is due, so a second beat started by
mistake does no harm.
"""

from __future__ import annotations

from typing import Any

from app.core.config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries are added by the owners of the periodic tasks (reaper, tick, checks, relay)."""
    return {
        # Re-publishes work whose lease or dispatch deadline passed; fails jobs whose
        # attempts are spent. Expires so a backlog of ticks never piles up.
        "clm-jobs-reap": {
            "task": "clm.jobs.reap",
            "schedule": settings.reaper_interval_s,
            "options": {"queue": "default", "expires": max(settings.reaper_interval_s, 1.0)},
        },
        # Continuous learning (app.flows.checks: tick, drift/regime, performance, relay): a
        # fixed set whatever the number of tracked models; each reads the database to
        # decide what is due.
        "clm-scheduler-tick": {
            "task": "clm.continuous.tick",
            "schedule": settings.scheduler_tick_s,
            "options": {"queue": "default", "expires": max(settings.scheduler_tick_s, 1.0)},
        },
        "clm-drift-check": {
            "task": "clm.continuous.drift_check",
            "schedule": settings.drift_check_interval_s,
            "options": {"queue": "default", "expires": max(settings.drift_check_interval_s, 1.0)},
        },
        "clm-performance-check": {
            "task": "clm.continuous.performance_check",
            "schedule": settings.performance_check_interval_s,
            "options": {"queue": "default",
                        "expires": max(settings.performance_check_interval_s, 1.0)},
        },
        # Strategy search (issue 7): re-publishes trials whose lease expired (killed
        # worker), lost messages and searches that did not advance.
        "clm-evolution-reap": {
            "task": "clm.evolution.reap",
            "schedule": settings.reaper_interval_s,
            "options": {"queue": "default", "expires": max(settings.reaper_interval_s, 1.0)},
        },
        # Market data feeds (app.flows.feeds): one entry whatever the number of feeds;
        # each feed's own interval decides when it is due, its lease who polls it.
        "clm-feeds-poll": {
            "task": "clm.feeds.poll",
            "schedule": settings.feed_tick_s,
            "options": {"queue": "default", "expires": max(settings.feed_tick_s, 1.0)},
        },
        "clm-outbox-relay": {
            "task": "clm.events.relay",
            "schedule": settings.outbox_relay_interval_s,
            "options": {"queue": "default",
                        "expires": max(settings.outbox_relay_interval_s, 1.0)},
        },
    }
