"""Celery tasks of the strategy search: thin adapters over app.flows.evolution, by id.

- `clm.evolution.advance_search(search_id)` (queue default): the coordinator — asks
  Optuna's NSGA-II for one generation and publishes one evaluation per trial, or
  finishes the search after the last generation.
- `clm.evolution.evaluate_trial(candidate_id)` (queue evaluate): one trial, walk-forward
  OOS; the trial completing a generation publishes the next advance.
- `clm.evolution.reap()` (beat): re-publishes trials whose lease expired (a killed
  worker), lost messages and searches that did not advance.

Each flow owns its transactions and publishes what they made necessary after each
commit; a task returns how many messages that was. Transient database errors are
retried with backoff; a task redelivered after a worker died is safe (claims are
conditional updates, Optuna tells are idempotent).

The worker's main process imports what a trial needs (Optuna, the trainers' libraries,
the feature and backtest code) and reads Optuna's schema revision before it forks its
pool: every pool child — and every replacement after `worker_max_tasks_per_child` —
starts with them loaded instead of paying ~0.5 s in its first trial. Nothing is *run* in
the parent (no database connection, no OpenMP region), so forking stays safe;
per-process state (database engines, Optuna storages) is created lazily in each child.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery import Task
from celery.signals import worker_init
from sqlalchemy.exc import DBAPIError, OperationalError

from app.bus import evolution_tasks
from app.core.config import get_settings
from app.flows import evolution
from app.services.evolution.search import optuna_schema_head
from workers.celery_app import app

log = logging.getLogger(__name__)

# Modules a trial imports lazily; optional ones (a trainer's library) may be missing.
PRELOAD = ("optuna", "optuna.samplers", "optuna.storages", "optuna.storages._rdb.models",
           "alembic.migration", "alembic.script", "pyarrow.parquet", "app.ml.evaluation",
           "app.ml.features", "app.ml.backtest", "app.ml.artifacts", "app.ml.trainers",
           "app.ml.evolution.evaluate", "app.analysis.overfitting", "app.analysis.selection",
           "xgboost", "app.ml.trainers.xgboost_trainer", "lightgbm",
           "app.ml.trainers.lightgbm_trainer")


def preload_trial_modules(names: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import what trials use (before the pool forks); returns what was imported."""
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("preload: %s not importable (%s)", name, exc)
            continue
        loaded.append(name)
    return loaded


@worker_init.connect
def _preload_before_fork(**_: object) -> None:
    preload_trial_modules()
    try:
        # Optuna's newest schema revision (reading its migration scripts): computed once
        # here instead of in every pool child's first storage start-up.
        optuna_schema_head()
    except Exception as exc:  # optional speed-up: the child computes it when needed
        log.debug("preload: optuna schema head not computed (%s)", exc)

RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, DBAPIError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@app.task(bind=True, name=evolution_tasks.ADVANCE_TASK, **RETRY)
def advance_search(self: Task, search_id: str) -> int:
    """Ask the next generation (or finish); returns how many tasks it published."""
    return len(evolution.run_advance(get_settings(), search_id))


@app.task(bind=True, name=evolution_tasks.EVALUATE_TASK, **RETRY)
def evaluate_trial(self: Task, candidate_id: int) -> int:
    """Evaluate one candidate walk-forward; returns how many tasks it published."""
    return len(evolution.run_trial(get_settings(), int(candidate_id)))


@app.task(bind=True, name=evolution_tasks.REAP_TASK, **RETRY)
def reap(self: Task) -> int:
    """Recover expired trials, lost messages and stalled searches; returns how many tasks
    it published again."""
    return len(evolution.reap(get_settings()).next_steps)
