"""HTTP adapter for live records and serving: GET …/versions/{version}/live,
GET /clm/models/{model_id}/serving and GET …/versions/{version}/artifact (viewer), and
GET / PUT /clm/models/{model_id}/allocation (viewer / admin: app.services.allocation).

Thin: each view opens a read-only unit of work and calls app.services.live_scores or
app.services.serving. Serving and the artifact answer with an ETag and honour
If-None-Match with 304, so a consumer can poll every few seconds cheaply.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import Field

from app.api.schema import StrictModel, documented, parse_body
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.db import transaction
from app.services import allocation, live_scores, serving

bp = Blueprint("live", __name__)
TAG = "serving"


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


def _not_modified(etag: str) -> Response | None:
    if request.if_none_match and request.if_none_match.contains(etag):
        response = Response(status=304)
        response.set_etag(etag)
        return response
    return None


@bp.get("/clm/models/<model_id>/versions/<version>/live")
@documented("The version's live record: paper trades on every bar stored after its "
            "training data ended (an empty record, bars 0 and metrics null, before the "
            "first new bar)", role="viewer",
            responses={200: "The live record", 404: "Unknown model_id or version"}, tag=TAG)
@require_role("viewer")
def live_record(model_id: str, version: str) -> Any:
    with transaction(_settings().database_url) as session:
        return jsonify(live_scores.live_record(session, model_id, version))


@bp.get("/clm/models/<model_id>/serving")
@documented("The version to run now, its artifact and allocation weights; ETag, and 304 "
            "for If-None-Match with the current tag", role="viewer",
            responses={200: "What to serve", 304: "Unchanged since the tag given",
                       404: "Unknown model or nothing in production"}, tag=TAG)
@require_role("viewer")
def serving_view(model_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        answer, etag = serving.serving_view(session, model_id, _settings())
    cached = _not_modified(etag)
    if cached is not None:
        return cached
    root = request.host_url.rstrip("/")
    for art in [answer["artifact"], *(r["artifact"] for r in answer["regimes"].values())]:
        if art is not None:
            art["download"] = root + art["download"]
    response = jsonify(answer)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/clm/models/<model_id>/versions/<version>/artifact")
@documented("The version's artifact file (sha256-verified), ETag = its sha256",
            role="viewer",
            responses={200: "The artifact bytes", 304: "Unchanged (If-None-Match)",
                       404: "Unknown version, or the version has no artifact"}, tag=TAG)
@require_role("viewer")
def artifact(model_id: str, version: str) -> Any:
    settings = _settings()
    with transaction(settings.database_url) as session:
        data, info = serving.artifact_bytes(session, settings, model_id, version)
    etag = str(info["sha256"])
    cached = _not_modified(etag)
    if cached is not None:
        return cached
    name = str(info["uri"]).split("://", 1)[-1]
    response = Response(data, mimetype="application/octet-stream")
    response.set_etag(etag)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Artifact-Format"] = str(info["format"] or "")
    response.headers["Cache-Control"] = "no-cache"
    return response


class AllocationBody(StrictModel):
    mode: Literal["champion", "thompson"] = Field(
        description="champion: production gets 1.0; thompson: production and candidates "
                    "share weights drawn by Thompson sampling each tick")
    reason: str | None = Field(None, max_length=2000)


@bp.get("/clm/models/<model_id>/allocation")
@documented("The model's allocation: mode and weights per version (sum 1)", role="viewer",
            responses={200: "The allocation", 404: "Unknown model"}, tag=TAG)
@require_role("viewer")
def get_allocation(model_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        return jsonify(allocation.allocation_view(session, model_id))


@bp.put("/clm/models/<model_id>/allocation")
@documented("Set the model's allocation mode (champion | thompson)", role="admin",
            body=AllocationBody,
            responses={200: "Set", 404: "Unknown model", 422: "Invalid body"}, tag=TAG)
@require_role("admin")
def put_allocation(model_id: str) -> Any:
    body = parse_body(AllocationBody)
    with transaction(_settings().database_url, immediate=True) as session:
        view = allocation.set_mode(session, model_id, body.mode,
                                   actor=current_actor()[:120], reason=body.reason)
    return jsonify(view)
