"""HTTP adapter for training jobs: POST /clm/train, GET /clm/jobs, GET /clm/jobs/{job_id}.

Thin: validate the body (pydantic, 422 naming the field), open the unit of work and call
`app.flows.training.request_training`; the new job publishes itself to the broker once
the transaction committed. A broker that is down does not fail the request: the job is
in the database with a dispatch deadline and the reaper publishes it.

POST /clm/train is a trigger decision like any other reason to retrain (GET
/clm/triggers): `triggered` with the job it started, or — answered 409 because the model
already has an active job — `coalesced` into that job. The decision commits with the job
(or on its own for a 409). GET /clm/jobs lists every kind of job: `train` and `evolve`
(strategy searches, POST /clm/evolve); filter with `kind`.
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app, jsonify
from pydantic import Field, StrictInt

from app.api.pagination import PageQuery, decode_cursor, page
from app.api.problems import unprocessable
from app.api.schema import StrictModel, Symbol, documented, parse_body, parse_query
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.core.domain import REGIME_PATTERN, JobStatus, ModelType, Timeframe, TriggerReason
from app.db import transaction
from app.flows.training import request_training
from app.models.jobs import JobKind
from app.services import jobs

bp = Blueprint("jobs", __name__)

Regime = Annotated[str, Field(pattern=REGIME_PATTERN)]


class TrainBody(StrictModel):
    model_type: ModelType
    symbol: Symbol
    timeframe: Timeframe
    dataset_span_days: StrictInt = Field(
        ge=1, le=jobs.MAX_SPAN_DAYS, description="days of data (ending at the last stored bar)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="trainer hyperparameters")
    trigger_reason: TriggerReason = TriggerReason.MANUAL
    regime: Regime | None = Field(None, description="market regime the model is trained for")
    strategy: dict[str, Any] | None = Field(
        None, description="what a strategy search chose: windows, label_horizon, "
                          "long_threshold, short_threshold, seed, rules {entry_threshold, "
                          "exit_threshold, min_hold_bars, stop_loss, take_profit, allow_short}"
    )


class JobListQuery(PageQuery):
    status: JobStatus | None = None
    model_id: str | None = Field(None, max_length=120)
    model_type: ModelType | None = None
    trigger_reason: TriggerReason | None = None
    kind: JobKind | None = Field(None, description="train (the pipeline) or evolve (a search)")


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


@bp.post("/clm/train")
@documented(
    "Start a training job (202); 409 with the active job's id while one runs",
    role="operator",
    body=TrainBody,
    responses={202: "Queued", 409: "The model already has an active job", 422: "Invalid body"},
    tag="jobs",
)
@require_role("operator")
def train() -> Any:
    body = parse_body(TrainBody)
    settings = _settings()
    # immediate: read (is a job active?) then write, serialized on SQLite as on PostgreSQL.
    with transaction(settings.database_url, immediate=True) as session:
        outcome = request_training(
            session, settings, model_type=body.model_type.value, symbol=body.symbol,
            timeframe=body.timeframe.value, dataset_span_days=body.dataset_span_days,
            params=body.params, reason=body.trigger_reason.value, source="api",
            requested_by=current_actor()[:120], regime=body.regime, strategy=body.strategy,
            details={"request": "POST /clm/train"})
    if outcome.active_job_id is not None:  # answered once the coalesced decision committed
        raise jobs.ActiveJobExists(outcome.active_job_id, outcome.decision.model_id)
    job = outcome.job
    assert job is not None
    response = jsonify(
        {"job_id": job["job_id"], "status": job["status"], "model_id": job["model_id"]}
    )
    response.status_code = 202
    response.headers["Location"] = f"/clm/jobs/{job['job_id']}"
    return response


@bp.get("/clm/jobs")
@documented("List jobs, training and strategy-search (newest first)", role="viewer",
            query=JobListQuery, tag="jobs")
@require_role("viewer")
def list_jobs() -> Any:
    q = parse_query(JobListQuery)
    after = decode_cursor(q.cursor)
    if after is not None and not (
        isinstance(after, list) and len(after) == 2 and all(isinstance(k, str) for k in after)
        and jobs.is_job_id(after[1])
    ):
        raise unprocessable("cursor", "not a cursor returned by this API")
    if after is not None:
        try:
            jobs.parse_cursor_time(after[0])
        except ValueError:
            raise unprocessable("cursor", "not a cursor returned by this API") from None
    with transaction(_settings().database_url) as session:
        items, keys = jobs.list_jobs(
            session,
            status=q.status.value if q.status else None,
            model_id=q.model_id,
            model_type=q.model_type.value if q.model_type else None,
            trigger_reason=q.trigger_reason.value if q.trigger_reason else None,
            kind=q.kind.value if q.kind else None,
            limit=q.limit,
            after=after,
        )
    return jsonify(page(items, keys, q.limit))


@bp.get("/clm/jobs/<job_id>")
@documented(
    "One training job: steps with timings, progress, evaluation, version, error",
    role="viewer",
    responses={200: "The job", 404: "Unknown job"},
    tag="jobs",
)
@require_role("viewer")
def get_job(job_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        try:
            return jsonify(jobs.get_job(session, job_id))
        except jobs.JobNotFound:
            # A strategy search started before jobs had kinds (migration 0005) has no
            # job row: its progress lives with the search.
            from app.services.evolution.views import search_job  # lazy: start-up (numpy)

            found = search_job(session, job_id)
            if found is None:
                raise
            return jsonify(found)
