"""What `GET /clm/status` reports: one dict collected from every service's counters.

Owns `collect_status`: each section comes from the service that owns its counters
(registry, jobs, the scheduler in app.services.triggers, the broker's queue depths).
Reads only; imports services and lower layers, never flows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from app.bus.broker import queue_depths
from app.core.config import Settings
from app.core.domain import ModelStatus
from app.core.timeutil import isoformat, utcnow
from app.core.version import __version__
from app.models.registry import ModelVersion
from app.services import jobs, registry, triggers


def collect_status(session: Session, settings: Settings) -> dict[str, Any]:
    """The service's state: versions and jobs by status, queue depths, scheduler."""
    return {
        "version": __version__,
        "generated_at": isoformat(utcnow()),
        "models": model_counts(session),
        "versions": registry.status_counts(session),
        "jobs": job_counts(session),
        "queues": queue_depths(settings),
        "scheduler": scheduler_state(session, settings),
    }


def model_counts(session: Session) -> dict[str, int]:
    """How many model_ids have versions, and how many of them have a production one."""
    total, in_production = session.execute(
        select(
            func.count(distinct(ModelVersion.model_id)),
            func.count(distinct(ModelVersion.model_id)).filter(
                ModelVersion.status == ModelStatus.PRODUCTION
            ),
        )
    ).one()
    return {"total": int(total), "with_production": int(in_production)}


def job_counts(session: Session) -> dict[str, int]:
    """Training jobs by status (every status present, zeros included)."""
    return jobs.job_counts(session)


def scheduler_state(session: Session, settings: Settings) -> dict[str, Any] | None:
    """The trigger scheduler's state (app.services.triggers.scheduler_state)."""
    return triggers.scheduler_state(session, settings)
