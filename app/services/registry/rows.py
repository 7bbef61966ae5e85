"""Registry row access, per-model locking and the two history writers.

Owns: reading one version row (optionally locked), the production row, the row a job
registered; taking the SQLite write lock up front and serializing one model_id's
lifecycle writers (`lock_model`, see the package docstring); and writing a status change
(`record_change`) or an audit entry (`write_audit`). Nothing here commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.core.domain import ModelStatus
from app.core.errors import NotFound
from app.models.registry import AuditEntry, ModelVersion, VersionStatusChange


def version_row(
    session: Session, model_id: str, version: str, *, lock: bool = False
) -> ModelVersion:
    """One version row (NotFound if absent); with `lock`, locked for the caller's update."""
    stmt = select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.version == version
    )
    if lock:
        if _dialect(session) == "postgresql":
            stmt = stmt.with_for_update()
        else:
            sqlite_write_lock(session)
    # populate_existing: after waiting for a lock, the row must be re-read, not taken
    # from the session's identity map as it was before the wait.
    row = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if row is None:
        raise NotFound(f"version {version} of {model_id} not found")
    return row


def row_by_job(session: Session, job_id: str) -> ModelVersion | None:
    """The version row a training job registered, or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.job_id == job_id)).first()


def production_row(session: Session, model_id: str) -> ModelVersion | None:
    """The production row of `model_id` (re-read from the database), or None."""
    stmt = select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.status == ModelStatus.PRODUCTION
    )
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def sqlite_write_lock(session: Session) -> None:
    """SQLite: take the database write lock now, before reading what will be changed.

    A no-op UPDATE does it (SQLite has no row locks). Without it, a read-then-write in a
    deferred transaction fails with "database is locked" when another writer commits in
    between; with `transaction(immediate=True)` the lock is already held and this is free.
    """
    if _dialect(session) == "sqlite":
        session.execute(text("UPDATE model_versions SET id = id WHERE 0 = 1"))


def lock_model(session: Session, model_id: str) -> None:
    """Serialize writers of one model_id's lifecycle (promote, rollback, delete).

    PostgreSQL: row locks on every version of the model, taken in id order so two
    lockers queue instead of deadlocking. SQLite: the database write lock.
    """
    if _dialect(session) == "postgresql":
        session.execute(
            select(ModelVersion.id)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.id)
            .with_for_update()
        )
    else:
        sqlite_write_lock(session)


def record_change(
    session: Session,
    row: ModelVersion,
    to_status: ModelStatus,
    *,
    actor: str | None,
    reason: str | None,
    at: datetime,
) -> None:
    """Move `row` to `to_status` and write the status change that says so."""
    session.add(
        VersionStatusChange(
            model_id=row.model_id,
            version=row.version,
            from_status=ModelStatus(row.status).value,
            to_status=to_status.value,
            at=at,
            actor=actor,
            reason=reason,
        )
    )
    row.status = to_status
    row.updated_at = at


def write_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    model_id: str,
    version: str | None,
    reason: str | None,
    at: datetime,
    details: dict[str, Any],
) -> None:
    """Add an audit-log entry (details that are None are left out)."""
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            model_id=model_id,
            version=version,
            reason=reason,
            at=at,
            details={k: v for k, v in details.items() if v is not None},
        )
    )
