"""The scheduler tick's own work: which periodic slots are due, recorded as decisions.

Owns `TickResult` and `record_due`: one query reads the whole tracked set (explicit rows
∪ production models), the periodic slots due at `now` are found (per-type intervals from
settings unless the tracked row overrides) and each is recorded as a pending `periodic`
decision. Cost is one query plus work proportional to what is due, not to what is
tracked. Arbitration of everything pending is the caller's next step
(app.flows.checks.run_tick, through app.flows.training.arbitrate).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import TriggerReason
from app.core.timeutil import ensure_utc, isoformat
from app.models.continuous import TriggerDecision, TriggerOutcome
from app.services.triggers.decisions import chunks, job_facts, record_request, slot_key
from app.services.triggers.tracking import due_at, interval_hours_for, tracked_union

__all__ = ["TickResult", "record_due"]


@dataclass
class TickResult:
    """What one scheduler tick saw and did."""

    now: datetime
    tracked: int = 0
    due: int = 0
    requested: list[int] = field(default_factory=list)  # decision ids recorded now
    job_ids: list[str] = field(default_factory=list)  # started by the arbitration (informational)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"now": isoformat(self.now), "tracked": self.tracked, "due": self.due,
                "requested": list(self.requested), "job_ids": list(self.job_ids),
                "seconds": dict(self.seconds)}


def _rejected_periodic(session: Session, model_ids: Sequence[str]) -> dict[str, set[str]]:
    """Periodic slot keys whose decision was rejected, per model (one query per chunk)."""
    out: dict[str, set[str]] = {}
    for chunk in chunks(list(model_ids)):
        for mid, key in session.execute(
            select(TriggerDecision.model_id, TriggerDecision.dedupe_key).where(
                TriggerDecision.model_id.in_(chunk),
                TriggerDecision.reason == TriggerReason.PERIODIC,
                TriggerDecision.outcome == TriggerOutcome.REJECTED)
        ):
            out.setdefault(mid, set()).add(key)
    return out


def record_due(session: Session, settings: Settings, *, now: datetime) -> TickResult:
    """The first steps of a scheduler tick at `now` (pass a frozen clock in tests):

    1. one query for the whole tracked set (explicit rows ∪ production models);
    2. periodic slots due at `now`, checked against the model's newest job (a training
       started elsewhere, e.g. POST /clm/train, restarts the clock too);
    3. a pending `periodic` decision per due slot (key = the due time).

    Arbitration (step 4) is the caller's: app.flows.checks.run_tick. `seconds` holds
    "scan" and "request"; the caller adds "arbitrate" and `job_ids`.
    """
    now = ensure_utc(now)
    t0 = time.perf_counter()
    u = tracked_union()
    rows = session.execute(
        select(u.c.model_id, u.c.model_type, u.c.interval_hours, u.c.anchor_at)
    ).all()
    result = TickResult(now=now, tracked=len(rows))
    # model_id -> (due time or None for "never trained", interval, anchor)
    due: dict[str, tuple[datetime | None, float, datetime | None]] = {}
    for model_id, model_type, interval_override, anchor in rows:
        interval = interval_hours_for(settings, model_type, interval_override)
        when = due_at(anchor, interval)
        if when is None or when <= now:
            due[model_id] = (when, interval, anchor)
    t1 = time.perf_counter()
    if due:
        _active, _finished, created = job_facts(session, list(due))
        for model_id, (when, interval, anchor) in list(due.items()):
            newest = created.get(model_id)
            if newest is not None and (anchor is None or newest > ensure_utc(anchor)):
                # Trained since the scheduler last looked (e.g. POST /clm/train): the
                # periodic clock restarts at that job.
                when = newest + timedelta(hours=interval)
                if when > now:
                    del due[model_id]
                    continue
                due[model_id] = (when, interval, anchor)
        result.due = len(due)
        rejected = _rejected_periodic(session, list(due))
        for model_id, (when, interval, _anchor) in due.items():
            key = f"periodic:{isoformat(when)}" if when is not None else "periodic:initial"
            if key in rejected.get(model_id, ()):
                # The slot's job could not start (e.g. no data yet): try again once per
                # cooldown period instead of never (or on every tick).
                key = f"{key}:retry:{slot_key(now, settings.trigger_cooldown_hours)}"
            d = record_request(
                session, settings, model_id=model_id, reason="periodic", dedupe_key=key,
                source="tick", now=now, requested_by="clm-scheduler",
                details={"due_at": isoformat(when) if when else None,
                         "interval_hours": interval},
            )
            if d.outcome == TriggerOutcome.PENDING:
                result.requested.append(d.id)
    t2 = time.perf_counter()
    result.seconds = {"scan": t1 - t0, "request": t2 - t1}
    return result
