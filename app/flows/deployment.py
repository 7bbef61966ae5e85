"""Guarded deployment as a use case, run by every scheduler tick after live scoring.

Owns `guard_deployments`: in short transactions, (1) the shadow exit rule over every
shadow version with a live record (app.services.deployment.shadow_exits), (2) the
auto-rollback guard of each production model (app.services.deployment.guard_production;
a model left degraded gets a `performance_degraded` retrain requested through
app.flows.training.request_training and arbitrated), (3) a Thompson redraw of every
model in `thompson` allocation mode (app.services.allocation.redraw). One model's
trouble is logged and counted, never blocking the others; database trouble propagates.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows import training
from app.models.allocation import Allocation
from app.services import allocation, deployment
from app.services.production import production_model_ids
from app.services.triggers import slot_key

__all__ = ["guard_deployments"]

log = logging.getLogger(__name__)


def _guard_one(settings: Settings, model_id: str, now: datetime) -> dict[str, Any]:
    with transaction(settings.database_url, immediate=True) as session:
        verdict = deployment.guard_production(session, settings, model_id, now=now)
        if verdict.get("retrain"):
            outcome = training.request_training(
                session, settings, model_id=model_id, reason="performance_degraded",
                source="auto_rollback_guard", requested_by=deployment.ACTOR,
                decide="arbitrate",
                dedupe_key=f"live-guard:{verdict['version']}:"
                           f"{slot_key(now, settings.auto_rollback_cooldown_hours)}",
                details={"figures": verdict.get("figures"), "reason": verdict.get("reason")},
                now=now)
            training.arbitrate(session, settings, now=now, model_ids=[model_id])
            verdict["decision_id"] = outcome.decision.id
    return verdict


def guard_deployments(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Shadow exits, the rollback guard and Thompson redraws (see the module docstring);
    returns what each did."""
    t0 = time.perf_counter()
    now = now or utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        exits = [v for v in deployment.shadow_exits(session, settings, now=now)
                 if v["action"] != "waiting"]
        model_ids = production_model_ids(session)
        thompson = list(session.scalars(select(Allocation.model_id).where(
            Allocation.mode == "thompson").order_by(Allocation.model_id)))
    guarded, errors = [], 0
    for model_id in model_ids:
        try:
            verdict = _guard_one(settings, model_id, now)
        except (OperationalError, DBAPIError):
            raise
        except Exception:  # one model's bad record must not block the others
            errors += 1
            log.exception("auto-rollback guard of %s failed", model_id)
            continue
        if verdict["action"] in ("rolled_back", "degraded"):
            guarded.append(verdict)
    redrawn = []
    for model_id in thompson:
        try:
            with transaction(settings.database_url, immediate=True) as session:
                out = allocation.redraw(session, settings, model_id, now=now)
        except (OperationalError, DBAPIError):
            raise
        except Exception:
            errors += 1
            log.exception("allocation redraw of %s failed", model_id)
            continue
        if out is not None:
            redrawn.append({"model_id": model_id, **out})
    return {"shadow_exits": [{k: v[k] for k in ("model_id", "version", "action")}
                             for v in exits],
            "guard": [{k: v.get(k) for k in ("model_id", "version", "action", "production")}
                      for v in guarded],
            "allocations": redrawn, "errors": errors,
            "seconds": time.perf_counter() - t0}
