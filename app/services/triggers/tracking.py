"""Tracked models: which models the scheduler looks after, with their own cadence and
thresholds (the `tracked_models` table).

Owns `track_model` / `untrack_model` / `list_tracked` and `check_tracked_params` (the
one check of a tracked model's trainer params, for POST /clm/tracked and `clm track`
alike), plus the small rules every trigger module shares: `parse_model_id`,
`interval_hours_for`, `due_at`. The tracked set is every model_id with a production
version plus any tracked explicitly (own interval and thresholds); `tracked_union` is
that set as one selectable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import literal, null, select, true, union_all
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelStatus, ModelType, make_model_id, split_model_id
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import ensure_utc, isoformat
from app.ml.trainers import InvalidParams, TrainerNotAvailable, get_trainer
from app.models.continuous import TrackedModel, TrackingSource
from app.models.registry import ModelVersion

__all__ = [
    "check_tracked_params",
    "due_at",
    "interval_hours_for",
    "list_tracked",
    "parse_model_id",
    "production_row",
    "track_model",
    "tracked_overrides",
    "tracked_union",
    "untrack_model",
]


def parse_model_id(model_id: str) -> tuple[str, str, str]:
    """(model_type, SYMBOL, timeframe) of a contract model id; NotFound when it cannot be
    one (the API answers 404 for an id that cannot exist)."""
    parts = split_model_id(model_id)
    if parts is None:
        raise NotFound(f"model {model_id!r} not found: not a model id")
    return parts


def interval_hours_for(settings: Settings, model_type: str, override: float | None) -> float:
    """Periodic retraining interval: the tracked row's own, else the per-type setting."""
    if override is not None:
        return float(override)
    return float(settings.retrain_interval_hours.get(
        str(model_type), settings.retrain_interval_hours.get("other", 168.0)))


def due_at(anchor: datetime | None, interval_hours: float) -> datetime | None:
    """When the next periodic training is due (None: never trained → due now)."""
    if anchor is None:
        return None
    return ensure_utc(anchor) + timedelta(hours=interval_hours)


def tracked_union() -> Any:
    """Every tracked model as one selectable: enabled explicit/production rows plus
    production models with no tracked row. Columns: model_id, model_type, symbol,
    timeframe, source, interval_hours, anchor_at, last_job_id, row_id."""
    t = TrackedModel
    explicit = select(
        t.model_id.label("model_id"), t.model_type.label("model_type"),
        t.symbol.label("symbol"), t.timeframe.label("timeframe"), t.source.label("source"),
        t.interval_hours.label("interval_hours"), t.anchor_at.label("anchor_at"),
        t.last_job_id.label("last_job_id"), t.id.label("row_id"),
    ).where(t.enabled == true())
    mv = ModelVersion
    implicit = select(
        mv.model_id, mv.model_type, mv.symbol, mv.timeframe,
        literal(TrackingSource.PRODUCTION.value), null(), mv.created_at, null(), null(),
    ).where(
        mv.status == ModelStatus.PRODUCTION,
        ~select(t.id).where(t.model_id == mv.model_id).exists(),
    )
    return union_all(explicit, implicit).subquery("tracked")


def _tracked_dict(row: Any, settings: Settings, extra: TrackedModel | None = None
                  ) -> dict[str, Any]:
    interval = interval_hours_for(settings, row.model_type, row.interval_hours)
    nxt = due_at(row.anchor_at, interval)
    out: dict[str, Any] = {
        "model_id": row.model_id,
        "model_type": str(row.model_type),
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "source": str(row.source),
        "enabled": True,
        "interval_hours": interval,
        "interval_overridden": row.interval_hours is not None,
        "last_trained_at": isoformat(row.anchor_at) if row.anchor_at else None,
        "next_due_at": isoformat(nxt) if nxt else None,
        "last_job_id": row.last_job_id,
        "thresholds": {
            "drift_psi_threshold": settings.drift_psi_threshold,
            "drift_feature_share": settings.drift_feature_share,
            "degraded_sharpe": settings.degraded_sharpe,
            "min_trades": settings.performance_min_trades,
        },
        "dataset_span_days": None,
        "params": None,
    }
    if extra is not None:
        out["enabled"] = bool(extra.enabled)
        for key in ("drift_psi_threshold", "drift_feature_share", "degraded_sharpe",
                    "min_trades"):
            value = getattr(extra, key)
            if value is not None:
                out["thresholds"][key] = value
        out["dataset_span_days"] = extra.dataset_span_days
        out["params"] = extra.params
        out["created_by"] = extra.created_by
        out["created_at"] = isoformat(extra.created_at)
    return out


def tracked_overrides(session: Session, model_id: str) -> dict[str, Any]:
    """The per-model thresholds a tracked row sets (only the non-default ones)."""
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          ).scalar_one_or_none()
    if row is None:
        return {}
    keys = ("drift_psi_threshold", "drift_feature_share", "degraded_sharpe", "min_trades")
    return {k: getattr(row, k) for k in keys if getattr(row, k) is not None}


