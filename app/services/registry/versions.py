"""Registry versions: registering them (and choosing their version strings), reading and
querying them, tag/note edits, deletion and the per-status counts.

Every function takes a `Session`, `flush()`es but never commits, and returns the shapes
of `views`. Status moves after registration live in `lifecycle`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.domain import (
    TIMEFRAMES,
    ModelStatus,
    ModelType,
    is_model_id,
    is_regime,
    make_model_id,
    normalize_symbol,
)
from app.core.errors import Conflict, InvalidInput
from app.core.timeutil import ensure_utc, utcnow
from app.models.registry import ModelVersion, VersionStatusChange
from app.services.registry.history import history
from app.services.registry.rows import (
    lock_model,
    production_row,
    row_by_job,
    sqlite_write_lock,
    version_row,
    write_audit,
)
from app.services.registry.validation import (
    Artifact,
    check_actor,
    check_ids,
    check_notes,
    check_reason,
    check_tags,
    json_object,
    parse_status,
    validate_metrics,
    validated,
)
from app.services.registry.views import version_dict

# Statuses a version may be registered with (the API allows only candidate and shadow).
REGISTRABLE = frozenset(
    {ModelStatus.CANDIDATE, ModelStatus.SHADOW, ModelStatus.TRAINING, ModelStatus.FAILED}
)
# `v{YYYYmmdd_HHMMSS}_{seq}`: seq counts versions of one model_id within one second.
_VERSION_RE = re.compile(r"^v(\d{8}_\d{6})_(\d{3,})$")
_VERSION_ATTEMPTS = 20


# ---------------------------------------------------------------------------- register


def _next_version(session: Session, model_id: str, now: datetime) -> str:
    """The next version string of `model_id`: strictly after every version it ever had.

    The newest existing version is taken from the live rows and from the history (which
    keeps deleted versions), so a deleted version string is never handed out again, and
    a clock that steps back keeps counting after the newest stamp instead of going back.
    """
    stamp = now.strftime("%Y%m%d_%H%M%S")
    names = union_all(
        select(ModelVersion.version.label("v")).where(ModelVersion.model_id == model_id),
        select(VersionStatusChange.version.label("v")).where(
            VersionStatusChange.model_id == model_id
        ),
    ).subquery()
    # Longest first: "..._1000" comes after "..._999" although it sorts lower as text.
    last = session.scalar(
        select(names.c.v)
        .order_by(func.length(names.c.v).desc(), names.c.v.desc())
        .limit(1)
    )
    seq = 1
    match = _VERSION_RE.match(last or "")
    if match and match.group(1) >= stamp:
        stamp, seq = match.group(1), int(match.group(2)) + 1
    return f"v{stamp}_{seq:03d}"


def register_version(
    session: Session,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    metrics: Mapping[str, Any] | BaseModel,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    notes: str | None = None,
    status: str = "candidate",
    regime: str | None = None,
    artifact: Mapping[str, Any] | Any | None = None,
    lineage: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    actor: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Store a new version and return it; the registry assigns `version`.

    `status`: candidate (default) or shadow from the API; the pipeline may also register
    training or failed versions. With `job_id`, registering is idempotent: when that job
    already has a version (a redelivered task), the existing one is returned unchanged.
    The version string is unique per model_id and ordered by creation; two concurrent
    registrations that pick the same string are resolved by the unique index and a retry
    inside a savepoint, so neither fails.
    """
    if job_id is not None and (
        not isinstance(job_id, str) or not 1 <= len(job_id) <= 36 or "\x00" in job_id
    ):
        raise InvalidInput("job_id", "must be a string of 1–36 characters")
    sqlite_write_lock(session)
    if job_id is not None:
        existing = row_by_job(session, job_id)
        if existing is not None:
            return version_dict(existing)
    try:
        model_type_v = ModelType(model_type)
    except ValueError:
        allowed = ", ".join(t.value for t in ModelType)
        raise InvalidInput("model_type", f"must be one of {allowed}") from None
    if timeframe not in TIMEFRAMES:
        raise InvalidInput("timeframe", f"must be one of {', '.join(TIMEFRAMES)}")
    try:
        symbol = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    status_v = parse_status(status)
    if status_v not in REGISTRABLE:
        allowed = ", ".join(sorted(s.value for s in REGISTRABLE))
        raise InvalidInput("status", f"a new version may start as {allowed}")
    if regime is not None:
        if not isinstance(regime, str) or not is_regime(regime):
            raise InvalidInput("regime", "1–40 characters of a-z, 0-9, '_', '.', '-'")
        regime = regime.strip().lower()
    clean_metrics = validate_metrics(metrics)
    artifact_v = (
        None if artifact is None else validated(Artifact, artifact, "artifact")
    )
    values: dict[str, Any] = {
        "model_id": make_model_id(model_type_v.value, symbol, timeframe),
        "model_type": model_type_v,
        "symbol": symbol,
        "timeframe": timeframe,
        "status": status_v,
        "regime": regime,
        "sharpe": clean_metrics.get("sharpe"),
        "promotion_score": clean_metrics.get("promotion_score"),
        "metrics": clean_metrics,
        "params": json_object(params, "params"),
        "tags": check_tags(json_object(tags, "tags")),
        "notes": check_notes(notes),
        "artifact_uri": artifact_v.uri if artifact_v else None,  # type: ignore[attr-defined]
        "artifact_sha256": artifact_v.sha256 if artifact_v else None,  # type: ignore[attr-defined]
        "artifact_format": artifact_v.format if artifact_v else None,  # type: ignore[attr-defined]
        "lineage": json_object(lineage, "lineage"),
        "evaluation": None if evaluation is None else json_object(evaluation, "evaluation"),
        "job_id": job_id,
        "created_by": check_actor(actor),
    }
    reason = check_reason(reason) or "registered"
    for _attempt in range(_VERSION_ATTEMPTS):
        now = utcnow()
        row = ModelVersion(
            **values,
            version=_next_version(session, values["model_id"], now),
            created_at=now,
            updated_at=now,
        )
        try:
            # A savepoint, so losing a race on the unique index leaves the caller's
            # transaction usable for the retry.
            with session.begin_nested():
                session.add(row)
                session.flush()
                session.add(
                    VersionStatusChange(
                        model_id=row.model_id,
                        version=row.version,
                        from_status=None,
                        to_status=status_v.value,
                        at=now,
                        actor=values["created_by"],
                        reason=reason,
                    )
                )
                session.flush()
        except IntegrityError:
            if job_id is not None:
                existing = row_by_job(session, job_id)
                if existing is not None:  # the same job's other delivery won
                    return version_dict(existing)
            continue  # someone took this version string: pick the next one
        return version_dict(row)
    raise Conflict(
        f"could not allocate a version for {values['model_id']} "
        f"after {_VERSION_ATTEMPTS} attempts; retry"
    )


