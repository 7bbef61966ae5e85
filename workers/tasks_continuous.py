"""Celery tasks of continuous learning: thin adapters over app.flows.checks.

Beat runs a small fixed set of these (workers/schedule.py), never one entry per model:
- `clm.continuous.tick`: the scheduler tick (app.flows.checks.tick) — what is due, and
  arbitration of every pending trigger; the jobs it starts publish themselves after
  the commit.
- `clm.continuous.drift_check`: drift and regime checks of every tracked production
  model (app.flows.checks.drift_check), one short transaction per model.
- `clm.continuous.performance_check`: paper performance of every tracked production model
  (app.flows.checks.performance_check).
- `clm.events.relay`: publish the outbox (app.flows.checks.relay); also kicked after
  every commit that emitted events.
Each decides what to do from the database, so a second beat started by mistake only
produces duplicate decisions that the unique keys refuse.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import get_settings
from app.flows import checks
from workers.celery_app import app

# Periodic tasks: retry transient database trouble a little, never pile up (expires is
# set per beat entry), ack late like every CLM task.
RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, DBAPIError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 3,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@app.task(name="clm.continuous.tick", **RETRY)
def scheduler_tick() -> dict[str, Any]:
    """The scheduler tick (see app.flows.checks.run_tick)."""
    return checks.tick(get_settings())


@app.task(name="clm.continuous.drift_check", **RETRY)
def drift_check() -> dict[str, Any]:
    """Drift + regime checks of every tracked production model."""
    return checks.drift_check(get_settings())


@app.task(name="clm.continuous.performance_check", **RETRY)
def performance_check() -> dict[str, Any]:
    """Paper performance of every tracked production model."""
    return checks.performance_check(get_settings())


@app.task(name="clm.events.relay", **RETRY)
def relay_events() -> dict[str, Any]:
    """Publish the outbox (app.flows.outbox.relay_outbox)."""
    return checks.relay(get_settings())