def list_tracked(
    session: Session,
    settings: Settings,
    *,
    model_id: str | None = None,
    model_type: str | None = None,
    source: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Tracked models ordered by model_id (keyset `after`), `limit + 1` rows fetched so
    the caller can tell whether there is a next page. Returns (items, keys)."""
    u = tracked_union()
    stmt = select(u)
    if model_id:
        stmt = stmt.where(u.c.model_id == model_id)
    if model_type:
        stmt = stmt.where(u.c.model_type == model_type)
    if source:
        stmt = stmt.where(u.c.source == source)
    if after is not None:
        stmt = stmt.where(u.c.model_id > after)
    rows = session.execute(stmt.order_by(u.c.model_id).limit(limit + 1)).all()
    ids = [r.row_id for r in rows if r.row_id is not None]
    extras = {}
    if ids:
        extras = {t.id: t for t in session.scalars(select(TrackedModel)
                                                   .where(TrackedModel.id.in_(ids)))}
    items = [_tracked_dict(r, settings, extras.get(r.row_id)) for r in rows]
    return items, [r.model_id for r in rows]


def production_row(session: Session, model_id: str) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.model_id == model_id,
                                   ModelVersion.status == ModelStatus.PRODUCTION)
    ).scalar_one_or_none()


def track_model(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    interval_hours: float | None = None,
    drift_psi_threshold: float | None = None,
    drift_feature_share: float | None = None,
    degraded_sharpe: float | None = None,
    min_trades: int | None = None,
    dataset_span_days: int | None = None,
    params: Mapping[str, Any] | None = None,
    actor: str | None = None,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Track a model explicitly (or update its overrides). Returns (tracked, created).

    A new row's periodic clock starts at its production version's training time when it
    has one, otherwise it is due at the next tick (never trained). Params the trainer
    would refuse are refused first (`check_tracked_params`).
    """
    check_tracked_params(model_type, params)
    try:
        model_id = make_model_id(model_type, symbol, timeframe)
    except ValueError as exc:
        field_name = "timeframe" if "timeframe" in str(exc) else (
            "symbol" if "symbol" in str(exc) else "model_type")
        raise InvalidInput(field_name, str(exc)) from None
    _check_positive("interval_hours", interval_hours)
    _check_positive("drift_psi_threshold", drift_psi_threshold)
    if drift_feature_share is not None and not (0 < drift_feature_share <= 1):
        raise InvalidInput("drift_feature_share", "must be in (0, 1]")
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          .with_for_update()).scalar_one_or_none()
    created = row is None
    if row is None:
        prod = production_row(session, model_id)
        row = TrackedModel(
            model_id=model_id, model_type=ModelType(model_type),
            symbol=symbol.strip().upper(), timeframe=timeframe,
            anchor_at=prod.created_at if prod is not None else None,
            created_by=actor, created_at=now,
        )
        session.add(row)
    elif not row.enabled:
        created = True  # re-tracking a model that was untracked
    row.source = TrackingSource.EXPLICIT
    row.enabled = True
    row.interval_hours = interval_hours
    row.drift_psi_threshold = drift_psi_threshold
    row.drift_feature_share = drift_feature_share
    row.degraded_sharpe = degraded_sharpe
    row.min_trades = min_trades
    row.dataset_span_days = dataset_span_days
    row.params = dict(params) if params is not None else None
    row.updated_at = now
    session.flush()
    items, _ = list_tracked(session, settings, model_id=model_id, limit=1)
    return items[0], created


def check_tracked_params(model_type: str, params: Mapping[str, Any] | None) -> None:
    """Refuse (InvalidInput naming `params.<key>`) params the model type's trainer would
    refuse at every retrain; without an installed trainer they cannot be checked yet (a
    plug-in installed later checks them at retrain time)."""
    if not params:
        return
    try:
        trainer = get_trainer(model_type, params)
    except TrainerNotAvailable:
        return
    except InvalidParams as exc:
        raise InvalidInput(f"params.{exc.key}", str(exc)) from None
    try:
        trainer.validate_params(dict(params))
    except InvalidParams as exc:
        raise InvalidInput(f"params.{exc.key}", str(exc)) from None


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InvalidInput(name, "must be a positive number")


def untrack_model(session: Session, settings: Settings, model_id: str, *, now: datetime
                  ) -> dict[str, Any]:
    """Stop tracking `model_id` (explicit or production). The row is kept disabled, so a
    production model stays untracked and its history remains. NotFound when not tracked."""
    model_type, symbol, timeframe = parse_model_id(model_id)
    row = session.execute(select(TrackedModel).where(TrackedModel.model_id == model_id)
                          .with_for_update()).scalar_one_or_none()
    if row is None or not row.enabled:
        prod = production_row(session, model_id) if row is None else None
        if prod is None:
            raise NotFound(f"model {model_id} is not tracked")
        row = TrackedModel(model_id=model_id, model_type=ModelType(model_type), symbol=symbol,
                           timeframe=timeframe, source=TrackingSource.PRODUCTION,
                           anchor_at=prod.created_at, created_at=now)
        session.add(row)
    row.enabled = False
    row.updated_at = now
    session.flush()
    return {"model_id": model_id, "tracked": False, "source": str(row.source),
            "untracked_at": isoformat(now)}
