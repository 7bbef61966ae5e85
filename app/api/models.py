"""HTTP adapter for the model registry: /clm/models (with a version's report, from
app.services.reports), /clm/promote, /clm/rollback, /clm/audit and /clm/status.

Thin: each view validates its input with a pydantic model (`parse_body`/`parse_query`,
which also feed /openapi.json), opens the unit of work, calls `app.services.registry` (or
`app.services.status`) and returns what it returns. Writes open the transaction with
`immediate=True` so SQLite serializes them the way PostgreSQL's row locks do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, g, jsonify
from pydantic import AfterValidator, ConfigDict, Field, StrictBool, model_validator

from app.api.pagination import PageQuery, decode_cursor, encode_cursor
from app.api.problems import unprocessable
from app.api.schema import (
    QueryModel,
    StrictModel,
    Symbol,
    documented,
    parse_body,
    parse_query,
)
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.core.domain import REGIME_PATTERN, ModelStatus, ModelType, Timeframe
from app.core.errors import NotFound
from app.core.timeutil import ensure_utc, isoformat, utcnow
from app.db import read_transaction, transaction
from app.services import registry, reports
from app.services.status import collect_status

bp = Blueprint("models", __name__)


# ---------------------------------------------------------------------------- field types


def _utc(value: datetime) -> datetime:
    # A naive time means UTC; an aware one near the calendar's end can overflow when
    # converted, which is the client's mistake (422), not a server error.
    try:
        return ensure_utc(value)
    except OverflowError:
        raise ValueError("date is out of range") from None


def _model_id(value: str) -> str:
    if not registry.is_model_id(value):
        raise ValueError("not a model id ({model_type}_{symbol}_{timeframe})")
    return value


Text = Annotated[str, AfterValidator(registry.no_nul)]
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Actor = Annotated[Text, Field(min_length=1, max_length=120)]
Reason = Annotated[Text, Field(min_length=1, max_length=10_000)]
ModelId = Annotated[str, Field(max_length=120), AfterValidator(_model_id)]
Version = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
TagName = Annotated[Text, Field(min_length=1, max_length=64)]
TagValue = Annotated[Text, Field(max_length=500)]
Regime = Annotated[str, Field(pattern=REGIME_PATTERN)]


class ArtifactBody(registry.Artifact):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(StrictModel):
    model_type: ModelType
    symbol: Symbol
    timeframe: Timeframe
    metrics: registry.Metrics
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[TagName, TagValue] = Field(default_factory=dict, max_length=50)
    notes: Annotated[Text, Field(max_length=10_000)] | None = None
    status: Literal["candidate", "shadow"] = "candidate"
    regime: Regime | None = None
    artifact: ArtifactBody | None = None
    lineage: dict[str, Any] | None = None


class UpdateBody(StrictModel):
    tags: dict[TagName, TagValue | None] | None = Field(
        None, description="merged into the version's tags; a null value removes that tag"
    )
    notes: Annotated[Text, Field(max_length=10_000)] | None = Field(
        None, description="replaces the notes; null clears them"
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateBody:
        if not self.model_fields_set:
            raise ValueError("give tags and/or notes")
        return self


class PromoteBody(StrictModel):
    model_id: ModelId
    version: Version
    promoted_by: Actor
    reason: Reason
    force: StrictBool = Field(False, description="needed to promote a failed version")


class RollbackBody(StrictModel):
    model_id: ModelId
    target_version: Version | None = Field(
        None, description="default: the version the current production one replaced"
    )
    rollback_by: Actor
    reason: Reason


class VersionListQuery(PageQuery):
    model_id: Annotated[Text, Field(max_length=120)] | None = None
    model_type: ModelType | None = None
    symbol: Symbol | None = None
    timeframe: Timeframe | None = None
    status: ModelStatus | None = None
    regime: Regime | None = None
    min_sharpe: float | None = Field(None, allow_inf_nan=False)
    created_after: UtcDatetime | None = Field(None, description="inclusive")
    created_before: UtcDatetime | None = Field(None, description="exclusive")


class AuditListQuery(PageQuery):
    actor: Annotated[Text, Field(max_length=120)] | None = None
    action: Annotated[Text, Field(max_length=60)] | None = Field(
        None, description="e.g. version.promoted, version.rolled_back, version.deleted"
    )
    model_id: Annotated[Text, Field(max_length=120)] | None = None
    since: UtcDatetime | None = Field(None, description="inclusive")
    until: UtcDatetime | None = Field(None, description="exclusive")


class DeleteQuery(QueryModel):
    reason: Annotated[Text, Field(max_length=10_000)] | None = None


class ProductionQuery(QueryModel):
    at: UtcDatetime | None = Field(None, description="default: now")


# ---------------------------------------------------------------------------- helpers


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


def _url() -> str:
    return _settings().database_url


def _token_name() -> str | None:
    token = g.get("token")
    return token.name if token is not None else None


def _after_key(cursor: str | None) -> int | None:
    key = decode_cursor(cursor)
    if key is None:
        return None
    # Keys are row ids; anything else was not made by this API.
    if isinstance(key, bool) or not isinstance(key, int) or not 0 < key < 2**63:
        raise unprocessable("cursor", "not a cursor returned by this API")
    return key


def _page(items: list[dict[str, Any]], next_key: int | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": None if next_key is None else encode_cursor(next_key)}


# ---------------------------------------------------------------------------- views


@bp.get("/clm/models")
@documented(
    "List model versions (newest first)",
    role="viewer",
    query=VersionListQuery,
    tag="models",
)
@require_role("viewer")
def list_versions() -> Any:
    q = parse_query(VersionListQuery)
    filters = registry.VersionQuery(**q.model_dump(exclude={"limit", "cursor"}))
    after_key = _after_key(q.cursor)
    with read_transaction(_url()) as session:
        items, next_key = registry.query_versions(
            session, filters, limit=q.limit, after_key=after_key
        )
    return jsonify(_page(items, next_key))


@bp.post("/clm/models")
@documented(
    "Register an externally trained version",
    role="operator",
    body=RegisterBody,
    responses={201: "Registered: the new version", 422: "Invalid body"},
    tag="models",
)
@require_role("operator")
def register_version() -> Any:
    body = parse_body(RegisterBody)
    with transaction(_url(), immediate=True) as session:
        result = registry.register_version(
            session,
            model_type=body.model_type.value,
            symbol=body.symbol,
            timeframe=body.timeframe.value,
            metrics=body.metrics,
            params=body.params,
            tags=body.tags,
            notes=body.notes,
            status=body.status,
            regime=body.regime,
            artifact=body.artifact,
            lineage=body.lineage,
            actor=current_actor()[:120],
        )
    response = jsonify(result)
    response.status_code = 201
    response.headers["Location"] = (
        f"/clm/models/{result['model_id']}/versions/{result['version']}"
    )
    return response


@bp.get("/clm/models/<model_id>/versions/<version>")
@documented(
    "One version with its status history",
    role="viewer",
    responses={200: "The version", 404: "Unknown model_id or version"},
    tag="models",
)
@require_role("viewer")
def get_version(model_id: str, version: str) -> Any:
    with read_transaction(_url()) as session:
        return jsonify(registry.get_version(session, model_id, version, with_history=True))


@bp.get("/clm/models/<model_id>/versions/<version>/report")
@documented(
    "A version's diagnostics: attributions, calibration, per-regime and per-period "
    "out-of-sample metrics, trade distribution",
    role="viewer",
    responses={200: "The report (available false: the version has none)",
               404: "Unknown model_id or version"},
    tag="models",
)
@require_role("viewer")
def version_report(model_id: str, version: str) -> Any:
    with read_transaction(_url()) as session:
        return jsonify(reports.version_report(session, model_id, version))


@bp.patch("/clm/models/<model_id>/versions/<version>")
@documented(
    "Edit a version's tags and notes",
    role="operator",
    body=UpdateBody,
    responses={200: "The updated version", 404: "Unknown model_id or version"},
    tag="models",
)
@require_role("operator")
def update_version(model_id: str, version: str) -> Any:
    body = parse_body(UpdateBody)
    kwargs: dict[str, Any] = {}
    if "tags" in body.model_fields_set:
        kwargs["tags"] = body.tags
    if "notes" in body.model_fields_set:
        kwargs["notes"] = body.notes
    with transaction(_url(), immediate=True) as session:
        result = registry.update_version(
            session, model_id, version, actor=current_actor()[:120], **kwargs
        )
    return jsonify(result)


@bp.delete("/clm/models/<model_id>/versions/<version>")
@documented(
    "Delete a version (not the production one)",
    role="admin",
    query=DeleteQuery,
    responses={
        200: "Deleted",
        404: "Unknown model_id or version",
        409: "The version is in production",
    },
    tag="models",
)
@require_role("admin")
def delete_version(model_id: str, version: str) -> Any:
    q = parse_query(DeleteQuery)
    with transaction(_url(), immediate=True) as session:
        deleted = registry.delete_version(
            session,
            model_id,
            version,
            actor=current_actor()[:120],
            reason=q.reason,
            token=_token_name(),
        )
    return jsonify(
        {
            "model_id": model_id,
            "version": version,
            "deleted": True,
            "previous_status": deleted["status"],
        }
    )


@bp.get("/clm/models/<model_id>/production")
@documented(
    "Which version was in production at a time (default now), since when, who and why",
    role="viewer",
    query=ProductionQuery,
    responses={200: "The answer (version null when none was)", 404: "Unknown model_id"},
    tag="models",
)
@require_role("viewer")
def production_at(model_id: str) -> Any:
    q = parse_query(ProductionQuery)
    at = q.at or utcnow()
    with read_transaction(_url()) as session:
        if not registry.model_known(session, model_id):
            raise NotFound(f"model {model_id!r} not found")
        found = registry.production_at(session, model_id, at)
    answer: dict[str, Any] = {"model_id": model_id, "at": isoformat(at)}
    answer.update(found or {"version": None, "since": None, "actor": None, "reason": None})
    return jsonify(answer)


@bp.post("/clm/promote")
@documented(
    "Promote a version to production, retiring the current one",
    role="admin",
    body=PromoteBody,
    responses={
        200: "{model_id, production, retired, noop}",
        404: "Unknown model_id or version",
        409: "The version cannot be promoted (training; failed without force)",
    },
    tag="lifecycle",
)
@require_role("admin")
def promote() -> Any:
    body = parse_body(PromoteBody)
    with transaction(_url(), immediate=True) as session:
        result = registry.promote(
            session,
            body.model_id,
            body.version,
            actor=body.promoted_by,
            reason=body.reason,
            force=body.force,
            token=_token_name(),
        )
    return jsonify(result)


@bp.post("/clm/rollback")
@documented(
    "Put the previous (or a named) version back in production",
    role="admin",
    body=RollbackBody,
    responses={
        200: "{model_id, production, retired, noop}",
        404: "Unknown model_id or target_version",
        409: "Nothing to roll back from or to",
    },
    tag="lifecycle",
)
@require_role("admin")
def rollback() -> Any:
    body = parse_body(RollbackBody)
    with transaction(_url(), immediate=True) as session:
        result = registry.rollback(
            session,
            body.model_id,
            body.target_version,
            actor=body.rollback_by,
            reason=body.reason,
            token=_token_name(),
        )
    return jsonify(result)


@bp.get("/clm/audit")
@documented(
    "Audit log: promotions, rollbacks, deletions, token use (newest first)",
    role="viewer",
    query=AuditListQuery,
    tag="lifecycle",
)
@require_role("viewer")
def audit() -> Any:
    q = parse_query(AuditListQuery)
    filters = registry.AuditQuery(**q.model_dump(exclude={"limit", "cursor"}))
    after_key = _after_key(q.cursor)
    with read_transaction(_url()) as session:
        items, next_key = registry.query_audit(
            session, filters, limit=q.limit, after_key=after_key
        )
    return jsonify(_page(items, next_key))


@bp.get("/clm/status")
@documented(
    "Versions and jobs by status, queue depths, scheduler state",
    role="viewer",
    tag="system",
)
@require_role("viewer")
def status() -> Any:
    with read_transaction(_url()) as session:
        return jsonify(collect_status(session, _settings()))
