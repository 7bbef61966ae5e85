"""Strategy-search schema: searches, their generations and the strategy candidates.

Owns three tables (migration 0004_evolution):

- `strategy_searches`: one NSGA-II search (or a small variant search) over a strategy
  space: what it searches, its Optuna study name, the data snapshot every trial reads,
  its state and its result (front, chosen candidate, Deflated Sharpe, hold-out check).
- `strategy_search_generations`: one row per generation with the counter that trial
  tasks bump; the task whose bump completes the generation advances the search.
- `strategy_candidates`: every evaluated (or to-be-evaluated) parameter set, with its
  claim/lease columns, objectives, metrics, per-regime metrics and Pareto flag.

Optuna's own tables (studies, trials, ...) live in the same database but belong to
Optuna's RDBStorage; migrations/env.py keeps Alembic from comparing them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.core.timeutil import utcnow
from app.models.base import Base, JSONType
from app.models.registry import str_enum


class SearchStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CandidateStatus(enum.StrEnum):
    PENDING = "pending"  # asked from Optuna, evaluation task enqueued
    RUNNING = "running"  # claimed by a worker under a lease
    EVALUATED = "evaluated"  # walk-forward done and told to Optuna
    FAILED = "failed"  # evaluation raised (or exhausted its attempts); told FAIL


class StrategySearch(Base):
    """One strategy search; its job (jobs table) carries progress for GET /clm/jobs."""

    __tablename__ = "strategy_searches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # A string, not a foreign key: the jobs table has its own owner and lifecycle.
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="search")  # search | variants
    model_id: Mapped[str] = mapped_column(String(120), index=True)
    model_type: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    dataset_span_days: Mapped[int] = mapped_column(Integer)
    regime: Mapped[str | None] = mapped_column(String(40))
    objectives: Mapped[Any] = mapped_column(JSONType)
    constraints: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    population: Mapped[int] = mapped_column(Integer)
    generations: Mapped[int] = mapped_column(Integer)
    # Search space actually used (after request overrides) and evaluation settings.
    space: Mapped[dict[str, Any]] = mapped_column(JSONType)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    study_name: Mapped[str] = mapped_column(String(80), unique=True)
    # Snapshot of the market data every trial reads (content-addressed artifact).
    data_uri: Mapped[str | None] = mapped_column(String(400))
    data_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[SearchStatus] = mapped_column(
        str_enum(SearchStatus, "search_status"), index=True
    )
    # Highest generation whose trials were asked; -1 before the first.
    current_generation: Mapped[int] = mapped_column(Integer, default=-1)
    # Coordinator lease: only one process asks Optuna for a generation at a time.
    advancing_until: Mapped[datetime | None] = mapped_column()
    trials_total: Mapped[int] = mapped_column(Integer, default=0)
    trials_evaluated: Mapped[int] = mapped_column(Integer, default=0)
    trials_failed: Mapped[int] = mapped_column(Integer, default=0)
    chosen_candidate_id: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    # Variant searches: the production version whose strategy was varied.
    source_model_version: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class SearchGeneration(Base):
    """Per-generation counters: the trial whose bump makes done == size advances."""

    __tablename__ = "strategy_search_generations"

    search_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("strategy_searches.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer)
    evaluated: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Set once, by the single task that completed the generation (conditional update).
    completed_at: Mapped[datetime | None] = mapped_column()
    hypervolume: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StrategyCandidate(Base):
    """One parameter set of a search: an Optuna trial, evaluated walk-forward OOS."""

    __tablename__ = "strategy_candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("strategy_searches.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[str] = mapped_column(String(120), index=True)
    model_type: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer)
    trial_number: Mapped[int] = mapped_column(Integer)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    parents: Mapped[Any] = mapped_column(JSONType, default=list)
    origin: Mapped[str] = mapped_column(String(20), default="nsga2")
    status: Mapped[CandidateStatus] = mapped_column(
        str_enum(CandidateStatus, "candidate_status"), index=True
    )
    objectives: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    constraints: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    feasible: Mapped[bool | None] = mapped_column(Boolean)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    regime_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    regime: Mapped[str | None] = mapped_column(String(40))
    pareto: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # Overfitting guard (set on the candidate chosen from its search).
    deflated_sharpe: Mapped[float | None] = mapped_column(Float)
    holdout: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    overfit: Mapped[bool | None] = mapped_column(Boolean)
    # Claim / lease: a worker owns the evaluation while lease_until is in the future.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    # host:pid of the process that last claimed it (which worker evaluated it).
    evaluated_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    told: Mapped[bool] = mapped_column(Boolean, default=False)
    evaluation_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    training_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        # One candidate per Optuna trial: a redelivered coordinator cannot double-insert.
        UniqueConstraint("search_id", "trial_number"),
        Index("ix_strategy_candidates_search_id_generation", "search_id", "generation"),
        Index("ix_strategy_candidates_status_lease_until", "status", "lease_until"),
    )
