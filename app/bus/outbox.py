"""The transactional outbox: envelopes and the events CLM emits.

Owns the envelope (`make_envelope`, `new_event_id`: {"id", "type", "occurred_at",
"source", "payload"}, JSON), `emit` (an `event_outbox` row written in the caller's
transaction, so the event exists iff the change it announces committed), the event
builders for jobs and model versions (`job_event`, `version_event`), `list_events` (GET
/clm/events) and the after-commit relay kick: once per transaction that emitted events,
`app.db.on_commit` sends the relay task (best effort; beat runs the relay too, which is
the guarantee). Publishing is app.bus.relay; inbound events are app.bus.inbound.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bus.producer import TaskMessage, send
from app.core.timeutil import ensure_utc, utcnow
from app.db import on_commit
from app.models.continuous import OutboxEvent

__all__ = [
    "OUTBOUND_TYPES",
    "RELAY_TASK",
    "SOURCE",
    "emit",
    "job_event",
    "list_events",
    "make_envelope",
    "new_event_id",
    "set_relay_kicker",
    "version_event",
]

SOURCE = "clm"
OUTBOUND_TYPES = frozenset({
    "training.started", "training.completed", "training.failed", "evaluation.completed",
    "model.promoted", "model.rolled_back", "candidate.created",
    # guarded deployment (app.services.deployment, app.services.allocation)
    "model.shadow_exited", "model.degraded", "allocation.changed",
})
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def new_event_id() -> str:
    return str(uuid.uuid4())


def make_envelope(type: str, payload: Mapping[str, Any], *, source: str = SOURCE,
                  event_id: str | None = None, occurred_at: datetime | None = None
                  ) -> dict[str, Any]:
    """An envelope dict as it travels on the bus (ISO 8601 UTC timestamp, Z suffix)."""
    when = ensure_utc(occurred_at or utcnow())
    return {"id": event_id or new_event_id(), "type": type,
            "occurred_at": when.isoformat().replace("+00:00", "Z"), "source": source,
            "payload": dict(payload)}


def emit(session: Session, type: str, payload: Mapping[str, Any], *, source: str = SOURCE,
         occurred_at: datetime | None = None, event_id: str | None = None) -> str:
    """Write an event to the outbox in the caller's transaction; returns its id.

    The row commits (or rolls back) with the change it announces; a relay publishes it
    after the commit. `payload` must be JSON-serializable (checked here, not at publish).
    """
    if not isinstance(type, str) or not _TYPE_RE.match(type) or len(type) > 80:
        raise ValueError(f"event type must be a dotted lower-case name, got {type!r}")
    try:
        body = json.loads(json.dumps(dict(payload), allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event payload of {type} is not JSON-serializable: {exc}") from exc
    row = OutboxEvent(event_id=event_id or new_event_id(), type=type,
                      occurred_at=ensure_utc(occurred_at or utcnow()), source=source,
                      payload=body)
    session.add(row)
    session.flush()
    _arm_kick(session)
    return row.event_id


def job_event(session: Session, type: str, job: Any, **extra: Any) -> str:
    """Emit a training-job event (training.started / .completed / .failed,
    evaluation.completed) describing `job` (an app.models.jobs.TrainingJob row)."""
    if isinstance(extra.get("evaluation"), Mapping):
        # The outcome, not the job's bookkeeping (timings, config) that rides along.
        keep = ("passed", "gate_passed", "metrics", "failed_criteria", "promotion_score",
                "champion")
        extra["evaluation"] = {k: extra["evaluation"].get(k) for k in keep
                               if k in extra["evaluation"]}
    payload = {
        "job_id": job.id, "model_id": job.model_id, "model_type": str(job.model_type),
        "symbol": job.symbol, "timeframe": job.timeframe,
        "trigger_reason": str(job.trigger_reason), "regime": job.regime,
        "status": str(job.status), **extra,
    }
    return emit(session, type, payload)


def version_event(session: Session, type: str, version: Any, *, actor: str | None,
                  reason: str | None, retired: Any = None) -> str:
    """Emit a model-version event (model.promoted / model.rolled_back) for `version` (an
    app.models.registry.ModelVersion row); `retired` is the version it replaced."""
    return emit(session, type, {
        "model_id": version.model_id, "version": version.version,
        "model_type": str(version.model_type), "symbol": version.symbol,
        "timeframe": version.timeframe, "regime": version.regime,
        "status": str(version.status), "retired": retired.version if retired else None,
        "actor": actor, "reason": reason, "sharpe": version.sharpe,
    })


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return ensure_utc(value).isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


# -- after-commit relay kick (best effort: the beat relay is the guarantee) -------------
RELAY_TASK = "clm.events.relay"
_KICK_KEY = "clm_outbox_kick"
_kicker: Callable[[], None] | None = None
_kick_configured = False


def _celery_kick() -> None:
    send([TaskMessage(RELAY_TASK, "default")], retry=False)


def set_relay_kicker(kicker: Callable[[], None] | None) -> None:
    """Replace what runs after a commit that emitted events (None: nothing; tests that
    relay by hand use it so no relay task is published to a broker nobody consumes)."""
    global _kicker, _kick_configured
    _kicker = kicker
    _kick_configured = True


def _kick() -> None:
    kicker = _kicker if _kick_configured else _celery_kick
    if kicker is not None:
        kicker()


def _arm_kick(session: Session) -> None:
    # Once per transaction, however many events it emitted; dropped on rollback.
    on_commit(session, _kick, key=_KICK_KEY)


def list_events(
    session: Session, *, type: str | None = None, since: datetime | None = None,
    published: bool | None = None, before_id: int | None = None, limit: int = 50,
) -> list[OutboxEvent]:
    """Outbox events newest first (keyset `before_id`); `limit + 1` rows fetched."""
    stmt = select(OutboxEvent)
    if type:
        stmt = stmt.where(OutboxEvent.type == type)
    if since is not None:
        stmt = stmt.where(OutboxEvent.occurred_at >= since)
    if published is True:
        stmt = stmt.where(OutboxEvent.published_at.is_not(None))
    elif published is False:
        stmt = stmt.where(OutboxEvent.published_at.is_(None))
    if before_id is not None:
        stmt = stmt.where(OutboxEvent.id < before_id)
    return list(session.scalars(stmt.order_by(OutboxEvent.id.desc()).limit(limit + 1)))
