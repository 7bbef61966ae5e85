"""Registry rows as the API's JSON shapes: versions, status changes, audit entries.

Owns the one place a `ModelVersion`, `VersionStatusChange` or `AuditEntry` row becomes a
plain dict; every registry function returns these shapes.
"""

from __future__ import annotations

from typing import Any

from app.core.domain import ModelStatus, ModelType
from app.core.timeutil import isoformat
from app.models.registry import AuditEntry, ModelVersion, VersionStatusChange


def version_dict(row: ModelVersion) -> dict[str, Any]:
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


def change_dict(row: VersionStatusChange) -> dict[str, Any]:
    return {
        "from_status": row.from_status,
        "to_status": row.to_status,
        "at": isoformat(row.at),
        "actor": row.actor,
        "reason": row.reason,
    }


def audit_dict(row: AuditEntry) -> dict[str, Any]:
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
