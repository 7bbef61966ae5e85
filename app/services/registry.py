"""The model registry: the only writer of `model_versions` and of their status history.

Owns: registering versions (and choosing their version strings), reading and querying
them, tag/note updates, deletion, the training pipeline's status transitions, promotion
and rollback, and the questions the history answers ("who was production at T, who put
it there and why"). Every function takes a `Session` and plain values, `flush()`es but
never commits (the caller owns the unit of work, `app.db.transaction`), returns plain
dicts in the API's JSON shape and raises `app.core.errors` (NotFound / Conflict /
InvalidInput) for anything a caller got wrong.

Concurrency. At most one production version per model_id is guaranteed by the database
(partial unique index `uq_model_versions_one_production`). On top of that, promote,
rollback and delete serialize per model_id so that the "retire the current production,
promote the target" read-modify-write cannot interleave:

* PostgreSQL: `SELECT id ... WHERE model_id = :m ORDER BY id FOR UPDATE` locks all of the
  model's rows in a stable order (no deadlock between two promoters).
* SQLite has no row locks; the whole database has one writer. Callers that write should
  open the unit of work with `transaction(url, immediate=True)` (BEGIN IMMEDIATE). Every
  writing function also issues a no-op UPDATE before it reads, which takes the write lock
  up front when the caller forgot, instead of failing on the lock upgrade later (that
  only fails when the caller's transaction already read something before calling).

Every status change writes a `VersionStatusChange` row; promote, rollback, delete and tag
edits also write an `AuditEntry` (actor, action, model_id, version, reason, details).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
)
from sqlalchemy import func, or_, select, text, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.events import version_event  # outbox: events commit with the change
from app.core.domain import (
    TIMEFRAMES,
    ModelStatus,
    ModelType,
    is_model_id,
    is_regime,
    make_model_id,
    normalize_symbol,
)
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.timeutil import ensure_utc, isoformat, utcnow
from app.ml.scoring import promotion_score
from app.models.registry import AuditEntry, ModelVersion, VersionStatusChange

__all__ = [
    "PROMOTABLE",
    "REGISTRABLE",
    "Artifact",
    "AuditQuery",
    "Metrics",
    "VersionQuery",
    "delete_version",
    "get_production",
    "get_version",
    "get_version_by_job",
    "history",
    "is_model_id",
    "model_known",
    "no_nul",
    "production_at",
    "promote",
    "query_audit",
    "query_versions",
    "register_version",
    "rollback",
    "set_status",
    "status_counts",
    "update_version",
]

# Statuses a version may be registered with (the API allows only candidate and shadow).
REGISTRABLE = frozenset(
    {ModelStatus.CANDIDATE, ModelStatus.SHADOW, ModelStatus.TRAINING, ModelStatus.FAILED}
)
# Statuses `promote` accepts without force (failed needs force; training never).
PROMOTABLE = frozenset({ModelStatus.CANDIDATE, ModelStatus.SHADOW, ModelStatus.RETIRED})
# `set_status` moves (production is reached and left only through promote/rollback).
_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.TRAINING: frozenset(
        {ModelStatus.CANDIDATE, ModelStatus.SHADOW, ModelStatus.FAILED}
    ),
    ModelStatus.SHADOW: frozenset(
        {ModelStatus.CANDIDATE, ModelStatus.RETIRED, ModelStatus.FAILED}
    ),
    ModelStatus.CANDIDATE: frozenset({ModelStatus.SHADOW, ModelStatus.RETIRED}),
    ModelStatus.RETIRED: frozenset({ModelStatus.CANDIDATE}),
    ModelStatus.FAILED: frozenset(),
    ModelStatus.PRODUCTION: frozenset(),
}

# `v{YYYYmmdd_HHMMSS}_{seq}`: seq counts versions of one model_id within one second.
_VERSION_RE = re.compile(r"^v(\d{8}_\d{6})_(\d{3,})$")
_VERSION_ATTEMPTS = 20
# What a path segment naming a version may look like (anything else cannot exist).
_VERSION_TOKEN_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_TAGS = 50
_MAX_JSON_DEPTH = 32
_MAX_NOTES = 10_000
_MAX_ACTOR = 120  # audit_log.actor / created_by column width


# ---------------------------------------------------------------------------- validation


def no_nul(value: str) -> str:
    """Refuse NUL characters: PostgreSQL text and JSONB cannot hold them (a DB error)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class Metrics(BaseModel):
    """The contract's metrics object. Strict: numbers must be JSON numbers, not strings.

    Every value may be null (unknown, e.g. Sharpe of a flat equity curve). Extra keys are
    allowed for other figures but must be finite numbers or null.
    """

    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, FiniteFloat | None] = Field(init=False)

    sharpe: FiniteFloat | None = None
    win_rate: FiniteFloat | None = Field(None, ge=0, le=1, description="0–1")
    profit_factor: FiniteFloat | None = Field(
        None, ge=0, description="null when there is no losing trade"
    )
    max_drawdown: FiniteFloat | None = Field(None, ge=0, le=1, description="0–1, positive")
    # Below 2**53: a JSON number every client (JavaScript included) reads exactly.
    trades: int | None = Field(None, ge=0, lt=2**53)
    total_return: FiniteFloat | None = None
    promotion_score: FiniteFloat | None = Field(
        None, ge=0, le=100, description="0–100; computed by the registry when absent"
    )


