"""The periodic checks of continuous learning as use cases, each opening its transactions.

Owns what beat runs (workers/tasks_continuous.py only calls these and returns the
summary), a small fixed set whatever the number of tracked models:
- `tick`: the scheduler tick — `run_tick` records the periodic slots that are due
  (app.services.triggers.record_due) and arbitrates everything pending through
  app.flows.training.arbitrate, in one transaction;
- `drift_check`: drift (app.services.checks.drift) and regime (app.services.checks.regime)
  checks of every tracked production model;
- `performance_check`: paper performance of every tracked production model
  (app.services.checks.performance); a model judged degraded gets strategy variants
  proposed (app.services.evolution), in the same transaction as its report;
- `relay`: publish the outbox (app.flows.outbox.relay_outbox).
The tick also runs live scoring (app.flows.live_scoring.score_live) after arbitration, so
every scored version has the bars stored before a tick by the end of that tick, and then
guarded deployment on those records (app.flows.deployment.guard_deployments).
The model checks run one short transaction per model (one model's bad data never blocks
the others), then arbitrate what they requested in one more. Each decides from the
database what is due, so a second beat started by mistake only produces duplicate
decisions that the unique keys refuse. Jobs publish themselves after commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows import training
from app.flows.deployment import guard_deployments
from app.flows.evolution import propose_variants_on_degraded
from app.flows.live_scoring import score_live
from app.flows.outbox import relay_outbox
from app.services import triggers
from app.services.checks.drift import run_drift_check
from app.services.checks.performance import run_paper_check
from app.services.checks.regime import run_regime_check
from app.services.production import production_model_ids

__all__ = ["drift_check", "market_checks", "paper_check", "performance_check", "relay",
           "run_tick", "tick"]

log = logging.getLogger(__name__)

# A check of one model: (session, settings, model_id=..., now=...) -> summary or None.
ModelCheck = Callable[..., dict[str, Any] | None]


def run_tick(session: Session, settings: Settings, *, now: datetime) -> triggers.TickResult:
    """One scheduler tick at `now` inside the caller's transaction (pass a frozen clock in
    tests): the due periodic slots become pending decisions, then everything pending is
    arbitrated. `job_ids` names the jobs started (each publishes itself after commit)."""
    result = triggers.record_due(session, settings, now=now)
    t0 = time.perf_counter()
    result.job_ids = training.arbitrate(session, settings, now=result.now)
    result.seconds["arbitrate"] = time.perf_counter() - t0
    return result


def tick(settings: Settings) -> dict[str, Any]:
    """The scheduler tick in its own unit of work, then live scoring of the bars stored
    since the last tick (app.flows.live_scoring), then guarded deployment on the records
    it grew (app.flows.deployment: shadow exits, auto-rollback, Thompson allocation);
    returns its report."""
    with transaction(settings.database_url, immediate=True) as session:
        result = run_tick(session, settings, now=utcnow())
    live = score_live(settings)
    return {**result.to_dict(), "live": live, "deployment": guard_deployments(settings)}


def market_checks(session: Session, settings: Settings, *, model_id: str, now: datetime
                  ) -> dict[str, Any]:
    """Drift then regime check of one production model (the tracked row's thresholds)."""
    drift = run_drift_check(session, settings, model_id=model_id, now=now,
                            thresholds=triggers.tracked_overrides(session, model_id)) or {}
    regime = run_regime_check(session, settings, model_id=model_id, now=now) or {}
    return {"decision_id": drift.get("decision_id") or regime.get("decision_id")}


def paper_check(session: Session, settings: Settings, *, model_id: str, now: datetime
                ) -> dict[str, Any] | None:
    """Paper performance of one production model; when it was judged degraded (a decision
    was recorded), strategy variants are proposed in the same transaction."""
    report = run_paper_check(session, settings, model_id=model_id, now=now)
    if report and report.get("decision_id"):
        propose_variants_on_degraded(session, settings, model_id, now=now)
    return report


def each_production_model(settings: Settings, check: ModelCheck, name: str
                          ) -> dict[str, Any]:
    """Run `check` per tracked production model, each in its own transaction, then
    arbitrate what the checks requested. Database trouble propagates (the task retries);
    anything else is logged and counted, never blocking the other models."""
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
            job_ids = training.arbitrate(session, settings, now=utcnow(), model_ids=requested)
    return {"checked": checked, "errors": errors, "requested": requested, "job_ids": job_ids}


def drift_check(settings: Settings) -> dict[str, Any]:
    """Drift + regime checks of every tracked production model."""
    return each_production_model(settings, market_checks, "drift/regime check")


def performance_check(settings: Settings) -> dict[str, Any]:
    """Paper performance of every tracked production model."""
    return each_production_model(settings, paper_check, "paper performance check")


def relay(settings: Settings) -> dict[str, Any]:
    """Publish the outbox now; returns what was published."""
    result = relay_outbox(settings)
    return {"published": result.published, "skipped_locked": result.skipped_locked,
            "error": result.error}
