"""Reading strategy searches and candidates: the JSON shapes the API serves.

Owns `search_row` (a search or NotFound, optionally locked for update), `search_dict` /
`get_search` (GET /clm/searches/{id}), `search_job` (a search shaped like a job, for
GET /clm/jobs/{id}), `candidate_dict` / `get_candidate` / `list_candidates`
(GET /clm/candidates), and `json_safe` (the numbers a search stores: finite or None).
Takes the caller's session; reads only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.numbers import finite_or_none
from app.core.timeutil import isoformat
from app.models.evolution import (
    CandidateStatus,
    SearchGeneration,
    SearchStatus,
    StrategyCandidate,
    StrategySearch,
)

__all__ = [
    "candidate_dict",
    "get_candidate",
    "get_search",
    "json_safe",
    "list_candidates",
    "search_dict",
    "search_job",
    "search_row",
]


def json_safe(value: Any) -> Any:
    """JSON-safe numbers, recursively: floats finite or None (NaN/inf), numpy scalars as
    Python numbers; anything else unchanged."""
    if isinstance(value, float | np.floating):
        return finite_or_none(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def search_row(session: Session, search_id: str, *, lock: bool = False) -> StrategySearch:
    """The search, or NotFound; `lock`: SELECT ... FOR UPDATE (not on SQLite, where the
    caller's BEGIN IMMEDIATE already serializes writers)."""
    stmt = select(StrategySearch).where(StrategySearch.id == search_id)
    if lock and session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise NotFound(f"no strategy search {search_id}", search_id=search_id)
    return row


def search_dict(row: StrategySearch) -> dict[str, Any]:
    planned = row.population * row.generations
    return {
        "search_id": row.id,
        "job_id": row.job_id,
        "kind": row.kind,
        "model_id": row.model_id,
        "model_type": row.model_type,
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "dataset_span_days": row.dataset_span_days,
        "regime": row.regime,
        "objectives": list(row.objectives),
        "constraints": dict(row.constraints or {}),
        "population": row.population,
        "generations": row.generations,
        "current_generation": row.current_generation,
        "status": SearchStatus(row.status).value,
        "trials_total": row.trials_total,
        "trials_evaluated": row.trials_evaluated,
        "trials_failed": row.trials_failed,
        "progress": min(1.0, (row.trials_evaluated + row.trials_failed) / planned)
        if planned else 0.0,
        "chosen_candidate_id": row.chosen_candidate_id,
        "result": row.result,
        "error": row.error,
        "source_model_version": row.source_model_version,
        "requested_by": row.requested_by,
        "space": row.space,
        "created_at": isoformat(row.created_at),
        "finished_at": isoformat(row.finished_at),
    }


def get_search(session: Session, search_id: str) -> dict[str, Any]:
    """The search with its generations (trials asked, evaluated, failed, hypervolume of
    the front so far when the generation completed)."""
    out = search_dict(search_row(session, search_id))
    out["generation_stats"] = [
        {"generation": g.generation, "size": g.size, "evaluated": g.evaluated,
         "failed": g.failed, "hypervolume": finite_or_none(g.hypervolume),
         "completed_at": isoformat(g.completed_at)}
        for g in session.scalars(select(SearchGeneration)
                                 .where(SearchGeneration.search_id == search_id)
                                 .order_by(SearchGeneration.generation))]
    return out


def search_job(session: Session, job_id: str) -> dict[str, Any] | None:
    """The search behind `job_id` shaped like a job (GET /clm/jobs/{id}); None if none."""
    row = session.scalars(select(StrategySearch).where(StrategySearch.job_id == job_id)).first()
    if row is None:
        return None
    gens = {g.generation: g for g in session.scalars(select(SearchGeneration).where(
        SearchGeneration.search_id == row.id)).all()}
    steps = []
    for g in range(row.generations):
        gen = gens.get(g)
        status = "pending" if gen is None else ("succeeded" if gen.completed_at else "running")
        steps.append({"name": f"generation_{g}", "status": status,
                      "started_at": isoformat(gen.created_at) if gen else None,
                      "finished_at": isoformat(gen.completed_at) if gen else None})
    done = row.status == SearchStatus.SUCCEEDED
    steps.append({"name": "select_and_validate",
                  "status": "succeeded" if done else ("failed" if row.status ==
                                                      SearchStatus.FAILED else "pending"),
                  "started_at": None, "finished_at": isoformat(row.finished_at)})
    out = {
        "job_id": row.job_id,
        "kind": "evolution",
        "search_id": row.id,
        "status": SearchStatus(row.status).value,
        "model_id": row.model_id,
        "trigger_reason": (row.config or {}).get("trigger_reason", "manual"),
        "steps": steps,
        "progress": search_dict(row)["progress"] if not done else 1.0,
        "created_at": isoformat(row.created_at),
        "finished_at": isoformat(row.finished_at),
    }
    if row.error:
        out["error"] = row.error
    return out


def candidate_dict(c: StrategyCandidate) -> dict[str, Any]:
    return {
        "id": c.id,
        "search_id": c.search_id,
        "model_id": c.model_id,
        "model_type": c.model_type,
        "params": c.params,
        "objectives": c.objectives or {},
        "metrics": c.metrics or {},
        "pareto": bool(c.pareto),
        "generation": c.generation,
        "parents": list(c.parents or []),
        "regime": c.regime,
        "status": CandidateStatus(c.status).value,
        "feasible": c.feasible,
        "constraints": c.constraints,
        "origin": c.origin,
        "regime_metrics": c.regime_metrics or {},
        "deflated_sharpe": c.deflated_sharpe,
        "holdout": c.holdout,
        "overfit": c.overfit,
        "training_job_id": c.training_job_id,
        "attempts": c.attempts,
        "evaluated_by": c.evaluated_by,
        "error": c.error,
        "evaluation_seconds": c.evaluation_seconds,
        "created_at": isoformat(c.created_at),
        "finished_at": isoformat(c.finished_at),
    }


def get_candidate(session: Session, candidate_id: int) -> dict[str, Any]:
    c = session.get(StrategyCandidate, int(candidate_id))
    if c is None:
        raise NotFound(f"no strategy candidate {candidate_id}", candidate_id=candidate_id)
    return candidate_dict(c)


def list_candidates(
    session: Session,
    *,
    search_id: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    pareto: bool | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Up to limit + 1 candidates in id order after `after_id` (keyset pagination)."""
    stmt = select(StrategyCandidate)
    if search_id is not None:
        stmt = stmt.where(StrategyCandidate.search_id == search_id)
    if model_id is not None:
        stmt = stmt.where(StrategyCandidate.model_id == model_id)
    if status is not None:
        stmt = stmt.where(StrategyCandidate.status == CandidateStatus(status))
    if pareto is not None:
        stmt = stmt.where(StrategyCandidate.pareto.is_(pareto))
    if after_id is not None:
        stmt = stmt.where(StrategyCandidate.id > after_id)
    rows = session.scalars(stmt.order_by(StrategyCandidate.id).limit(limit + 1)).all()
    return [candidate_dict(c) for c in rows], [c.id for c in rows]
