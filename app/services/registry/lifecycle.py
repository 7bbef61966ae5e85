"""Registry lifecycle: status moves after registration, promotion and rollback.

Owns: the pipeline's transitions (`set_status`), promotion (`promote`) and rollback
(`rollback`, one step back in the production history or to a named version), each
serialized per model_id with `rows.lock_model` (see the package docstring), recorded in
the status history and the audit log, and announced through the outbox
(`model.promoted` / `model.rolled_back`, committed with the change).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.outbox import version_event  # outbox: events commit with the change
from app.core.domain import ModelStatus
from app.core.errors import Conflict, NotFound
from app.core.timeutil import utcnow
from app.models.registry import ModelVersion
from app.services.registry.history import model_known, previous_production
from app.services.registry.rows import (
    lock_model,
    production_row,
    record_change,
    version_row,
    write_audit,
)
from app.services.registry.validation import (
    Artifact,
    check_actor,
    check_ids,
    check_reason,
    json_object,
    parse_status,
    validate_metrics,
    validated,
)
from app.services.registry.views import version_dict

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
    check_ids(model_id, version)
    actor = check_actor(actor)
    reason = check_reason(reason)
    target = parse_status(status)
    row = version_row(session, model_id, version, lock=True)
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
        row.metrics = validate_metrics(metrics)
        row.sharpe = row.metrics.get("sharpe")
        row.promotion_score = row.metrics.get("promotion_score")
    if evaluation is not None:
        row.evaluation = json_object(evaluation, "evaluation")
    if lineage is not None:
        row.lineage = json_object(lineage, "lineage")
    if artifact is not None:
        art: Any = validated(Artifact, artifact, "artifact")
        row.artifact_uri, row.artifact_sha256, row.artifact_format = (
            art.uri,
            art.sha256,
            art.format,
        )
    if target != current:
        record_change(session, row, target, actor=actor, reason=reason, at=now)
    elif any(v is not None for v in (metrics, evaluation, lineage, artifact)):
        row.updated_at = now
    session.flush()
    return version_dict(row)


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

    Runs under `lock_model`. The retirement is flushed first: the one-production index
    is checked row by row, and the ORM would otherwise order the two UPDATEs by primary
    key, not by intent.
    """
    model_id = target.model_id
    now = utcnow()
    current = production_row(session, model_id)
    prior_status = ModelStatus(target.status).value
    try:
        with session.begin_nested():
            if current is not None:
                record_change(
                    session, current, ModelStatus.RETIRED, actor=actor, reason=reason, at=now
                )
                session.flush()
            record_change(
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
    write_audit(
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
        "production": version_dict(target),
        "retired": version_dict(current) if current is not None else None,
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
    check_ids(model_id, version)
    actor = check_actor(actor)
    reason = check_reason(reason)
    lock_model(session, model_id)
    target = version_row(session, model_id, version)
    status = ModelStatus(target.status)
    if status == ModelStatus.PRODUCTION:
        return {
            "model_id": model_id,
            "production": version_dict(target),
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
    `history.previous_production`): rolling back twice from v3 gives v2, then v1. Conflict
    when nothing is in production, when there is no previous version (or it was
    deleted), or when the target is training or failed.
    Same result shape as `promote`; audited as `version.rolled_back`. Serialized like
    `promote` (SQLite: `transaction(url, immediate=True)`).
    """
    check_ids(model_id, target_version)
    actor = check_actor(actor)
    reason = check_reason(reason)
    lock_model(session, model_id)
    current = production_row(session, model_id)
    if current is None:
        if not model_known(session, model_id):
            raise NotFound(f"model {model_id} not found")
        raise Conflict(
            f"{model_id} has no production version to roll back from", model_id=model_id
        )
    undo = target_version is None
    if undo:
        target_version = previous_production(session, model_id, current.version)
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
        target = version_row(session, model_id, target_version)
    if target.id == current.id:
        return {
            "model_id": model_id,
            "production": version_dict(current),
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
