"""What the registry's history answers: status changes, "who was production at T",
whether a model ever existed, the audit log, and where an un-targeted rollback returns.

The status history (`version_status_changes`) and the audit log outlive deleted versions,
so every question here still answers for them. Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.core.domain import ModelStatus, is_model_id
from app.core.errors import InvalidInput
from app.core.timeutil import ensure_utc, isoformat
from app.models.registry import AuditEntry, ModelVersion, VersionStatusChange
from app.services.registry.views import audit_dict, change_dict


def history(session: Session, model_id: str, version: str) -> list[dict[str, Any]]:
    """Every status change of one version, oldest first (kept after deletion)."""
    if not is_model_id(model_id):
        return []
    rows = session.scalars(
        select(VersionStatusChange)
        .where(VersionStatusChange.model_id == model_id, VersionStatusChange.version == version)
        .order_by(VersionStatusChange.at, VersionStatusChange.id)
    ).all()
    return [change_dict(r) for r in rows]


def model_known(session: Session, model_id: str) -> bool:
    """True when `model_id` has versions now or had some (history outlives deletion)."""
    if not is_model_id(model_id):
        return False
    live = select(ModelVersion.id).where(ModelVersion.model_id == model_id).limit(1)
    past = select(VersionStatusChange.id).where(VersionStatusChange.model_id == model_id).limit(1)
    return session.scalar(live) is not None or session.scalar(past) is not None


def production_at(session: Session, model_id: str, at: datetime) -> dict[str, Any] | None:
    """Who was production for `model_id` at `at`, since when, who put it there and why.

    One query: the latest status change at or before `at` that entered or left
    production. A promotion writes "old → retired" then "new → production" with the same
    timestamp, so ties are broken by insertion order (id). None when nothing was
    production at that time (or the model is unknown).
    """
    if not is_model_id(model_id):
        return None
    change = session.scalars(
        select(VersionStatusChange)
        .where(
            VersionStatusChange.model_id == model_id,
            VersionStatusChange.at <= ensure_utc(at),
            or_(
                VersionStatusChange.to_status == ModelStatus.PRODUCTION.value,
                VersionStatusChange.from_status == ModelStatus.PRODUCTION.value,
            ),
        )
        .order_by(VersionStatusChange.at.desc(), VersionStatusChange.id.desc())
        .limit(1)
    ).first()
    if change is None or change.to_status != ModelStatus.PRODUCTION.value:
        return None
    return {
        "model_id": model_id,
        "version": change.version,
        "since": isoformat(change.at),
        "actor": change.actor,
        "reason": change.reason,
    }


@dataclass(frozen=True)
class AuditQuery:
    """Filters of `query_audit`: `since` inclusive, `until` exclusive."""

    actor: str | None = None
    action: str | None = None
    model_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def query_audit(
    session: Session,
    filters: AuditQuery | None = None,
    *,
    limit: int = 50,
    after_key: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Audit entries (promotions, rollbacks, deletions, token use), newest first."""
    f = filters or AuditQuery()
    stmt = select(AuditEntry)
    for column, value, name in (
        (AuditEntry.actor, f.actor, "actor"),
        (AuditEntry.action, f.action, "action"),
        (AuditEntry.model_id, f.model_id, "model_id"),
    ):
        if value is not None:
            if "\x00" in value:
                raise InvalidInput(name, "must not contain NUL characters")
            stmt = stmt.where(column == value)
    if f.since is not None:
        stmt = stmt.where(AuditEntry.at >= ensure_utc(f.since))
    if f.until is not None:
        stmt = stmt.where(AuditEntry.at < ensure_utc(f.until))
    if after_key is not None:
        stmt = stmt.where(AuditEntry.id < after_key)
    rows = session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit + 1)).all()
    next_key = rows[limit - 1].id if len(rows) > limit else None
    return [audit_dict(r) for r in rows[:limit]], next_key


def previous_production(session: Session, model_id: str, current: str) -> str | None:
    """The version an un-targeted rollback of `current` returns to.

    Production history is a stack read from the audit log: a promotion (or a rollback
    to a named version) pushes its version; a rollback without a target pops the version
    it rolled back from. So v1 → v2 → v3 then rollback, rollback gives v2, then v1: a
    version that was rolled back from is never returned to by accident (unlike
    `kubectl rollout undo`, which would toggle back to the bad version). History written
    before rollbacks were tagged (`details.undo`) counts every entry as a push.
    """
    entries = session.execute(
        select(AuditEntry.version, AuditEntry.action, AuditEntry.details)
        .where(
            AuditEntry.model_id == model_id,
            AuditEntry.action.in_(("version.promoted", "version.rolled_back")),
        )
        .order_by(AuditEntry.at, AuditEntry.id)
    ).all()
    stack: list[str] = []
    for version, action, details in entries:
        if action == "version.rolled_back" and (details or {}).get("undo"):
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:  # a history with gaps: trust the row
                stack.append(version)
        elif not stack or stack[-1] != version:
            stack.append(version)
    if stack and stack[-1] == current:
        return stack[-2] if len(stack) > 1 else None
    return _replaced_by(session, model_id, current)


def _replaced_by(session: Session, model_id: str, current: str) -> str | None:
    """The version `current` replaced when it last entered production (status history):
    the fallback when the audit log does not end with `current` in production."""
    entered = session.execute(
        select(VersionStatusChange.at, VersionStatusChange.id)
        .where(
            VersionStatusChange.model_id == model_id,
            VersionStatusChange.version == current,
            VersionStatusChange.to_status == ModelStatus.PRODUCTION.value,
        )
        .order_by(VersionStatusChange.at.desc(), VersionStatusChange.id.desc())
        .limit(1)
    ).first()
    if entered is None:
        return None
    at, change_id = entered
    # The replaced version left production in the same transaction, just before.
    return session.scalar(
        select(VersionStatusChange.version)
        .where(
            VersionStatusChange.model_id == model_id,
            VersionStatusChange.from_status == ModelStatus.PRODUCTION.value,
            or_(
                VersionStatusChange.at < at,
                (VersionStatusChange.at == at) & (VersionStatusChange.id < change_id),
            ),
        )
        .order_by(VersionStatusChange.at.desc(), VersionStatusChange.id.desc())
        .limit(1)
    )