class Artifact(BaseModel):
    """Where a version's model file lives. Accepts dicts or objects (e.g. `ArtifactRef`)."""

    model_config = ConfigDict(extra="ignore", from_attributes=True, str_strip_whitespace=True)

    uri: Annotated[str, AfterValidator(no_nul)] = Field(min_length=1, max_length=400)
    sha256: Annotated[str, AfterValidator(str.lower)] = Field(pattern=r"^[0-9a-fA-F]{64}$")
    format: Annotated[str, AfterValidator(no_nul)] = Field(min_length=1, max_length=40)


def _validated(model: type[BaseModel], value: Any, field: str) -> BaseModel:
    """Validate with a pydantic model; the first error becomes InvalidInput(field.path)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join([field, *(str(p) for p in err.get("loc", ()))])
        raise InvalidInput(path, err.get("msg", "invalid value")) from None


def _clean_metrics(metrics: Any) -> dict[str, Any]:
    if isinstance(metrics, BaseModel):
        metrics = metrics.model_dump()
    if not isinstance(metrics, Mapping):
        raise InvalidInput("metrics", "must be an object")
    clean = _validated(Metrics, {k: _plain(v) for k, v in metrics.items()}, "metrics")
    data = clean.model_dump()
    # The registry fills the score in so every version can be ranked the same way;
    # a version with no performance figures at all (training, failed) has none.
    if data["promotion_score"] is None and any(
        data[k] is not None for k in ("sharpe", "win_rate", "profit_factor")
    ):
        data["promotion_score"] = round(promotion_score(data), 6)
    return data


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars (the pipeline hands over backtest output as is)."""
    if not isinstance(value, str | bytes | bool | int | float | dict | list | tuple) and hasattr(
        value, "item"
    ):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _json_doc(value: Any, field: str, depth: int = 0) -> Any:
    """A JSON-storable copy of a free-form document (params, lineage, evaluation, tags).

    Non-finite floats become null (JSON has no NaN; PostgreSQL JSONB refuses it), tuples
    become lists; NUL characters, non-string keys and unknown types are refused.
    """
    if depth > _MAX_JSON_DEPTH:
        raise InvalidInput(field, f"nested deeper than {_MAX_JSON_DEPTH} levels")
    value = _plain(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(field, "must not contain NUL characters")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise InvalidInput(field, f"keys must be strings without NUL, got {key!r}")
            out[key] = _json_doc(item, f"{field}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_doc(item, f"{field}.{i}", depth + 1) for i, item in enumerate(value)]
    raise InvalidInput(field, f"not JSON data ({type(value).__name__})")


def _json_object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(field, "must be an object")
    return _json_doc(value, field)


def _check_tags(tags: Mapping[str, Any], field: str = "tags") -> dict[str, str]:
    if len(tags) > _MAX_TAGS:
        raise InvalidInput(field, f"at most {_MAX_TAGS} tags")
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64 or "\x00" in key:
            raise InvalidInput(field, f"tag names must be 1–64 characters, got {key!r}")
        if not isinstance(value, str) or len(value) > 500 or "\x00" in value:
            raise InvalidInput(f"{field}.{key}", "must be a string of at most 500 characters")
    return dict(tags)


def _check_notes(notes: Any) -> str | None:
    if notes is None:
        return None
    if not isinstance(notes, str) or len(notes) > _MAX_NOTES or "\x00" in notes:
        raise InvalidInput("notes", f"must be a string of at most {_MAX_NOTES} characters")
    return notes


def _check_actor(actor: Any, field: str = "actor") -> str:
    if not isinstance(actor, str) or not actor.strip() or "\x00" in actor:
        raise InvalidInput(field, "must be a non-empty string")
    actor = actor.strip()
    if len(actor) > _MAX_ACTOR:
        raise InvalidInput(field, f"at most {_MAX_ACTOR} characters")
    return actor


def _check_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or "\x00" in reason or len(reason) > _MAX_NOTES:
        raise InvalidInput("reason", f"must be a string of at most {_MAX_NOTES} characters")
    return reason.strip() or None


def _status(value: Any, field: str = "status") -> ModelStatus:
    try:
        return ModelStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ModelStatus)
        raise InvalidInput(field, f"must be one of {allowed}") from None


def _check_ids(model_id: Any, version: Any = None) -> None:
    # An id that cannot exist is unknown (404), and must never reach the database:
    # PostgreSQL rejects NUL bytes with an error rather than "no rows".
    if not is_model_id(model_id):
        raise NotFound(f"model {model_id!r} not found")
    if version is not None and (
        not isinstance(version, str) or not _VERSION_TOKEN_RE.fullmatch(version)
    ):
        raise NotFound(f"version {version!r} of {model_id} not found")


# ---------------------------------------------------------------------------- representation


def _version_dict(row: ModelVersion) -> dict[str, Any]:
    artifact = None
    if row.artifact_uri:
        artifact = {
            "uri": row.artifact_uri,
            "sha256": row.artifact_sha256,
            "format": row.artifact_format,
        }
    return {
        "model_id": row.model_id,
        "version": row.version,
        "model_type": ModelType(row.model_type).value,
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "status": ModelStatus(row.status).value,
        "regime": row.regime,
        "metrics": dict(row.metrics or {}),
        "params": row.params if row.params is not None else {},
        "tags": dict(row.tags or {}),
        "notes": row.notes,
        "artifact": artifact,
        "lineage": row.lineage if row.lineage is not None else {},
        "evaluation": row.evaluation,
        "job_id": row.job_id,
        "created_at": isoformat(row.created_at),
        "updated_at": isoformat(row.updated_at),
        "created_by": row.created_by,
    }


def _change_dict(row: VersionStatusChange) -> dict[str, Any]:
    return {
        "from_status": row.from_status,
        "to_status": row.to_status,
        "at": isoformat(row.at),
        "actor": row.actor,
        "reason": row.reason,
    }


def _audit_dict(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": isoformat(row.at),
        "actor": row.actor,
        "action": row.action,
        "model_id": row.model_id,
        "version": row.version,
        "reason": row.reason,
        "details": dict(row.details or {}),
    }


# ---------------------------------------------------------------------------- row access


def _row(session: Session, model_id: str, version: str, *, lock: bool = False) -> ModelVersion:
    stmt = select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.version == version
    )
    if lock:
        if _dialect(session) == "postgresql":
            stmt = stmt.with_for_update()
        else:
            _sqlite_write_lock(session)
    # populate_existing: after waiting for a lock, the row must be re-read, not taken
    # from the session's identity map as it was before the wait.
    row = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if row is None:
        raise NotFound(f"version {version} of {model_id} not found")
    return row


