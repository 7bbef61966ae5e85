"""How a model's traffic is split between its versions: champion or Thompson sampling.

Owns `allocation_view` (GET /clm/models/{model_id}/allocation, the weights /serving
carries, and the console's view), `set_mode` (PUT …/allocation), `redraw` (one
Thompson step, run by each scheduler tick after live scoring: app.flows.deployment),
`guard_state` / `save_guard_state` (the auto-rollback guard's memory, kept on the same
row) and `allocation_metric_rows` (Prometheus).

Modes: `champion` (default) — production gets 1.0. `thompson` — production and the
candidates with a live record share weights: each arm's probability of having the
highest mean live per-bar net return under a Normal-Inverse-Gamma posterior
(app.analysis.bandit, which says why), then a floor for production
(CLM_ALLOCATION_PRODUCTION_FLOOR), a cap for newcomers (CLM_ALLOCATION_NEWCOMER_CAP) and
a limit on each weight's change per tick (CLM_ALLOCATION_MAX_STEP). A change smaller than
`MIN_CHANGE` keeps the previous weights (Monte-Carlo noise must not move the serving
ETag every tick). Every change is a history row, an audit entry (actor `clm`) and an
`allocation.changed` event. CLM does not trade: consumers read the weights.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.analysis.bandit import NormalInverseGamma, constrain_weights, thompson_probabilities
from app.bus.outbox import emit
from app.core.config import Settings
from app.core.domain import ModelStatus
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import isoformat, utcnow
from app.models.allocation import Allocation, AllocationChange
from app.models.live import LiveScore
from app.models.registry import ModelVersion
from app.services import registry
from app.services.live_scores import live_bars
from app.services.registry.rows import write_audit

__all__ = ["MIN_CHANGE", "MODES", "allocation_history", "allocation_metric_rows",
           "allocation_view", "guard_state", "redraw", "save_guard_state", "set_mode",
           "weights_for_serving"]

MODES = ("champion", "thompson")
# Largest per-version change below which a redraw keeps the previous weights.
MIN_CHANGE = 0.01
ACTOR = "clm"


def _row(session: Session, model_id: str, *, create: bool = False) -> Allocation | None:
    row = session.get(Allocation, model_id)
    if row is None and create:
        row = Allocation(model_id=model_id, mode="champion", weights={}, guard={},
                         updated_at=utcnow())
        session.add(row)
        session.flush()
    return row


def _production(session: Session, model_id: str) -> str | None:
    prod = registry.get_production(session, model_id)
    return prod["version"] if prod else None


def _current_weights(row: Allocation | None, production: str | None) -> dict[str, float]:
    """The weights in force: champion mode (or stored weights that do not name the
    current production version, e.g. right after a rollback) → production gets 1.0."""
    if production is None:
        return {}
    if row is None or row.mode != "thompson" or production not in (row.weights or {}):
        return {production: 1.0}
    return {k: float(v) for k, v in sorted(row.weights.items())}


def weights_for_serving(session: Session, model_id: str, production: str) -> dict[str, float]:
    """The allocation /serving carries for `model_id` whose production is `production`."""
    return _current_weights(_row(session, model_id), production)


def allocation_view(session: Session, model_id: str) -> dict[str, Any]:
    """{"model_id", "mode", "weights": {version: w}, "updated_at", "production"}; weights
    sum to 1 ({} with nothing in production). NotFound for an unknown model."""
    if not registry.model_known(session, model_id):
        raise NotFound(f"model {model_id} not found")
    row = _row(session, model_id)
    production = _production(session, model_id)
    return {"model_id": model_id, "mode": row.mode if row is not None else "champion",
            "weights": _current_weights(row, production),
            "updated_at": isoformat(row.updated_at) if row is not None else None,
            "production": production}


def allocation_history(session: Session, model_id: str, limit: int = 50
                       ) -> list[dict[str, Any]]:
    """The latest changes of `model_id`'s allocation, newest first."""
    rows = session.scalars(select(AllocationChange).where(
        AllocationChange.model_id == model_id).order_by(AllocationChange.id.desc())
        .limit(limit)).all()
    return [{"at": isoformat(r.at), "mode": r.mode, "weights": r.weights, "actor": r.actor,
             "reason": r.reason, "details": r.details} for r in rows]


def _record(session: Session, row: Allocation, *, weights: dict[str, float], actor: str,
            reason: str, details: dict[str, Any], now: datetime) -> None:
    row.weights = weights
    row.updated_at = now
    session.add(AllocationChange(model_id=row.model_id, at=now, mode=row.mode,
                                 weights=weights, details=details, actor=actor,
                                 reason=reason))
    write_audit(session, actor=actor, action="allocation.changed", model_id=row.model_id,
                version=None, reason=reason, at=now,
                details={"mode": row.mode, "weights": weights, **details})
    emit(session, "allocation.changed", {"model_id": row.model_id, "mode": row.mode,
                                         "weights": weights, "actor": actor,
                                         "reason": reason})
    session.flush()


