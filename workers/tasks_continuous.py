"""Celery tasks of continuous learning: thin adapters over app/ services.

Beat runs a small fixed set of these (workers/schedule.py), never one entry per model:
- `clm.continuous.tick`: the scheduler tick (app.services.triggers.run_tick) — what is due, and
  arbitration of every pending trigger; jobs are enqueued after the commit.
- `clm.continuous.drift_check`: drift (app.services.checks.drift) and regime
  (app.services.checks.regime) checks of every
  tracked production model, one short transaction per model.
- `clm.continuous.performance_check`: paper performance of every tracked production model
  (app.services.checks.performance).
- `clm.events.relay`: publish the outbox (app.bus.events.relay_outbox); also kicked after
  every commit that emitted events.
Each decides what to do from the database, so a second beat started by mistake only
produces duplicate decisions that the unique keys refuse.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import get_settings
from app.core.timeutil import utcnow
from app.db import transaction
from workers.celery_app import app

log = logging.getLogger(__name__)

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


def _enqueue(job_ids: list[str]) -> None:
    from app.services.jobs import enqueue_job

    for job_id in job_ids:
        enqueue_job(job_id)


def run_tick_now() -> dict[str, Any]:
    """One scheduler tick in its own unit of work, then enqueue the jobs it started."""
    from app.services.triggers import run_tick

    settings = get_settings()
    with transaction(settings.database_url, immediate=True) as session:
        result = run_tick(session, settings, now=utcnow())
    _enqueue(result.job_ids)
    return result.to_dict()


def _each_production_model(check: Any, name: str) -> dict[str, Any]:
    """Run `check(session, settings, model_id=..., now=...)` per tracked production
    model, each in its own transaction (one model's bad data never blocks the others),
    then arbitrate what the checks requested and enqueue it."""
    from app.services.checks.performance import production_model_ids
    from app.services.triggers import arbitrate

    settings = get_settings()
    with transaction(settings.database_url) as session:
        model_ids = production_model_ids(session)
    checked, errors, requested = 0, 0, []
    for model_id in model_ids:
        try:
            with transaction(settings.database_url, immediate=True) as session:
                out = check(session, settings, model_id=model_id, now=utcnow())
            checked += 1
            if out and out.get("decision_id"):
                requested.append(model_id)
        except (OperationalError, DBAPIError):
            raise
        except Exception:
            errors += 1
            log.exception("%s of %s failed", name, model_id)
    job_ids: list[str] = []
    if requested:
        with transaction(settings.database_url, immediate=True) as session:
            job_ids = arbitrate(session, settings, now=utcnow(), model_ids=requested)
        _enqueue(job_ids)
    return {"checked": checked, "errors": errors, "requested": requested, "job_ids": job_ids}


def _market_checks(session: Any, settings: Any, *, model_id: str, now: Any) -> dict[str, Any]:
    from app.services.checks.drift import run_drift_check
    from app.services.checks.regime import run_regime_check
    from app.services.triggers import tracked_overrides

    drift = run_drift_check(session, settings, model_id=model_id, now=now,
                            thresholds=tracked_overrides(session, model_id)) or {}
    regime = run_regime_check(session, settings, model_id=model_id, now=now) or {}
    return {"decision_id": drift.get("decision_id") or regime.get("decision_id")}


@app.task(name="clm.continuous.tick", **RETRY)
def scheduler_tick() -> dict[str, Any]:
    """The scheduler tick (see app.services.triggers.run_tick)."""
    return run_tick_now()


@app.task(name="clm.continuous.drift_check", **RETRY)
def drift_check() -> dict[str, Any]:
    """Drift + regime checks of every tracked production model."""
    return _each_production_model(_market_checks, "drift/regime check")


@app.task(name="clm.continuous.performance_check", **RETRY)
def performance_check() -> dict[str, Any]:
    """Paper performance of every tracked production model."""
    from app.services.checks.performance import run_paper_check

    return _each_production_model(run_paper_check, "paper performance check")


@app.task(name="clm.events.relay", **RETRY)
def relay_events() -> dict[str, Any]:
    """Publish the outbox (app.bus.events.relay_outbox)."""
    from app.bus.events import relay_outbox

    result = relay_outbox(get_settings())
    return {"published": result.published, "skipped_locked": result.skipped_locked,
            "error": result.error}
