"""Live performance reports as a use case: record, propose variants, guard, arbitrate.

Owns `record_live_report` and `report_live`, used by POST /clm/performance
(app.api.continuous) and inbound `performance.reported` events (app.flows.inbound). A
report is stored and judged over its rolling window (app.services.checks.performance);
when the production model is degraded a pending `performance_degraded` decision is
recorded and strategy variants are proposed (app.services.evolution), then the
auto-rollback guard runs; `report_live` finally arbitrates the decision
(app.flows.training.arbitrate), starting the retraining. Runs in the caller's
transaction (open it with `transaction(url, immediate=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.flows import training
from app.flows.evolution import propose_variants_on_degraded
from app.models.continuous import TriggerDecision
from app.services.checks import performance
from app.services.checks.performance import LiveReport

__all__ = ["LiveOutcome", "record_live_report", "report_live"]


@dataclass
class LiveOutcome:
    """A handled live report: the answer of POST /clm/performance and the jobs started."""

    result: dict[str, Any]
    job_ids: list[str] = field(default_factory=list)


def record_live_report(
    session: Session, settings: Settings, body: LiveReport, *, now: datetime,
    reported_by: str | None, event_id: str | None = None,
) -> dict[str, Any]:
    """Store and judge a live report; a degraded production model gets a pending
    `performance_degraded` decision and strategy variants; then the rollback guard.
    Nothing is arbitrated here (see `report_live`).

    Returns {"report", "rolling", "decision", "rollback"}; NotFound / Conflict as
    app.services.checks.performance.record_live_report.
    """
    judged = performance.record_live_report(session, settings, body, now=now,
                                            reported_by=reported_by, event_id=event_id)
    if judged.degraded:
        propose_variants_on_degraded(session, settings, body.model_id, now=now)
    return performance.apply_rollback_guard(session, settings, judged)


def report_live(
    session: Session, settings: Settings, body: LiveReport, *, now: datetime,
    reported_by: str | None, event_id: str | None = None,
) -> LiveOutcome:
    """`record_live_report`, then arbitration of its decision; the result's "decision"
    shows the decided outcome (triggered, coalesced, suppressed...)."""
    result = record_live_report(session, settings, body, now=now, reported_by=reported_by,
                                event_id=event_id)
    if not result["decision"]:
        return LiveOutcome(result)
    job_ids = training.arbitrate(session, settings, now=now, model_ids=[body.model_id])
    decision = session.get(TriggerDecision, result["decision"]["id"])
    if decision is not None:
        result["decision"] = decision.to_dict()
    return LiveOutcome(result, job_ids)