def set_mode(session: Session, model_id: str, mode: str, *, actor: str,
             reason: str | None = None) -> dict[str, Any]:
    """Set `model_id`'s allocation mode (PUT …/allocation). Switching resets the weights
    to production 1.0 (Thompson then moves them at most one step per tick)."""
    if mode not in MODES:
        raise InvalidInput("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if not registry.model_known(session, model_id):
        raise NotFound(f"model {model_id} not found")
    row = _row(session, model_id, create=True)
    assert row is not None
    if row.mode != mode:
        row.mode = mode
        production = _production(session, model_id)
        _record(session, row, weights={production: 1.0} if production else {}, actor=actor,
                reason=reason or f"allocation mode set to {mode}", details={}, now=utcnow())
    return allocation_view(session, model_id)


def _arms(session: Session, model_id: str, production: str) -> list[str]:
    """Production and the candidates that have a live record."""
    rows = session.execute(
        select(ModelVersion.version).join(
            LiveScore, (LiveScore.model_id == ModelVersion.model_id)
            & (LiveScore.version == ModelVersion.version))
        .where(ModelVersion.model_id == model_id,
               ModelVersion.status == ModelStatus.CANDIDATE, LiveScore.bars > 1)
        .order_by(ModelVersion.id)).all()
    return [production] + [r[0] for r in rows if r[0] != production]


def redraw(session: Session, settings: Settings, model_id: str, *, now: datetime
           ) -> dict[str, Any] | None:
    """One Thompson step of a model in `thompson` mode (None otherwise, or without
    production): the posteriors of each arm's last CLM_ALLOCATION_WINDOW_BARS live
    returns, P(best) by joint draws, then floor, cap and step limit. Returns
    {"weights", "probabilities", "changed"}."""
    row = _row(session, model_id)
    production = _production(session, model_id)
    if row is None or row.mode != "thompson" or production is None:
        return None
    arms = _arms(session, model_id, production)
    returns = {}
    for version in arms:
        r = live_bars(session, model_id, version, last=settings.allocation_window_bars)["ret"]
        returns[version] = r.dropna().to_numpy(dtype=np.float64)
    pooled = np.concatenate([r for r in returns.values() if r.size] or [np.zeros(1)])
    scale = float(pooled.std()) if pooled.size > 1 else 0.0
    prior = NormalInverseGamma.prior(scale or 1e-3)
    posteriors = {v: prior.update(r) for v, r in returns.items()}
    # seeded by the model and its bars: a redraw of the same data draws the same weights
    seed_text = f"{model_id}:" + ",".join(f"{v}={r.size}" for v, r in returns.items())
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    probabilities = thompson_probabilities(posteriors, np.random.default_rng(seed))
    previous = _current_weights(row, production)
    weights = constrain_weights(probabilities, previous, production=production,
                                floor=settings.allocation_production_floor,
                                cap=settings.allocation_newcomer_cap,
                                max_step=settings.allocation_max_step)
    weights = {k: round(v, 6) for k, v in weights.items()}
    drift = max(abs(weights.get(k, 0.0) - previous.get(k, 0.0))
                for k in set(weights) | set(previous))
    changed = drift >= MIN_CHANGE or set(weights) != set(previous)
    if changed:
        details = {"probabilities": probabilities, "bars": {v: int(r.size) for v, r in
                                                            returns.items()},
                   "posteriors": {v: p.to_dict() for v, p in posteriors.items()},
                   "previous": previous, "floor": settings.allocation_production_floor,
                   "cap": settings.allocation_newcomer_cap,
                   "max_step": settings.allocation_max_step}
        shown = ", ".join(f"{v} {w:.3f} (P(best) {probabilities[v]:.3f}, "
                          f"{int(returns[v].size)} bars)" for v, w in weights.items())
        _record(session, row, weights=weights, actor=ACTOR,
                reason=f"Thompson allocation: {shown}", details=details, now=now)
    return {"weights": weights if changed else previous, "probabilities": probabilities,
            "changed": changed}


def guard_state(session: Session, model_id: str) -> dict[str, Any]:
    """The auto-rollback guard's memory of `model_id` ({} before its first action)."""
    row = _row(session, model_id)
    return dict(row.guard or {}) if row is not None else {}


def save_guard_state(session: Session, model_id: str, state: dict[str, Any]) -> None:
    row = _row(session, model_id, create=True)
    assert row is not None
    row.guard = dict(state)
    session.flush()


def allocation_metric_rows(session: Session) -> list[tuple[str, str, str, float]]:
    """(model_id, version, mode, weight) of every model with a production version."""
    prods = session.execute(select(ModelVersion.model_id, ModelVersion.version).where(
        ModelVersion.status == ModelStatus.PRODUCTION).order_by(ModelVersion.model_id)).all()
    rows = {r.model_id: r for r in session.scalars(select(Allocation)).all()}
    out = []
    for model_id, version in prods:
        row = rows.get(model_id)
        for v, w in _current_weights(row, version).items():
            out.append((model_id, v, row.mode if row is not None else "champion", float(w)))
    return out
