"""HTTP adapter for strategy evolution: POST /clm/evolve, GET /clm/candidates,
POST /clm/candidates/{id}/train, plus the search itself and the declared spaces.

Thin: validate (pydantic, 422 naming the field), open the unit of work, call the flow
(`app.flows.evolution`: what it starts publishes itself after the commit) or a read
(`app.services.evolution.views`), answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, jsonify
from pydantic import Field, StrictInt

from app.api.pagination import PageQuery, int_cursor, page
from app.api.problems import ApiProblem
from app.api.schema import StrictModel, Symbol, documented, parse_body, parse_query
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.core.domain import REGIME_PATTERN, ModelType, Timeframe
from app.db import transaction
from app.flows import evolution
from app.ml.evolution.space import SPACES
from app.models.evolution import CandidateStatus
from app.services import jobs
from app.services.evolution import views
from app.services.evolution.config import MAX_GENERATIONS, MAX_POPULATION

bp = Blueprint("evolution", __name__)

ObjectiveName = Literal["sharpe", "max_drawdown", "profit_factor", "turnover"]
Regime = Annotated[str, Field(pattern=REGIME_PATTERN)]


class Constraints(StrictModel):
    min_trades: StrictInt | None = Field(50, ge=0, le=1_000_000)
    max_drawdown: float | None = Field(None, gt=0, le=1)
    min_sharpe: float | None = Field(None, ge=-100, le=100)


class EvolveBody(StrictModel):
    model_type: ModelType
    symbol: Symbol
    timeframe: Timeframe
    dataset_span_days: StrictInt = Field(ge=1, le=36_500)
    objectives: list[ObjectiveName] | None = Field(
        None, min_length=2, max_length=4,
        description='default ["sharpe", "max_drawdown"] (maximize Sharpe, minimize drawdown)')
    population: StrictInt | None = Field(None, ge=2, le=MAX_POPULATION)
    generations: StrictInt | None = Field(None, ge=1, le=MAX_GENERATIONS)
    constraints: Constraints | None = Field(None, description="default: trades >= 50")
    space: dict[str, Any] | None = Field(
        None, description="narrow the declared space: {name: value} fixes a parameter, "
                          "{name: {low, high, step}} narrows it (see /clm/strategy-spaces)")
    regime: Regime | None = Field(None, description="choose from the front for this regime")
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)


class CandidateQuery(PageQuery):
    search_id: str | None = Field(None, max_length=36)
    model_id: str | None = Field(None, max_length=120)
    status: CandidateStatus | None = None
    pareto: bool | None = Field(None, description="true: only the Pareto front")


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


def _candidate_id(raw: str) -> int:
    # An id that cannot exist is unknown (404), not a validation error.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiProblem(404, "Not found", f"no strategy candidate {raw}")
    return int(raw)


@bp.post("/clm/evolve")
@documented(
    "Start an NSGA-II strategy search (202 with job_id and search_id)",
    role="operator", body=EvolveBody,
    responses={202: "Queued", 422: "Invalid body"}, tag="evolution",
)
@require_role("operator")
def evolve() -> Any:
    body = parse_body(EvolveBody)
    settings = _settings()
    # Reads (active searches, data) then writes: serialized on SQLite like /clm/train.
    with transaction(settings.database_url, immediate=True) as session:
        result = evolution.start_search(
            session, settings, model_type=body.model_type.value, symbol=body.symbol,
            timeframe=body.timeframe.value, dataset_span_days=body.dataset_span_days,
            objectives=body.objectives, population=body.population,
            generations=body.generations,
            constraints=body.constraints.model_dump() if body.constraints else None,
            space=body.space, regime=body.regime, seed=body.seed,
            requested_by=current_actor()[:120],
        )
    response = jsonify({"job_id": result["job_id"], "search_id": result["search_id"],
                        "status": result["status"], "model_id": result["model_id"]})
    response.status_code = 202
    response.headers["Location"] = f"/clm/searches/{result['search_id']}"
    return response


@bp.get("/clm/searches/<search_id>")
@documented("One strategy search: progress, front, chosen candidate, DSR, hold-out",
            role="viewer", responses={200: "The search", 404: "Unknown search"},
            tag="evolution")
@require_role("viewer")
def get_search(search_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        return jsonify(views.get_search(session, search_id))


@bp.post("/clm/searches/<search_id>/resume")
@documented("Re-publish everything a search waits for (after an outage)", role="operator",
            responses={202: "Published", 404: "Unknown search"}, tag="evolution")
@require_role("operator")
def resume_search(search_id: str) -> Any:
    settings = _settings()
    # Published after the flow's transaction committed; the count is of messages sent for.
    published = len(evolution.resume_search(settings, search_id))
    response = jsonify({"search_id": search_id, "published": published})
    response.status_code = 202
    return response


@bp.get("/clm/candidates")
@documented("Strategy candidates; filters search_id, model_id, status, pareto",
            role="viewer", query=CandidateQuery, tag="evolution")
@require_role("viewer")
def list_candidates() -> Any:
    q = parse_query(CandidateQuery)
    after = int_cursor(q.cursor)
    with transaction(_settings().database_url) as session:
        items, keys = views.list_candidates(
            session, search_id=q.search_id, model_id=q.model_id,
            status=q.status.value if q.status else None, pareto=q.pareto,
            after_id=after, limit=q.limit)
    return jsonify(page(items, keys, q.limit))


@bp.get("/clm/candidates/<candidate_id>")
@documented("One strategy candidate", role="viewer",
            responses={200: "The candidate", 404: "Unknown candidate"}, tag="evolution")
@require_role("viewer")
def get_candidate(candidate_id: str) -> Any:
    cid = _candidate_id(candidate_id)
    with transaction(_settings().database_url) as session:
        return jsonify(views.get_candidate(session, cid))


@bp.post("/clm/candidates/<candidate_id>/train")
@documented(
    "Train a candidate's strategy as a normal training job (202 like /clm/train)",
    role="operator",
    responses={202: "Queued", 404: "Unknown candidate",
               409: "Candidate not evaluated, or the model already has an active job"},
    tag="evolution",
)
@require_role("operator")
def train_candidate(candidate_id: str) -> Any:
    cid = _candidate_id(candidate_id)
    settings = _settings()
    # immediate: read (is a job active?) then write, serialized on SQLite like /clm/train.
    with transaction(settings.database_url, immediate=True) as session:
        outcome = evolution.train_candidate(
            session, settings, cid, requested_by=current_actor()[:120], source="api",
            details={"request": "POST /clm/candidates/{id}/train"})
    if outcome.active_job_id is not None:  # answered once the coalesced decision committed
        raise jobs.ActiveJobExists(outcome.active_job_id, outcome.decision.model_id)
    job = outcome.job
    assert job is not None
    response = jsonify({"job_id": job["job_id"], "status": job["status"],
                        "model_id": job["model_id"], "candidate_id": cid})
    response.status_code = 202
    response.headers["Location"] = f"/clm/jobs/{job['job_id']}"
    return response


@bp.get("/clm/strategy-spaces")
@documented("Every model type's strategy parameter space (types, bounds, steps)",
            role="viewer", tag="evolution")
@require_role("viewer")
def strategy_spaces() -> Any:
    return jsonify({name: space.to_dict() for name, space in SPACES.items()})