def _row_by_job(session: Session, job_id: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.job_id == job_id)).first()


def _production_row(session: Session, model_id: str) -> ModelVersion | None:
    stmt = select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.status == ModelStatus.PRODUCTION
    )
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _sqlite_write_lock(session: Session) -> None:
    """SQLite: take the database write lock now, before reading what will be changed.

    A no-op UPDATE does it (SQLite has no row locks). Without it, a read-then-write in a
    deferred transaction fails with "database is locked" when another writer commits in
    between; with `transaction(immediate=True)` the lock is already held and this is free.
    """
    if _dialect(session) == "sqlite":
        session.execute(text("UPDATE model_versions SET id = id WHERE 0 = 1"))


def _lock_model(session: Session, model_id: str) -> None:
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
        _sqlite_write_lock(session)


def _record_change(
    session: Session,
    row: ModelVersion,
    to_status: ModelStatus,
    *,
    actor: str | None,
    reason: str | None,
    at: datetime,
) -> None:
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


def _audit(
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
    _sqlite_write_lock(session)
    if job_id is not None:
        existing = _row_by_job(session, job_id)
        if existing is not None:
            return _version_dict(existing)
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
    status_v = _status(status)
    if status_v not in REGISTRABLE:
        allowed = ", ".join(sorted(s.value for s in REGISTRABLE))
        raise InvalidInput("status", f"a new version may start as {allowed}")
    if regime is not None:
        if not isinstance(regime, str) or not is_regime(regime):
            raise InvalidInput("regime", "1–40 characters of a-z, 0-9, '_', '.', '-'")
        regime = regime.strip().lower()
    clean_metrics = _clean_metrics(metrics)
    artifact_v = (
        None if artifact is None else _validated(Artifact, artifact, "artifact")
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
        "params": _json_object(params, "params"),
        "tags": _check_tags(_json_object(tags, "tags")),
        "notes": _check_notes(notes),
        "artifact_uri": artifact_v.uri if artifact_v else None,  # type: ignore[attr-defined]
        "artifact_sha256": artifact_v.sha256 if artifact_v else None,  # type: ignore[attr-defined]
        "artifact_format": artifact_v.format if artifact_v else None,  # type: ignore[attr-defined]
        "lineage": _json_object(lineage, "lineage"),
        "evaluation": None if evaluation is None else _json_object(evaluation, "evaluation"),
        "job_id": job_id,
        "created_by": _check_actor(actor),
    }
    reason = _check_reason(reason) or "registered"
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
                existing = _row_by_job(session, job_id)
                if existing is not None:  # the same job's other delivery won
                    return _version_dict(existing)
            continue  # someone took this version string: pick the next one
        return _version_dict(row)
    raise Conflict(
        f"could not allocate a version for {values['model_id']} "
        f"after {_VERSION_ATTEMPTS} attempts; retry"
    )


# ---------------------------------------------------------------------------- reads


def get_version(
    session: Session, model_id: str, version: str, *, with_history: bool = False
) -> dict[str, Any]:
    """One version (NotFound if absent); with `with_history`, its status changes too."""
    _check_ids(model_id, version)
    result = _version_dict(_row(session, model_id, version))
    if with_history:
        result["history"] = history(session, model_id, version)
    return result


def get_version_by_job(session: Session, job_id: str) -> dict[str, Any] | None:
    """The version a training job registered, or None (how a redelivered step checks)."""
    row = _row_by_job(session, job_id) if isinstance(job_id, str) else None
    return None if row is None else _version_dict(row)


def get_production(session: Session, model_id: str) -> dict[str, Any] | None:
    """The current production version of `model_id`, or None."""
    if not is_model_id(model_id):
        return None
    row = _production_row(session, model_id)
    return None if row is None else _version_dict(row)


def history(session: Session, model_id: str, version: str) -> list[dict[str, Any]]:
    """Every status change of one version, oldest first (kept after deletion)."""
    if not is_model_id(model_id):
        return []
    rows = session.scalars(
        select(VersionStatusChange)
        .where(VersionStatusChange.model_id == model_id, VersionStatusChange.version == version)
        .order_by(VersionStatusChange.at, VersionStatusChange.id)
    ).all()
    return [_change_dict(r) for r in rows]


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
        stmt = stmt.where(ModelVersion.status == _status(f.status))
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
    return [_version_dict(r) for r in rows[:limit]], next_key


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
    return [_audit_dict(r) for r in rows[:limit]], next_key


# ---------------------------------------------------------------------------- writes


_UNSET: Any = object()


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
    _check_ids(model_id, version)
    actor = _check_actor(actor)
    row = _row(session, model_id, version, lock=True)
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
        row.tags = _check_tags(merged)
        changed["tags"] = dict(tags)
    if notes is not _UNSET:
        row.notes = _check_notes(notes)
        changed["notes"] = notes
    if changed:
        now = utcnow()
        row.updated_at = now
        _audit(
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
    return _version_dict(row)


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
    _check_ids(model_id, version)
    actor = _check_actor(actor)
    reason = _check_reason(reason)
    _lock_model(session, model_id)
    row = _row(session, model_id, version)
    if row.status == ModelStatus.PRODUCTION:
        raise Conflict(
            f"{model_id} {version} is in production; promote or roll back to another "
            "version first",
            model_id=model_id,
            version=version,
        )
    result = _version_dict(row)
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
    _audit(
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


def set_status(
    session: Session,
    model_id: str,
    version: str,
    status: str,
    *,
    actor: str,
    reason: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    artifact: Mapping[str, Any] | Any | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pipeline transitions: training → candidate | shadow | failed, shadow → candidate |
    retired | failed, candidate → shadow | retired, retired → candidate.

    Setting the status a version already has is a no-op (redelivered tasks), apart from
    attaching what is given. `metrics`, `evaluation`, `artifact` and `lineage` complete a
    version registered as `training`. Production is reached and left only through
    `promote`/`rollback`: asking for it here, or for any move not listed, is a Conflict.
    """
    _check_ids(model_id, version)
    actor = _check_actor(actor)
    reason = _check_reason(reason)
    target = _status(status)
    row = _row(session, model_id, version, lock=True)
    current = ModelStatus(row.status)
    if target != current and target not in _TRANSITIONS[current]:
        hint = " (use promote/rollback)" if ModelStatus.PRODUCTION in (current, target) else ""
        raise Conflict(
            f"{model_id} {version} cannot move from {current.value} to {target.value}{hint}",
            model_id=model_id,
            version=version,
            current_status=current.value,
        )
    now = utcnow()
    if metrics is not None:
        row.metrics = _clean_metrics(metrics)
        row.sharpe = row.metrics.get("sharpe")
        row.promotion_score = row.metrics.get("promotion_score")
    if evaluation is not None:
        row.evaluation = _json_object(evaluation, "evaluation")
    if lineage is not None:
        row.lineage = _json_object(lineage, "lineage")
    if artifact is not None:
        art: Any = _validated(Artifact, artifact, "artifact")
        row.artifact_uri, row.artifact_sha256, row.artifact_format = (
            art.uri,
            art.sha256,
            art.format,
        )
    if target != current:
        _record_change(session, row, target, actor=actor, reason=reason, at=now)
    elif any(v is not None for v in (metrics, evaluation, lineage, artifact)):
        row.updated_at = now
    session.flush()
    return _version_dict(row)


def _make_production(
    session: Session,
    target: ModelVersion,
    *,
    actor: str,
    reason: str | None,
    action: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Retire the current production version (if any) and put `target` there.

    Runs under `_lock_model`. The retirement is flushed first: the one-production index
    is checked row by row, and the ORM would otherwise order the two UPDATEs by primary
    key, not by intent.
    """
    model_id = target.model_id
    now = utcnow()
    current = _production_row(session, model_id)
    prior_status = ModelStatus(target.status).value
    try:
        with session.begin_nested():
            if current is not None:
                _record_change(
                    session, current, ModelStatus.RETIRED, actor=actor, reason=reason, at=now
                )
                session.flush()
            _record_change(
                session, target, ModelStatus.PRODUCTION, actor=actor, reason=reason, at=now
            )
            session.flush()
    except IntegrityError:
        # Only reachable when a writer bypassed the lock (e.g. SQLite without the write
        # lock): the index refused a second production version. Tell the caller to retry.
        raise Conflict(
            f"another promotion of {model_id} happened at the same time; retry",
            model_id=model_id,
        ) from None
    _audit(
        session,
        actor=actor,
        action=action,
        model_id=model_id,
        version=target.version,
        reason=reason,
        at=now,
        details={
            **details,
            "from_status": prior_status,
            "retired": current.version if current is not None else None,
        },
    )
    session.flush()
    version_event(session, "model.rolled_back" if action == "version.rolled_back" else
                  "model.promoted", target, actor=actor, reason=reason, retired=current)
    return {
        "model_id": model_id,
        "production": _version_dict(target),
        "retired": _version_dict(current) if current is not None else None,
        "noop": False,
    }


def promote(
    session: Session,
    model_id: str,
    version: str,
    *,
    actor: str,
    reason: str | None,
    force: bool = False,
    token: str | None = None,
) -> dict[str, Any]:
    """Make `version` the production version of `model_id`, retiring the current one.

    Accepts candidate, shadow and retired versions; failed ones only with `force` (the
    audit entry records it); training never. Promoting the version already in
    production is a no-op (`noop: true`). Returns `{"model_id", "production",
    "retired", "noop"}`. Audited as `version.promoted` with `details.token` (the API
    token that asked) and `details.force`.

    Serialized per model_id (see the module docstring): on SQLite open the transaction
    with `transaction(url, immediate=True)`.
    """
    _check_ids(model_id, version)
    actor = _check_actor(actor)
    reason = _check_reason(reason)
    _lock_model(session, model_id)
    target = _row(session, model_id, version)
    status = ModelStatus(target.status)
    if status == ModelStatus.PRODUCTION:
        return {
            "model_id": model_id,
            "production": _version_dict(target),
            "retired": None,
            "noop": True,
        }
    if status == ModelStatus.TRAINING:
        raise Conflict(
            f"{model_id} {version} is still training and cannot be promoted",
            model_id=model_id,
            version=version,
            current_status=status.value,
        )
    if status == ModelStatus.FAILED and not force:
        raise Conflict(
            f"{model_id} {version} failed; promote it only with force",
            model_id=model_id,
            version=version,
            current_status=status.value,
        )
    return _make_production(
        session,
        target,
        actor=actor,
        reason=reason,
        action="version.promoted",
        details={"token": token, "force": bool(force)},
    )


def _previous_production(session: Session, model_id: str, current: str) -> str | None:
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


def rollback(
    session: Session,
    model_id: str,
    target_version: str | None = None,
    *,
    actor: str,
    reason: str | None,
    token: str | None = None,
) -> dict[str, Any]:
    """Put an earlier version back in production, retiring the current one.

    Without `target_version`: one step back in the production history (see
    `_previous_production`): rolling back twice from v3 gives v2, then v1. Conflict
    when nothing is in production, when there is no previous version (or it was
    deleted), or when the target is training or failed.
    Same result shape as `promote`; audited as `version.rolled_back`. Serialized like
    `promote` (SQLite: `transaction(url, immediate=True)`).
    """
    _check_ids(model_id, target_version)
    actor = _check_actor(actor)
    reason = _check_reason(reason)
    _lock_model(session, model_id)
    current = _production_row(session, model_id)
    if current is None:
        if not model_known(session, model_id):
            raise NotFound(f"model {model_id} not found")
        raise Conflict(
            f"{model_id} has no production version to roll back from", model_id=model_id
        )
    undo = target_version is None
    if undo:
        target_version = _previous_production(session, model_id, current.version)
        if target_version is None:
            raise Conflict(
                f"{model_id} has no previous production version to roll back to",
                model_id=model_id,
                production=current.version,
            )
        target = session.scalars(
            select(ModelVersion).where(
                ModelVersion.model_id == model_id, ModelVersion.version == target_version
            )
        ).first()
        if target is None:
            raise Conflict(
                f"the previous production version {target_version} of {model_id} was "
                "deleted; name a target_version",
                model_id=model_id,
                production=current.version,
            )
    else:
        target = _row(session, model_id, target_version)
    if target.id == current.id:
        return {
            "model_id": model_id,
            "production": _version_dict(current),
            "retired": None,
            "noop": True,
        }
    if ModelStatus(target.status) not in PROMOTABLE:
        raise Conflict(
            f"cannot roll back {model_id} to {target.version}: it is {target.status.value}",
            model_id=model_id,
            version=target.version,
            current_status=ModelStatus(target.status).value,
        )
    return _make_production(
        session,
        target,
        actor=actor,
        reason=reason,
        action="version.rolled_back",
        details={"token": token, "from_version": current.version, "undo": undo},
    )
