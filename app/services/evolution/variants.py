"""Strategy variants, the response to a degraded production model: its current strategy
(as a control), mutations of it and crossovers of its latest Pareto front, evaluated as a
one-generation search (kind "variants") whose chosen candidate is then trained.

Owns `propose_variants` (builds the proposals and creates the search; the caller's
session, flush only) and `base_params` (a version's strategy as a point of a space).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import TriggerReason
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import utcnow
from app.ml.evolution.space import SPACES, StrategySpace, space_for
from app.models.evolution import SearchStatus, StrategyCandidate, StrategySearch
from app.services.evolution.config import EvolutionConfig
from app.services.evolution.create import create_search
from app.services.registry import get_production

__all__ = ["base_params", "propose_variants"]


def base_params(space: StrategySpace, version: Mapping[str, Any]) -> dict[str, Any]:
    """The production version's strategy as a point of `space` (snapped into it)."""
    params = space.defaults()
    names = set(space.names)
    for key, value in (version.get("params") or {}).items():
        name = f"model_{key}"
        if name in names and isinstance(value, int | float) and not isinstance(value, bool):
            params[name] = space.param(name).snap(value)
    lineage = version.get("lineage") or {}
    strategy = lineage.get("strategy") or {}
    windows = strategy.get("windows") or lineage.get("windows") or {}
    for family, value in (windows or {}).items():
        name = f"window_{family}"
        if name in names and value:
            w = max(value) if isinstance(value, list | tuple) else value
            params[name] = space.param(name).snap(w)
    # The trading rules and label horizon the version was trained with (a candidate's
    # training job records them in the lineage); rules win over the legacy
    # long_threshold. Booleans (allow_short) are not searched, so they stay as declared.
    flat = {"entry_threshold": strategy.get("long_threshold"),
            "label_horizon": strategy.get("label_horizon"),
            **(strategy.get("rules") or {})}
    for name, value in flat.items():
        if name in names and isinstance(value, int | float) and not isinstance(value, bool):
            params[name] = space.param(name).snap(value)
    return space.validate(params)


def propose_variants(
    session: Session,
    settings: Settings,
    model_id: str,
    *,
    magnitude: float | None = None,
    count: int | None = None,
    seed: int | None = None,
    requested_by: str | None = "clm-evolution",
    trigger_reason: str = TriggerReason.PERFORMANCE_DEGRADED.value,
    frame: pd.DataFrame | None = None,
    evaluation: Mapping[str, Any] | None = None,
    dataset_span_days: int | None = None,
) -> dict[str, Any]:
    """Variants of the production strategy of `model_id` as a small quick search.

    The current strategy (as a control), mutations of it by ±magnitude (default 20%)
    and uniform crossovers of two members of the model's latest Pareto front are
    evaluated as one generation on the same walk-forward set-up. When the search ends,
    its chosen candidate is turned into a training job (normal gate). Returns the
    search dict; the caller publishes the coordinator
    (`app.bus.evolution_tasks.advance(search_id)`) after its commit.
    """
    cfg = EvolutionConfig.from_settings(settings)
    version = get_production(session, model_id)
    if version is None:
        raise NotFound(f"model {model_id} has no production version to vary",
                       model_id=model_id)
    if version["model_type"] not in SPACES:
        raise InvalidInput("model_type", f"no strategy space for {version['model_type']}")
    mag = cfg.mutation_magnitude if magnitude is None else float(magnitude)
    if not 0.0 < mag <= 1.0:
        raise InvalidInput("magnitude", f"must be in (0, 1], got {magnitude!r}")
    total = cfg.variants if count is None else int(count)
    if total < 2:
        raise InvalidInput("count", "need at least 2 variants")
    space = space_for(version["model_type"])
    base = base_params(space, version)
    rng = np.random.default_rng(seed if seed is not None else
                                int(utcnow().timestamp()) % (2**31))
    proposals: list[dict[str, Any]] = [{"params": base, "origin": "current", "parents": []}]
    seen = {_key(base)}
    front = _latest_front(session, model_id)
    n_cross = min(total // 3, len(front) * (len(front) - 1) // 2) if len(front) >= 2 else 0
    attempts = 0
    while len(proposals) < 1 + n_cross and attempts < 50:
        attempts += 1
        i, j = rng.choice(len(front), size=2, replace=False)
        child = space.crossover(front[i].params, front[j].params, rng)
        if _key(child) not in seen:
            seen.add(_key(child))
            proposals.append({"params": child, "origin": "crossover",
                              "parents": [front[i].id, front[j].id]})
    attempts = 0
    while len(proposals) < total and attempts < 200:
        attempts += 1
        child = space.mutate(base, mag, rng)
        if _key(child) not in seen:
            seen.add(_key(child))
            proposals.append({"params": child, "origin": "mutation", "parents": []})
    span = dataset_span_days or int((version.get("lineage") or {}).get("dataset_span_days")
                                    or 90)
    return create_search(
        session, settings, model_type=version["model_type"], symbol=version["symbol"],
        timeframe=version["timeframe"], dataset_span_days=span, population=len(proposals),
        generations=1, requested_by=requested_by, trigger_reason=trigger_reason, frame=frame,
        evaluation=evaluation, kind="variants", fixed=proposals,
        source_model_version=version["version"], regime=version.get("regime"),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, round(v, 10) if isinstance(v, float) else v)
                        for k, v in params.items()))


def _latest_front(session: Session, model_id: str) -> list[StrategyCandidate]:
    latest = session.scalars(
        select(StrategySearch.id).where(StrategySearch.model_id == model_id,
                                        StrategySearch.status == SearchStatus.SUCCEEDED)
        .order_by(StrategySearch.finished_at.desc()).limit(1)).first()
    if latest is None:
        return []
    return list(session.scalars(select(StrategyCandidate).where(
        StrategyCandidate.search_id == latest, StrategyCandidate.pareto.is_(True))
        .order_by(StrategyCandidate.id)).all())
