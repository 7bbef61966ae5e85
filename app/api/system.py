"""System endpoints: /health and /openapi.json (no token needed)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from app.api.problems import problem_response
from app.api.schema import build_openapi, documented
from app.bus.broker import ping_broker
from app.core.config import S3Location
from app.core.objectstore import open_object_store
from app.core.version import __version__
from app.db import ping

bp = Blueprint("system", __name__)


@bp.get("/health")
@documented("Liveness and dependency reachability", responses={200: "OK", 503: "Degraded"})
def health() -> Any:
    settings = current_app.config["CLM_SETTINGS"]
    database_ok = ping(settings.database_url)
    broker_ok = ping_broker(settings)
    checks = {
        "database": {"reachable": database_ok, "backend": settings.database_url.split(":")[0]},
        "broker": {"reachable": broker_ok, "backend": settings.broker_url.split(":")[0]},
    }
    # Files in an object store are a dependency like the database; a local folder is not.
    remote = {(r.bucket, r.endpoint_url): r for r in (settings.data_dir, settings.artifact_root)
              if isinstance(r, S3Location)}
    if remote:
        checks["object_store"] = {
            "reachable": all(open_object_store(r).reachable() for r in remote.values()),
            "backend": "s3"}
    if all(check["reachable"] for check in checks.values()):
        return jsonify({"status": "ok", "version": __version__, **checks})
    down = [name for name, check in checks.items() if not check["reachable"]]
    # Every 5xx body is problem+json (contract); the checks ride along as extensions.
    return problem_response(
        503, "Service unavailable", f"not reachable: {', '.join(down)}", version=__version__,
        **checks,
    )


@bp.get("/openapi.json")
@documented("This OpenAPI document")
def openapi() -> Any:
    return jsonify(build_openapi(current_app))
