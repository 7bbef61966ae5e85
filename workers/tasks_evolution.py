"""Celery tasks of the strategy search: thin adapters over app.evolution.service, by id.

- `clm.evolution.advance_search(search_id)` (queue default): the coordinator — asks
  Optuna's NSGA-II for one generation and publishes one evaluation per trial, or
  finishes the search after the last generation.
- `clm.evolution.evaluate_trial(candidate_id)` (queue evaluate): one trial, walk-forward
  OOS; the trial completing a generation publishes the next advance.
- `clm.evolution.reap()` (beat): re-publishes trials whose lease expired (a killed
  worker), lost messages and searches that did not advance.

Each service call owns its transactions; tasks publish what it returns after commit.
Transient database errors are retried with backoff; a task redelivered after a worker
died is safe (claims are conditional updates, Optuna tells are idempotent).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import get_settings
from app.evolution import dispatch, service
from workers.celery_app import app

RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, DBAPIError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@app.task(bind=True, name=dispatch.ADVANCE_TASK, **RETRY)
def advance_search(self: Task, search_id: str) -> int:
    """Ask the next generation (or finish); returns how many tasks were published."""
    settings = get_settings()
    return dispatch.publish(service.run_advance(settings, search_id), settings)


@app.task(bind=True, name=dispatch.EVALUATE_TASK, **RETRY)
def evaluate_trial(self: Task, candidate_id: int) -> int:
    """Evaluate one candidate walk-forward; returns how many tasks were published."""
    settings = get_settings()
    return dispatch.publish(service.run_trial(settings, int(candidate_id)), settings)


@app.task(bind=True, name=dispatch.REAP_TASK, **RETRY)
def reap(self: Task) -> int:
    """Recover expired trials, lost messages and stalled searches."""
    settings = get_settings()
    return dispatch.publish(service.reap(settings).dispatches, settings)