# ---------------------------------------------------------------------------- reads


def get_version(
    session: Session, model_id: str, version: str, *, with_history: bool = False
) -> dict[str, Any]:
    """One version (NotFound if absent); with `with_history`, its status changes too."""
    check_ids(model_id, version)
    result = version_dict(version_row(session, model_id, version))
    if with_history:
        result["history"] = history(session, model_id, version)
    return result


def get_version_by_job(session: Session, job_id: str) -> dict[str, Any] | None:
    """The version a training job registered, or None (how a redelivered step checks)."""
    row = row_by_job(session, job_id) if isinstance(job_id, str) else None
    return None if row is None else version_dict(row)


def get_production(session: Session, model_id: str) -> dict[str, Any] | None:
    """The current production version of `model_id`, or None."""
    if not is_model_id(model_id):
        return None
    row = production_row(session, model_id)
    return None if row is None else version_dict(row)


def status_counts(session: Session) -> dict[str, int]:
    """Number of versions per status (every status present, zero included)."""
    counts = dict.fromkeys((s.value for s in ModelStatus), 0)
    for status, count in session.execute(
        select(ModelVersion.status, func.count()).group_by(ModelVersion.status)
    ):
        counts[ModelStatus(status).value] = int(count)
    return counts


@dataclass(frozen=True)
class VersionQuery:
    """Filters of `query_versions` (all optional, combined with AND).

    `created_after` is inclusive and `created_before` exclusive, so consecutive windows
    never overlap. `min_sharpe` leaves out versions without a Sharpe ratio.
    """

    model_id: str | None = None
    model_type: str | None = None
    symbol: str | None = None
    timeframe: str | None = None
    status: str | None = None
    regime: str | None = None
    min_sharpe: float | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def query_versions(
    session: Session,
    filters: VersionQuery | None = None,
    *,
    limit: int = 50,
    after_key: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Versions matching `filters`, newest first, `limit` at a time.

    Returns (items, next_key): pass `next_key` back as `after_key` for the next page
    (None when this was the last page). Keys are row ids, so pages never overlap or skip
    even while new versions are registered.
    """
    f = filters or VersionQuery()
    stmt = select(ModelVersion)
    if f.model_id is not None:
        if not is_model_id(f.model_id):
            return [], None  # cannot exist: nothing matches
        stmt = stmt.where(ModelVersion.model_id == f.model_id)
    if f.model_type is not None:
        try:
            stmt = stmt.where(ModelVersion.model_type == ModelType(f.model_type))
        except ValueError:
            allowed = ", ".join(t.value for t in ModelType)
            raise InvalidInput("model_type", f"must be one of {allowed}") from None
    if f.symbol is not None:
        try:
            stmt = stmt.where(ModelVersion.symbol == normalize_symbol(f.symbol))
        except ValueError as exc:
            raise InvalidInput("symbol", str(exc)) from None
    if f.timeframe is not None:
        if f.timeframe not in TIMEFRAMES:
            raise InvalidInput("timeframe", f"must be one of {', '.join(TIMEFRAMES)}")
        stmt = stmt.where(ModelVersion.timeframe == f.timeframe)
    if f.status is not None:
        stmt = stmt.where(ModelVersion.status == parse_status(f.status))
    if f.regime is not None:
        stmt = stmt.where(ModelVersion.regime == f.regime.strip().lower())
    if f.min_sharpe is not None:
        if not math.isfinite(f.min_sharpe):
            raise InvalidInput("min_sharpe", "must be a finite number")
        stmt = stmt.where(ModelVersion.sharpe >= f.min_sharpe)
    if f.created_after is not None:
        stmt = stmt.where(ModelVersion.created_at >= ensure_utc(f.created_after))
    if f.created_before is not None:
        stmt = stmt.where(ModelVersion.created_at < ensure_utc(f.created_before))
    if after_key is not None:
        stmt = stmt.where(ModelVersion.id < after_key)
    rows = session.scalars(stmt.order_by(ModelVersion.id.desc()).limit(limit + 1)).all()
    next_key = rows[limit - 1].id if len(rows) > limit else None
    return [version_dict(r) for r in rows[:limit]], next_key


# ---------------------------------------------------------------------------- writes


_UNSET: Any = object()  # `notes` not given (None means: clear the notes)


def update_version(
    session: Session,
    model_id: str,
    version: str,
    *,
    actor: str,
    tags: Mapping[str, str | None] | None = None,
    notes: str | None = _UNSET,
) -> dict[str, Any]:
    """Edit tags and notes. `tags` is merged (a null value removes that tag); `notes`
    replaces the notes when given (None clears them). Audited as `version.updated`."""
    check_ids(model_id, version)
    actor = check_actor(actor)
    row = version_row(session, model_id, version, lock=True)
    changed: dict[str, Any] = {}
    if tags is not None:
        if not isinstance(tags, Mapping):
            raise InvalidInput("tags", "must be an object")
        merged = dict(row.tags or {})
        for key, value in tags.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        row.tags = check_tags(merged)
        changed["tags"] = dict(tags)
    if notes is not _UNSET:
        row.notes = check_notes(notes)
        changed["notes"] = notes
    if changed:
        now = utcnow()
        row.updated_at = now
        write_audit(
            session,
            actor=actor,
            action="version.updated",
            model_id=model_id,
            version=version,
            reason=None,
            at=now,
            details={"changes": changed},
        )
    session.flush()
    return version_dict(row)


def delete_version(
    session: Session,
    model_id: str,
    version: str,
    *,
    actor: str,
    reason: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Delete a version (Conflict for the production one); returns what was deleted.

    The history keeps a `→ deleted` change and the audit log a `version.deleted` entry,
    so "what was production at T" still answers for deleted versions.
    """
    check_ids(model_id, version)
    actor = check_actor(actor)
    reason = check_reason(reason)
    lock_model(session, model_id)
    row = version_row(session, model_id, version)
    if row.status == ModelStatus.PRODUCTION:
        raise Conflict(
            f"{model_id} {version} is in production; promote or roll back to another "
            "version first",
            model_id=model_id,
            version=version,
        )
    result = version_dict(row)
    now = utcnow()
    session.add(
        VersionStatusChange(
            model_id=model_id,
            version=version,
            from_status=result["status"],
            to_status="deleted",
            at=now,
            actor=actor,
            reason=reason,
        )
    )
    write_audit(
        session,
        actor=actor,
        action="version.deleted",
        model_id=model_id,
        version=version,
        reason=reason,
        at=now,
        details={"status": result["status"], "token": token},
    )
    session.delete(row)
    session.flush()
    return result
