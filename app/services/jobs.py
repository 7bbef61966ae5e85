"""Training jobs: creation with dedupe, the state machine, leases, steps, fan-in, the reaper,
dispatching to Celery, and queries.

Owns every write to `training_jobs`, `training_job_steps` and `training_job_work_items`.
Services take a session and plain values and only `flush()`; the caller (request handler,
task wrapper in app/flows/pipeline.py) owns the transaction and publishes the returned
`Dispatch`es only after it committed (`enqueue`).

Two kinds of job share the table (`TrainingJob.kind`): `train` jobs run the pipeline
below; `evolve` jobs are strategy searches (POST /clm/evolve) whose status, progress and
steps (one per generation) app.services.evolution.service mirrors through `create_evolve_job`,
`evolve_generation_started`, `evolve_trial_recorded`, `evolve_generation_completed` and
`finish_evolve_job`. Only train jobs are claimed, leased and reaped here (the evolution
reaper owns searches), and the one-active-job rule covers train jobs only.

State machine of a train job (job.status / job.stage):

    queued/prepare ──claim──► running/prepare ──► running/train (fan-out of work items)
        ──last item done (fan-in counter)──► running/evaluate ──► running/register
        ──► succeeded/done            any stage ──permanent error / attempts spent──► failed

Leases: a single-task stage (prepare, evaluate, register) is owned through the job row's
`lease_owner`/`lease_expires_at`; in the train stage every work item (challenger fold,
champion fold, final fit) has its own lease. A claim is one conditional UPDATE, so a
duplicate delivery finds the lease held and exits. With no owner, `lease_expires_at` is
the dispatch deadline: if no worker claimed the work by then (message lost, broker down
at enqueue), the reaper publishes it again without spending an attempt. An owner whose
lease expired (worker killed, heartbeat stopped) costs an attempt; after
`job_max_attempts` the job fails with the reason.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bus.events import job_event  # outbox: events commit with the change (app/bus/events.py)
from app.bus.producer import send, send_after_commit
from app.core.config import Settings, get_settings
from app.core.domain import (
    JobStatus,
    ModelType,
    TriggerReason,
    is_regime,
    make_model_id,
    normalize_symbol,
    timeframe_seconds,
)
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.logs import job_logger
from app.core.timeutil import isoformat, utcnow
from app.models.jobs import (
    ACTIVE_JOB_STATUSES,
    JobKind,
    JobStage,
    StepStatus,
    TrainingJob,
    TrainingJobStep,
    TrainingJobWorkItem,
    WorkKind,
    WorkStatus,
)

log = logging.getLogger(__name__)

# The seed's ten pipeline steps, in order; every job records each of them.
STEP_NAMES: tuple[str, ...] = (
    "validate_request",
    "fetch_data",
    "validate_data",
    "build_features",
    "split_folds",
    "train_folds",
    "evaluate",
    "final_fit",
    "register_version",
    "decide_promotion",
)

# Which Celery task runs a stage / a work item, and on which queue.
STAGE_TASKS: dict[JobStage, tuple[str, str]] = {
    JobStage.PREPARE: ("clm.job.prepare", "data"),
    JobStage.EVALUATE: ("clm.job.evaluate", "evaluate"),
    JobStage.REGISTER: ("clm.job.register", "evaluate"),
}
WORK_TASKS: dict[WorkKind, tuple[str, str]] = {
    WorkKind.FOLD: ("clm.job.train_fold", "train"),
    WorkKind.CHAMPION: ("clm.job.train_fold", "train"),
    WorkKind.FINAL: ("clm.job.final_fit", "train"),
}
REAP_TASK = "clm.jobs.reap"

# A never-claimed message is republished after lease × 2^n (n = dispatches so far, capped),
# so a job waiting behind a long queue is not flooded with duplicates.
_MAX_DISPATCH_BACKOFF_EXP = 5
MAX_SPAN_DAYS = 36_500


# -- errors -----------------------------------------------------------------------------
class ActiveJobExists(Conflict):
    """The model already has a queued or running job; `job_id` names it (HTTP 409)."""

    def __init__(self, job_id: str, model_id: str) -> None:
        super().__init__(
            f"model {model_id} already has an active training job {job_id}",
            job_id=job_id,
            model_id=model_id,
        )
        self.job_id = job_id
        self.model_id = model_id


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id}", job_id=job_id)


class LeaseLost(RuntimeError):
    """This worker no longer owns the job or work item (another one took over)."""


# -- dispatches -------------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """A task to publish after commit: by name, with ids only."""

    task: str
    queue: str
    job_id: str
    kind: str | None = None
    fold: int | None = None

    @property
    def args(self) -> list[Any]:
        if self.kind is None:
            return [self.job_id]
        return [self.job_id, self.kind, self.fold]


def stage_dispatch(job_id: str, stage: JobStage | str) -> Dispatch:
    task, queue = STAGE_TASKS[JobStage(stage)]
    return Dispatch(task, queue, job_id)


def item_dispatch(job_id: str, kind: WorkKind | str, fold: int) -> Dispatch:
    task, queue = WORK_TASKS[WorkKind(kind)]
    return Dispatch(task, queue, job_id, WorkKind(kind).value, int(fold))


# -- small helpers ----------------------------------------------------------------------
def new_owner(worker: str) -> str:
    """A lease owner token unique per delivery: a redelivered copy never inherits a lease."""
    return f"{worker}/{uuid.uuid4().hex[:12]}"


def _lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.job_lease_seconds)


def _dispatch_deadline(settings: Settings, now: datetime, dispatches: int) -> datetime:
    exp = min(max(dispatches - 1, 0), _MAX_DISPATCH_BACKOFF_EXP)
    return now + _lease(settings) * (2**exp)


def is_job_id(value: Any) -> bool:
    """True for the canonical uuid4 string form job ids have (anything else cannot exist)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def _jlog(job_id: str, **context: Any) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    return job_logger(log, job_id, **context)


# -- creation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRequest:
    """A checked training request (what `validate_training_request` returns)."""

    model_type: str
    symbol: str
    timeframe: str
    dataset_span_days: int
    params: dict[str, Any]
    trigger_reason: str
    regime: str | None
    strategy: dict[str, Any] | None
    model_id: str
    rows_in_span: int


def validate_training_request(
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    params: Mapping[str, Any] | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    regime: str | None = None,
    strategy: Mapping[str, Any] | None = None,
) -> TrainingRequest:
    """Check a request against the closed value sets, the installed trainers and the
    market data store; `InvalidInput` names the offending field."""
    from app.ml.data.store import MarketDataStore
    from app.ml.evaluation import EvaluationConfig, InsufficientData, make_folds
    from app.ml.features import normalize_windows, warmup_bars
    from app.ml.trainers import InvalidParams, TrainerNotAvailable, get_trainer

    try:
        mt = ModelType(str(model_type)).value
    except ValueError:
        allowed = ", ".join(m.value for m in ModelType)
        raise InvalidInput(
            "model_type", f"unknown model type {model_type!r}; allowed: {allowed}"
        ) from None
    try:
        tf_seconds = timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput("timeframe", str(exc)) from None
    try:
        sym = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    if (
        isinstance(dataset_span_days, bool)
        or not isinstance(dataset_span_days, int)
        or not 1 <= dataset_span_days <= MAX_SPAN_DAYS
    ):
        raise InvalidInput(
            "dataset_span_days",
            f"must be an integer in [1, {MAX_SPAN_DAYS}], got {dataset_span_days!r}",
        )
    try:
        reason = TriggerReason(str(trigger_reason)).value
    except ValueError:
        allowed = ", ".join(r.value for r in TriggerReason)
        raise InvalidInput(
            "trigger_reason", f"unknown trigger reason {trigger_reason!r}; allowed: {allowed}"
        ) from None
    if regime is not None:
        if not is_regime(regime):
            raise InvalidInput("regime", "1-40 characters of a-z, 0-9, '_', '.', '-'")
        regime = regime.strip().lower()
    try:
        trainer = get_trainer(mt)
    except TrainerNotAvailable as exc:
        raise InvalidInput("model_type", str(exc)) from None
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInput("params", "must be an object of hyperparameters")
    try:
        checked = trainer.validate_params(dict(params or {}))
    except InvalidParams as exc:
        raise InvalidInput(f"params.{exc.key}", str(exc)) from None
    if strategy is not None and not isinstance(strategy, Mapping):
        raise InvalidInput("strategy", "must be an object")
    strat = dict(strategy) if strategy else None
    windows: Any = None
    cfg_overrides: dict[str, Any] = {}
    if strat is not None:
        unknown = sorted(set(strat) - set(STRATEGY_KEYS))
        if unknown:
            raise InvalidInput(
                "strategy", f"unknown key(s) {unknown}; known: {', '.join(STRATEGY_KEYS)}"
            )
        windows = strat.get("windows")
        try:
            normalize_windows(windows)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("strategy.windows", str(exc)) from None
        cfg_overrides = strategy_config_overrides(strat)
        horizon = strat.get("label_horizon", 1)
        if (isinstance(horizon, bool) or not isinstance(horizon, int)
                or not 1 <= horizon <= MAX_LABEL_HORIZON):
            raise InvalidInput("strategy.label_horizon",
                               f"must be an integer in [1, {MAX_LABEL_HORIZON}]")
        seed = strat.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise InvalidInput("strategy.seed", "must be an integer in [0, 2**31)")
        if strat.get("rules") is not None:
            try:
                strat["rules"] = trading_rules(strat).to_dict()  # type: ignore[union-attr]
            except InvalidRules as exc:
                raise InvalidInput(f"strategy.rules.{exc.key}", str(exc)) from None
    try:
        cfg = EvaluationConfig.from_settings(settings, **cfg_overrides)
    except ValueError as exc:
        raise InvalidInput("strategy", str(exc)) from None

    store = MarketDataStore(settings.data_dir)
    coverage = store.coverage(sym, timeframe)
    if coverage is None:
        raise InvalidInput(
            "symbol",
            f"no market data for {sym} {timeframe}; import some with "
            f"`clm data import FILE --symbol {sym} --timeframe {timeframe}`",
        )
    available_days = ((coverage.last - coverage.first).total_seconds() + tf_seconds) / 86_400
    if dataset_span_days > math.ceil(available_days):
        raise InvalidInput(
            "dataset_span_days",
            f"only {available_days:.1f} days of {sym} {timeframe} data are stored "
            f"({isoformat(coverage.first.to_pydatetime())} to "
            f"{isoformat(coverage.last.to_pydatetime())}); asked for {dataset_span_days}",
        )
    start, end = data_window(coverage.last.to_pydatetime(), dataset_span_days, timeframe)
    rows = len(store.read(sym, timeframe, start, end).index)
    usable = rows - warmup_bars(windows) - cfg.label_horizon
    try:
        make_folds(max(usable, 0), cfg)
    except InsufficientData as exc:
        raise InvalidInput(
            "dataset_span_days",
            f"{dataset_span_days} days hold {rows} {timeframe} bars of {sym}, too few: {exc}",
        ) from None
    return TrainingRequest(
        model_type=mt, symbol=sym, timeframe=timeframe, dataset_span_days=dataset_span_days,
        params=checked, trigger_reason=reason, regime=regime, strategy=strat,
        model_id=make_model_id(mt, sym, timeframe), rows_in_span=rows,
    )


# What a training job's `strategy` may say (a strategy search's candidate says all of it):
# feature windows, the label horizon (the walk-forward purge follows it), the plain
# thresholds, the seed, and the search's trading rules (entry/exit thresholds, minimum
# holding period, stop loss / take profit), which replace the plain thresholds when given.
STRATEGY_KEYS: tuple[str, ...] = (
    "label_horizon", "long_threshold", "rules", "seed", "short_threshold", "windows",
)
MAX_LABEL_HORIZON = 500
_RULE_KEYS = ("entry_threshold", "exit_threshold", "min_hold_bars", "stop_loss", "take_profit",
              "allow_short")


class InvalidRules(ValueError):
    """A strategy's trading rules are malformed; `key` names the rule."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def strategy_config_overrides(strategy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The EvaluationConfig fields a job's strategy sets (thresholds, label horizon)."""
    strat = strategy or {}
    return {k: strat[k] for k in ("long_threshold", "short_threshold", "label_horizon")
            if k in strat}


def _probability(key: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not low <= value <= 1.0:
        raise InvalidRules(key, f"{key} must be a number in [{low:g}, 1], got {value!r}")
    return float(value)


def _risk_level(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not 0.0 <= value < 10.0:
        raise InvalidRules(key, f"{key} must be null or a number in [0, 10), got {value!r}")
    return float(value) or None  # 0 switches the exit off, as in the search's spaces


def trading_rules(strategy: Mapping[str, Any] | None) -> Any:
    """The strategy's trading rules as an `app.ml.evolution.space.TradingRules` (None when the
    strategy has none: positions then come from the plain long/short thresholds).

    These are the rules a strategy search evaluated its candidates with; the pipeline
    turns out-of-sample probabilities into positions with the same function
    (`app.ml.evolution.strategy.positions_from_probabilities`). Raises InvalidRules.
    """
    raw = (strategy or {}).get("rules")
    if raw is None:
        return None
    from app.ml.evolution.space import TradingRules

    if not isinstance(raw, Mapping):
        raise InvalidRules("rules", "rules must be an object")
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise InvalidRules(str(unknown[0]), f"unknown rule(s) {unknown}; known: "
                                            f"{', '.join(_RULE_KEYS)}")
    default = TradingRules()
    entry = _probability("entry_threshold", raw.get("entry_threshold", default.entry_threshold),
                         0.5)
    exit_ = _probability("exit_threshold", raw.get("exit_threshold", default.exit_threshold))
    if exit_ > entry:
        raise InvalidRules("exit_threshold", f"exit_threshold ({exit_:g}) must be <= "
                                             f"entry_threshold ({entry:g})")
    hold = raw.get("min_hold_bars", default.min_hold_bars)
    if isinstance(hold, bool) or not isinstance(hold, int) or not 1 <= hold <= 100_000:
        raise InvalidRules("min_hold_bars", f"min_hold_bars must be an integer in [1, 100000], "
                                            f"got {hold!r}")
    allow_short = raw.get("allow_short", default.allow_short)
    if not isinstance(allow_short, bool):
        raise InvalidRules("allow_short", f"allow_short must be true or false, got "
                                          f"{allow_short!r}")
    return TradingRules(
        entry_threshold=entry, exit_threshold=exit_, min_hold_bars=int(hold),
        stop_loss=_risk_level("stop_loss", raw.get("stop_loss")),
        take_profit=_risk_level("take_profit", raw.get("take_profit")),
        allow_short=allow_short,
    )


def data_window(last: datetime, span_days: int, timeframe: str) -> tuple[datetime, datetime]:
    """The bars a job trains on: the `span_days` days ending at the last stored bar."""
    start = last - timedelta(days=span_days) + timedelta(seconds=timeframe_seconds(timeframe))
    return start, last


def find_active_job(session: Session, model_id: str) -> str | None:
    """The model's queued or running *train* job (a running strategy search does not
    count: it may run while the model trains)."""
    return session.scalars(
        select(TrainingJob.id).where(
            TrainingJob.model_id == model_id, TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES)
        )
    ).first()


def create_training_job(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    params: Mapping[str, Any] | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    requested_by: str | None = None,
    regime: str | None = None,
    strategy: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Validate and insert a queued job with its ten steps; returns the job dict.

    Raises `InvalidInput` (field named) or `ActiveJobExists(job_id)` when the model
    already has a queued/running job — decided by the database's partial unique index,
    so two concurrent requests cannot both win. Open the session with
    `transaction(url, immediate=True)` (SQLite: read-then-write must hold the write lock
    from the start); the job is published after that transaction commits.
    """
    req = validate_training_request(
        settings, model_type=model_type, symbol=symbol, timeframe=timeframe,
        dataset_span_days=dataset_span_days, params=params, trigger_reason=trigger_reason,
        regime=regime, strategy=strategy,
    )
    active = find_active_job(session, req.model_id)
    if active is not None:
        raise ActiveJobExists(active, req.model_id)
    now = now or utcnow()
    job_id = str(uuid.uuid4())
    job = TrainingJob(
        id=job_id, kind=JobKind.TRAIN, model_id=req.model_id,
        model_type=ModelType(req.model_type),
        symbol=req.symbol, timeframe=req.timeframe, regime=req.regime,
        dataset_span_days=req.dataset_span_days, params=req.params, strategy=req.strategy,
        trigger_reason=TriggerReason(req.trigger_reason), requested_by=requested_by,
        status=JobStatus.QUEUED, stage=JobStage.PREPARE, attempts=0, dispatches=1,
        lease_owner=None, lease_expires_at=_dispatch_deadline(settings, now, 1),
        folds_total=0, folds_done=0, artifacts={}, created_at=now, updated_at=now,
    )
    try:
        # A savepoint keeps the caller's transaction usable if the index says no.
        with session.begin_nested():
            session.add(job)
            session.flush()
            session.add_all(
                TrainingJobStep(job_id=job_id, position=i, name=name,
                                status=StepStatus.PENDING, attempts=0)
                for i, name in enumerate(STEP_NAMES, start=1)
            )
            session.flush()
    except IntegrityError:
        active = find_active_job(session, req.model_id)
        if active is None:
            raise
        raise ActiveJobExists(active, req.model_id) from None
    _jlog(job_id, model_id=req.model_id).info(
        "training job created (%s, trigger %s)", req.model_id, req.trigger_reason
    )
    # Published once the creating transaction commits (a worker must find the row); a
    # lost message is published again by the reaper at the dispatch deadline.
    send_after_commit(session, [stage_dispatch(job_id, JobStage.PREPARE)], settings)
    return get_job(session, job_id)


# -- evolve jobs (strategy searches) ----------------------------------------------------
# app.services.evolution.service calls these in the transactions where it changes the search, so
# the job and the search commit together. Every write is conditional on the job being an
# active evolve job: a duplicate delivery, or a search created before jobs had kinds (no
# job row), changes nothing.
EVOLVE_FINAL_STEP = "select_and_validate"


def evolve_step_name(generation: int) -> str:
    return f"generation_{int(generation)}"


def create_evolve_job(
    session: Session,
    *,
    job_id: str,
    search_id: str,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    generations: int,
    trials_planned: int,
    trigger_reason: str = TriggerReason.MANUAL.value,
    requested_by: str | None = None,
    regime: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Insert the queued job of a strategy search (kind `evolve`): one pending step per
    generation plus `select_and_validate`, progress = trials recorded / `trials_planned`.
    Any number may be active per model_id. Flushes only; returns the job dict."""
    now = now or utcnow()
    if generations < 1 or trials_planned < 1:
        raise ValueError("an evolve job needs at least one generation and one trial")
    mt = ModelType(model_type)
    job = TrainingJob(
        id=job_id, kind=JobKind.EVOLVE, model_id=make_model_id(mt.value, symbol, timeframe),
        model_type=mt, symbol=normalize_symbol(symbol), timeframe=timeframe,
        regime=regime, dataset_span_days=int(dataset_span_days), params={}, strategy=None,
        trigger_reason=TriggerReason(trigger_reason), requested_by=requested_by,
        status=JobStatus.QUEUED, stage=JobStage.PREPARE, attempts=0, dispatches=0,
        lease_owner=None, lease_expires_at=None, folds_total=int(trials_planned),
        folds_done=0, artifacts={"search_id": search_id}, created_at=now, updated_at=now,
    )
    session.add(job)
    session.flush()
    names = [evolve_step_name(g) for g in range(int(generations))] + [EVOLVE_FINAL_STEP]
    session.add_all(
        TrainingJobStep(job_id=job_id, position=i, name=name, status=StepStatus.PENDING,
                        attempts=0)
        for i, name in enumerate(names, start=1)
    )
    session.flush()
    _jlog(job_id, model_id=job.model_id).info("evolve job created for search %s", search_id)
    return get_job(session, job_id)


def _active_evolve(job_id: str) -> Any:
    return and_(TrainingJob.id == job_id, TrainingJob.kind == JobKind.EVOLVE,
                TrainingJob.status.in_(ACTIVE_JOB_STATUSES))


def evolve_job_running(session: Session, job_id: str | None, *,
                       now: datetime | None = None) -> bool:
    """The search started (queued → running). False when nothing changed."""
    if not job_id:
        return False
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob).where(_active_evolve(job_id))
        .values(status=JobStatus.RUNNING, stage=JobStage.TRAIN,
                started_at=func.coalesce(TrainingJob.started_at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def evolve_generation_started(session: Session, job_id: str | None, generation: int, *,
                              trials: int, now: datetime | None = None) -> None:
    """A generation's trials were asked: the job runs, its generation step too."""
    if not evolve_job_running(session, job_id, now=now) or job_id is None:
        return
    start_step(session, job_id, evolve_step_name(generation), now=now)
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id,
               TrainingJobStep.name == evolve_step_name(generation))
        .values(detail={"trials": int(trials)})
        .execution_options(synchronize_session=False)
    )


def evolve_trial_recorded(session: Session, job_id: str | None, *,
                          now: datetime | None = None) -> None:
    """One trial was recorded (evaluated or failed): progress moves by one trial. The
    caller records each trial once (its own conditional update), so this counts once."""
    if not job_id:
        return
    now = now or utcnow()
    session.execute(
        update(TrainingJob).where(_active_evolve(job_id))
        .values(folds_done=TrainingJob.folds_done + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def evolve_generation_completed(session: Session, job_id: str | None, generation: int, *,
                                detail: Mapping[str, Any] | None = None,
                                now: datetime | None = None) -> None:
    """Every trial of `generation` is recorded: its step succeeded (with `detail`)."""
    if not job_id:
        return
    active = session.scalar(select(TrainingJob.id).where(_active_evolve(job_id)))
    if active is None:
        return
    finish_step(session, job_id, evolve_step_name(generation), detail=detail, now=now)


def finish_evolve_job(
    session: Session,
    job_id: str | None,
    *,
    status: str,
    error: str | None = None,
    detail: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """The search ended (`succeeded` or `failed`): the job ends with it; the final step
    carries `detail` (front, choice, hold-out). Unasked generations are skipped. False
    when the job was not an active evolve job."""
    if not job_id:
        return False
    now = now or utcnow()
    final = JobStatus(status)
    if final not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ValueError(f"an evolve job ends succeeded or failed, not {status!r}")
    job = session.scalars(select(TrainingJob).where(_active_evolve(job_id))).first()
    if job is None:
        return False
    job.status = final
    job.stage = JobStage.DONE
    job.error = error[:4000] if error else None
    job.started_at = job.started_at or started_at or now
    job.finished_at = now
    job.updated_at = now
    if final == JobStatus.SUCCEEDED:
        job.folds_done = max(job.folds_done, job.folds_total)
    for step in session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)):
        if step.name == EVOLVE_FINAL_STEP:
            step.status = (StepStatus.SUCCEEDED if final == JobStatus.SUCCEEDED
                           else StepStatus.FAILED)
            step.started_at = started_at or step.started_at or now
            step.finished_at = now
            step.attempts += 1
            step.detail = {**dict(detail or {}), **({"error": error[:1000]} if error else {})}
        elif step.status == StepStatus.RUNNING:
            step.status = StepStatus.FAILED
            step.finished_at = now
        elif step.status == StepStatus.PENDING:
            step.status = StepStatus.SKIPPED
    session.flush()
    _jlog(job_id).info("evolve job %s", final.value)
    return True


# -- claiming, leases, steps ------------------------------------------------------------
def _attempts_after_claim() -> Any:
    # SET expressions see the row's old values: first claim → 1; taking over an owner's
    # expired lease → +1; claiming work nobody owned (after the reaper freed it) → same.
    return case(
        (TrainingJob.attempts == 0, 1),
        (TrainingJob.lease_owner.is_not(None), TrainingJob.attempts + 1),
        else_=TrainingJob.attempts,
    )


def claim_stage(
    session: Session,
    settings: Settings,
    job_id: str,
    stage: JobStage | str,
    owner: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Take the job's lease for `stage` (queued → running). None: someone else holds it,
    the job moved on or finished — a duplicate delivery, which should just exit."""
    now = now or utcnow()
    stage = JobStage(stage)
    result = session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == job_id,
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.stage == stage,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES),
            or_(
                TrainingJob.lease_owner.is_(None),
                and_(
                    TrainingJob.lease_expires_at < now,
                    TrainingJob.attempts < settings.job_max_attempts,
                ),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            attempts=_attempts_after_claim(),
            lease_owner=owner,
            lease_expires_at=now + _lease(settings),
            started_at=func.coalesce(TrainingJob.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    job = session.get(TrainingJob, job_id)
    assert job is not None
    if job.started_at == now:  # this claim started the job (first claim only)
        job_event(session, "training.started", job)
    _jlog(job_id, stage=stage.value, owner=owner).info(
        "claimed stage %s (attempt %d)", stage.value, job.attempts
    )
    return job_snapshot(job)


def renew_stage_lease(
    session: Session, settings: Settings, job_id: str, owner: str, *, now: datetime | None = None
) -> bool:
    """Heartbeat: extend the job lease if `owner` still holds it."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.lease_owner == owner,
               TrainingJob.status == JobStatus.RUNNING)
        .values(lease_expires_at=now + _lease(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _require_stage_lease(session: Session, job_id: str, owner: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None or job.lease_owner != owner or job.status != JobStatus.RUNNING:
        raise LeaseLost(f"job {job_id}: lease no longer held by {owner}")
    return job


def release_stage_lease(session: Session, settings: Settings, job_id: str, owner: str,
                        *, now: datetime | None = None) -> bool:
    """Give the lease back without spending an attempt (transient error: a retry follows;
    if it never comes, the reaper republishes at the deadline)."""
    now = now or utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=now + _lease(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def start_step(session: Session, job_id: str, name: str, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == name)
        .values(status=StepStatus.RUNNING, attempts=TrainingJobStep.attempts + 1,
                started_at=now, finished_at=None)
        .execution_options(synchronize_session=False)
    )


def finish_step(
    session: Session,
    job_id: str,
    name: str,
    *,
    status: StepStatus = StepStatus.SUCCEEDED,
    detail: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> None:
    now = now or utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now}
    if detail is not None:
        values["detail"] = dict(detail)
    if started_at is not None:
        values["started_at"] = started_at
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == name)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def hold_stage_lease(session: Session, settings: Settings, job_id: str, owner: str,
                     *, now: datetime | None = None) -> None:
    """Check that `owner` still holds the job (LeaseLost otherwise) and renew the lease."""
    _require_stage_lease(session, job_id, owner)
    renew_stage_lease(session, settings, job_id, owner, now=now)


def begin_step(session: Session, settings: Settings, job_id: str, owner: str, name: str,
               *, now: datetime | None = None) -> None:
    """Mark a step running, checking (and renewing) the stage lease first."""
    now = now or utcnow()
    hold_stage_lease(session, settings, job_id, owner, now=now)
    start_step(session, job_id, name, now=now)


def end_step(session: Session, settings: Settings, job_id: str, owner: str, name: str,
             detail: Mapping[str, Any] | None = None, *, now: datetime | None = None) -> None:
    """Mark a step succeeded, checking (and renewing) the stage lease first."""
    now = now or utcnow()
    hold_stage_lease(session, settings, job_id, owner, now=now)
    finish_step(session, job_id, name, detail=detail, now=now)


def update_artifacts(session: Session, job_id: str, owner: str, changes: Mapping[str, Any]) -> None:
    """Merge `changes` into the job's artifact map (lease holder only)."""
    job = _require_stage_lease(session, job_id, owner)
    job.artifacts = {**(job.artifacts or {}), **dict(changes)}
    session.flush()


def start_train_stage(
    session: Session,
    settings: Settings,
    job_id: str,
    owner: str,
    items: Sequence[tuple[WorkKind | str, int]],
    artifacts: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> list[Dispatch]:
    """End the prepare stage: record artifacts, create the work items, hand the job over to
    the fan-out (job lease released; each item gets a dispatch deadline)."""
    now = now or utcnow()
    job = _require_stage_lease(session, job_id, owner)
    if not items:
        raise ValueError("a train stage needs at least one work item")
    job.artifacts = {**(job.artifacts or {}), **dict(artifacts)}
    job.stage = JobStage.TRAIN
    job.lease_owner = None
    job.lease_expires_at = None
    job.dispatches = 0
    job.folds_total = len(items)
    job.folds_done = 0
    job.updated_at = now
    deadline = _dispatch_deadline(settings, now, 1)
    dispatches = []
    for kind, fold in items:
        kind = WorkKind(kind)
        session.add(TrainingJobWorkItem(
            job_id=job_id, kind=kind, fold=int(fold), status=WorkStatus.PENDING, attempts=0,
            dispatches=1, lease_owner=None, lease_expires_at=deadline,
        ))
        dispatches.append(item_dispatch(job_id, kind, fold))
    session.flush()
    return dispatches


def claim_work_item(
    session: Session,
    settings: Settings,
    job_id: str,
    kind: WorkKind | str,
    fold: int,
    owner: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Take the lease of one work item of a running train stage. None: a duplicate (held,
    done, or the job moved on/failed) that should just exit."""
    now = now or utcnow()
    kind = WorkKind(kind)
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if (job is None or job.kind != JobKind.TRAIN or job.status != JobStatus.RUNNING
            or job.stage != JobStage.TRAIN):
        return None
    W = TrainingJobWorkItem
    result = session.execute(
        update(W)
        .where(
            W.job_id == job_id, W.kind == kind, W.fold == int(fold),
            W.status != WorkStatus.DONE,
            or_(
                W.lease_owner.is_(None),
                and_(W.lease_expires_at < now, W.attempts < settings.job_max_attempts),
            ),
        )
        .values(
            status=WorkStatus.RUNNING,
            attempts=case(
                (W.attempts == 0, 1),
                (W.lease_owner.is_not(None), W.attempts + 1),
                else_=W.attempts,
            ),
            lease_owner=owner,
            lease_expires_at=now + _lease(settings),
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    step = "final_fit" if kind == WorkKind.FINAL else "train_folds"
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.name == step,
               TrainingJobStep.status.in_([StepStatus.PENDING, StepStatus.RUNNING]))
        .values(status=StepStatus.RUNNING,
                started_at=func.coalesce(TrainingJobStep.started_at, now),
                attempts=case((TrainingJobStep.status == StepStatus.PENDING,
                               TrainingJobStep.attempts + 1), else_=TrainingJobStep.attempts))
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    item = session.scalars(select(W).where(W.job_id == job_id, W.kind == kind,
                                           W.fold == int(fold))).one()
    job = session.get(TrainingJob, job_id)
    assert job is not None
    _jlog(job_id, kind=kind.value, fold=int(fold), owner=owner).info(
        "claimed %s %d (attempt %d)", kind.value, fold, item.attempts
    )
    return {"job": job_snapshot(job), "item": _item_dict(item)}


def renew_item_lease(
    session: Session, settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
    owner: str, *, now: datetime | None = None,
) -> bool:
    now = now or utcnow()
    W = TrainingJobWorkItem
    result = session.execute(
        update(W)
        .where(W.job_id == job_id, W.kind == WorkKind(kind), W.fold == int(fold),
               W.lease_owner == owner, W.status == WorkStatus.RUNNING)
        .values(lease_expires_at=now + _lease(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def release_item_lease(
    session: Session, settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
    owner: str, *, now: datetime | None = None,
) -> bool:
    now = now or utcnow()
    W = TrainingJobWorkItem
    result = session.execute(
        update(W)
        .where(W.job_id == job_id, W.kind == WorkKind(kind), W.fold == int(fold),
               W.lease_owner == owner, W.status == WorkStatus.RUNNING)
        .values(lease_owner=None, status=WorkStatus.PENDING,
                lease_expires_at=now + _lease(settings))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def complete_work_item(
    session: Session,
    settings: Settings,
    job_id: str,
    kind: WorkKind | str,
    fold: int,
    owner: str,
    result: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> list[Dispatch]:
    """Record a finished work item and count it into the fan-in.

    Only the lease holder's first completion counts (conditional UPDATE), so a redelivered
    or duplicate task never counts twice. The completion that brings `folds_done` to
    `folds_total` moves the job to the evaluate stage and returns its dispatch. Raises
    LeaseLost when this worker no longer owns the item.
    """
    now = now or utcnow()
    kind = WorkKind(kind)
    W = TrainingJobWorkItem
    done = session.execute(
        update(W)
        .where(W.job_id == job_id, W.kind == kind, W.fold == int(fold),
               W.lease_owner == owner, W.status == WorkStatus.RUNNING)
        .values(status=WorkStatus.DONE, result=dict(result), finished_at=now,
                lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: {kind.value} {fold} no longer held by {owner}")
    # The fan-in counter: the UPDATE takes the job row's lock, so concurrent completions
    # serialize here and each reads the count including its own.
    counted = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.RUNNING,
               TrainingJob.stage == JobStage.TRAIN)
        .values(folds_done=TrainingJob.folds_done + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id} is no longer training")
    folds_done, folds_total = session.execute(
        select(TrainingJob.folds_done, TrainingJob.folds_total).where(TrainingJob.id == job_id)
    ).one()
    remaining = dict(
        session.execute(
            select(W.kind, func.count()).where(W.job_id == job_id, W.status != WorkStatus.DONE)
            .group_by(W.kind)
        ).all()
    )
    if kind == WorkKind.FINAL:
        finish_step(session, job_id, "final_fit", detail=_public_result(result), now=now)
    elif not remaining.get(WorkKind.FOLD) and not remaining.get(WorkKind.CHAMPION):
        folds = session.scalars(
            select(W).where(W.job_id == job_id, W.kind != WorkKind.FINAL).order_by(W.kind, W.fold)
        ).all()
        finish_step(session, job_id, "train_folds", now=now, detail={
            "folds": sum(1 for f in folds if f.kind == WorkKind.FOLD),
            "champion_folds": sum(1 for f in folds if f.kind == WorkKind.CHAMPION),
            "fit_s": round(sum(float((f.result or {}).get("fit_s", 0.0)) for f in folds), 3),
        })
    _jlog(job_id, kind=kind.value, fold=int(fold)).info(
        "%s %d done (%d/%d)", kind.value, fold, folds_done, folds_total
    )
    if folds_done < folds_total:
        return []
    advanced = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.stage == JobStage.TRAIN,
               TrainingJob.folds_done >= TrainingJob.folds_total)
        .values(stage=JobStage.EVALUATE, lease_owner=None, dispatches=1,
                lease_expires_at=_dispatch_deadline(settings, now, 1))
        .execution_options(synchronize_session=False)
    )
    if advanced.rowcount != 1:  # type: ignore[attr-defined]
        return []
    _jlog(job_id).info("all %d work items done: evaluating", folds_total)
    return [stage_dispatch(job_id, JobStage.EVALUATE)]


def _public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in {"uri", "fit_s", "train_rows", "n_threads",
                                                    "worker", "size"}}


def record_evaluation(
    session: Session, job_id: str, owner: str, evaluation: Mapping[str, Any],
    *, now: datetime | None = None,
) -> None:
    """Store the evaluation and move on to the register stage (same lease holder)."""
    now = now or utcnow()
    job = _require_stage_lease(session, job_id, owner)
    if job.stage != JobStage.EVALUATE:
        raise LeaseLost(f"job {job_id} is in stage {job.stage.value}, not evaluate")
    job.evaluation = dict(evaluation)
    job.stage = JobStage.REGISTER
    job.updated_at = now
    session.flush()
    job_event(session, "evaluation.completed", job, evaluation=job.evaluation)


def succeed_job(
    session: Session, job_id: str, owner: str, *, version: str | None,
    evaluation: Mapping[str, Any] | None = None, now: datetime | None = None,
) -> dict[str, Any]:
    """Finish the job (lease holder only): succeeded, with the version it registered."""
    now = now or utcnow()
    job = _require_stage_lease(session, job_id, owner)
    job.status = JobStatus.SUCCEEDED
    job.stage = JobStage.DONE
    job.version = version
    if evaluation is not None:
        job.evaluation = dict(evaluation)
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    session.flush()
    job_event(session, "training.completed", job, version=version)
    _jlog(job_id, version=version).info("job succeeded: version %s", version)
    return job_snapshot(job)


def fail_job(
    session: Session,
    job_id: str,
    error: str,
    *,
    owner: str | None = None,
    step: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Mark an active job failed with `error` (and the step that failed). With `owner`,
    only if that worker still holds the job or one of its work items. False if nothing
    changed (already finished, or the lease moved on)."""
    now = now or utcnow()
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return False
    if owner is not None and job.lease_owner != owner:
        holds_item = session.scalars(
            select(TrainingJobWorkItem.id).where(
                TrainingJobWorkItem.job_id == job_id, TrainingJobWorkItem.lease_owner == owner)
        ).first()
        if holds_item is None:
            return False
    job.status = JobStatus.FAILED
    job.error = error[:4000]
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    steps = session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)).all()
    for s in steps:
        if s.name == step or (step is None and s.status == StepStatus.RUNNING):
            s.status = StepStatus.FAILED
            s.finished_at = now
            s.started_at = s.started_at or now
            s.detail = {**(s.detail or {}), "error": error[:1000]}
        elif s.status == StepStatus.RUNNING:
            s.status = StepStatus.FAILED
            s.finished_at = now
        elif s.status == StepStatus.PENDING:
            s.status = StepStatus.SKIPPED
    # Free the work items so nothing waits on them.
    session.execute(
        update(TrainingJobWorkItem)
        .where(TrainingJobWorkItem.job_id == job_id, TrainingJobWorkItem.status != WorkStatus.DONE)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    if job.kind == JobKind.TRAIN:  # a search announces itself (app.evolution)
        job_event(session, "training.failed", job, error=job.error, step=step)
    _jlog(job_id, step=step).warning("job failed: %s", error)
    return True


# -- the reaper -------------------------------------------------------------------------
@dataclass
class ReapResult:
    """What one reaper pass did; publish `dispatches` after commit."""

    dispatches: list[Dispatch] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # lost leases given a new attempt
    redispatched: list[str] = field(default_factory=list)  # never-claimed work republished
    failed: list[str] = field(default_factory=list)  # attempts spent


def reap(session: Session, settings: Settings, now: datetime | None = None) -> ReapResult:
    """Recover work whose lease or dispatch deadline passed (see the module docstring).

    Safe to run concurrently (rows are locked with SKIP LOCKED on PostgreSQL; SQLite
    callers use an immediate transaction) and as often as wanted: everything it does is
    conditional on the deadline having passed. Train jobs only: an evolve job's liveness
    is its search's, which app.services.evolution.service.reap looks after.
    """
    now = now or utcnow()
    out = ReapResult()
    lease = _lease(settings)
    jobs = session.scalars(
        select(TrainingJob)
        .where(
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status.in_(ACTIVE_JOB_STATUSES),
            TrainingJob.stage.in_([JobStage.PREPARE, JobStage.EVALUATE, JobStage.REGISTER]),
            TrainingJob.lease_expires_at < now,
        )
        .order_by(TrainingJob.lease_expires_at)
        .limit(500)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        jl = _jlog(job.id, stage=job.stage.value)
        if job.lease_owner is None:
            job.dispatches += 1
            job.lease_expires_at = _dispatch_deadline(settings, now, job.dispatches)
            out.dispatches.append(stage_dispatch(job.id, job.stage))
            out.redispatched.append(job.id)
            jl.info("stage %s not claimed by its deadline: published again (%d)",
                    job.stage.value, job.dispatches)
        elif job.attempts >= settings.job_max_attempts:
            fail_job(session, job.id, (
                f"stage {job.stage.value}: the worker's lease ({settings.job_lease_seconds}s) "
                f"expired on attempt {job.attempts} of {settings.job_max_attempts} "
                f"(last owner {job.lease_owner}); giving up"), now=now)
            out.failed.append(job.id)
        else:
            jl.warning("lease of %s expired on stage %s: retrying (attempt %d of %d)",
                       job.lease_owner, job.stage.value, job.attempts + 1,
                       settings.job_max_attempts)
            job.attempts += 1
            job.lease_owner = None
            job.lease_expires_at = now + lease
            job.dispatches += 1
            _reset_running_steps(session, job.id)
            out.dispatches.append(stage_dispatch(job.id, job.stage))
            out.recovered.append(job.id)
    W = TrainingJobWorkItem
    items = session.scalars(
        select(W)
        .join(TrainingJob, TrainingJob.id == W.job_id)
        .where(
            TrainingJob.kind == JobKind.TRAIN,
            TrainingJob.status == JobStatus.RUNNING,
            TrainingJob.stage == JobStage.TRAIN,
            W.status != WorkStatus.DONE,
            W.lease_expires_at < now,
        )
        .order_by(W.lease_expires_at)
        .limit(2000)
        .with_for_update(of=W, skip_locked=True)
    ).all()
    failed_jobs: set[str] = set()
    # Jobs with a work item whose lease is alive are making progress: their unclaimed
    # items are most likely waiting behind it in the train queue, not lost, so they are
    # republished only once nothing of that job is running (no flood of duplicates).
    busy = set(session.scalars(
        select(W.job_id).where(W.job_id.in_({i.job_id for i in items}),
                               W.lease_owner.is_not(None), W.lease_expires_at >= now)
    ).all()) if items else set()
    for item in items:
        if item.job_id in failed_jobs:
            continue
        jl = _jlog(item.job_id, kind=item.kind.value, fold=item.fold)
        if item.lease_owner is None:
            if item.job_id in busy:
                continue
            item.dispatches += 1
            item.lease_expires_at = _dispatch_deadline(settings, now, item.dispatches)
            out.dispatches.append(item_dispatch(item.job_id, item.kind, item.fold))
            out.redispatched.append(item.job_id)
            jl.info("%s %d not claimed by its deadline: published again", item.kind.value,
                    item.fold)
        elif item.attempts >= settings.job_max_attempts:
            fail_job(session, item.job_id, (
                f"train stage, {item.kind.value} {item.fold}: the worker's lease "
                f"({settings.job_lease_seconds}s) expired on attempt {item.attempts} of "
                f"{settings.job_max_attempts} (last owner {item.lease_owner}); giving up"),
                step="final_fit" if item.kind == WorkKind.FINAL else "train_folds", now=now)
            failed_jobs.add(item.job_id)
            out.failed.append(item.job_id)
        else:
            jl.warning("lease of %s expired on %s %d: retrying (attempt %d of %d)",
                       item.lease_owner, item.kind.value, item.fold, item.attempts + 1,
                       settings.job_max_attempts)
            item.attempts += 1
            item.lease_owner = None
            item.status = WorkStatus.PENDING
            item.lease_expires_at = now + lease
            item.dispatches += 1
            out.dispatches.append(item_dispatch(item.job_id, item.kind, item.fold))
            out.recovered.append(item.job_id)
    session.flush()
    return out


def _reset_running_steps(session: Session, job_id: str) -> None:
    session.execute(
        update(TrainingJobStep)
        .where(TrainingJobStep.job_id == job_id, TrainingJobStep.status == StepStatus.RUNNING)
        .values(status=StepStatus.PENDING)
        .execution_options(synchronize_session=False)
    )


# -- publishing -------------------------------------------------------------------------
def enqueue(dispatches: Iterable[Dispatch], settings: Settings | None = None) -> int:
    """Publish `dispatches` (call after commit). Returns how many were published.

    A broker that is down is logged, not raised: the work stays in the database with a
    dispatch deadline, and the reaper publishes it again — the job is never lost.
    """
    return send(dispatches, settings)


def pending_dispatches(session: Session, job_id: str) -> list[Dispatch]:
    """What a job is waiting for right now (used to (re)publish it by id)."""
    job = session.get(TrainingJob, job_id)
    if (job is None or job.kind != JobKind.TRAIN
            or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING)):
        return []  # an evolve job is published by app.evolution (dispatch.advance)
    if job.stage in STAGE_TASKS:
        return [stage_dispatch(job_id, job.stage)]
    if job.stage == JobStage.TRAIN:
        items = session.scalars(
            select(TrainingJobWorkItem).where(
                TrainingJobWorkItem.job_id == job_id,
                TrainingJobWorkItem.status != WorkStatus.DONE)
        ).all()
        return [item_dispatch(job_id, i.kind, i.fold) for i in items]
    return []


def enqueue_job(job_id: str, settings: Settings | None = None) -> bool:
    """Publish what the job is waiting for; call after the creating transaction commits.
    False when the broker could not be reached (the reaper will publish it later)."""
    from app.db import transaction

    settings = settings or get_settings()
    with transaction(settings.database_url) as session:
        dispatches = pending_dispatches(session, job_id)
    return enqueue(dispatches, settings) == len(dispatches)


# -- queries ----------------------------------------------------------------------------
def job_snapshot(job: TrainingJob) -> dict[str, Any]:
    """The job row as plain data for the pipeline (no steps)."""
    return {
        "job_id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "stage": job.stage.value,
        "model_id": job.model_id,
        "model_type": job.model_type.value,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "regime": job.regime,
        "dataset_span_days": job.dataset_span_days,
        "params": dict(job.params or {}),
        "strategy": dict(job.strategy) if job.strategy else None,
        "trigger_reason": job.trigger_reason.value,
        "requested_by": job.requested_by,
        "attempts": job.attempts,
        "lease_owner": job.lease_owner,
        "folds_total": job.folds_total,
        "folds_done": job.folds_done,
        "artifacts": dict(job.artifacts or {}),
        "evaluation": dict(job.evaluation) if job.evaluation else None,
        "version": job.version,
        "error": job.error,
    }


def _item_dict(item: TrainingJobWorkItem) -> dict[str, Any]:
    result = dict(item.result or {})
    return {
        "kind": item.kind.value,
        "fold": item.fold,
        "status": item.status.value,
        "attempts": item.attempts,
        "worker": result.get("worker") or (item.lease_owner or "").rsplit("/", 1)[0] or None,
        "fit_s": result.get("fit_s"),
        "started_at": isoformat(item.started_at),
        "finished_at": isoformat(item.finished_at),
        "result": result or None,
    }


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _progress(job: TrainingJob, steps: Sequence[TrainingJobStep],
              items: Sequence[TrainingJobWorkItem]) -> float:
    if job.status == JobStatus.SUCCEEDED:
        return 1.0
    if job.kind == JobKind.EVOLVE:  # trials recorded / trials planned
        return round(min(job.folds_done / job.folds_total, 1.0), 4) if job.folds_total else 0.0
    done = 0.0
    folds = [i for i in items if i.kind != WorkKind.FINAL]
    for s in steps:
        if s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            done += 1.0
        elif s.status == StepStatus.RUNNING and s.name == "train_folds" and folds:
            done += sum(1 for i in folds if i.status == WorkStatus.DONE) / len(folds)
    return round(min(done / len(STEP_NAMES), 1.0), 4)


def job_to_dict(job: TrainingJob, steps: Sequence[TrainingJobStep],
                items: Sequence[TrainingJobWorkItem]) -> dict[str, Any]:
    """The API shape of a job (contract: GET /clm/jobs/{job_id}). An evolve job also has
    `search_id` and `trials` {total, done}; its steps are the search's generations."""
    evaluation = dict(job.evaluation) if job.evaluation else None
    evolve = job.kind == JobKind.EVOLVE
    out = {
        "job_id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "model_id": job.model_id,
        "model_type": job.model_type.value,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "regime": job.regime,
        "dataset_span_days": job.dataset_span_days,
        "params": dict(job.params or {}),
        "strategy": dict(job.strategy) if job.strategy else None,
        "trigger_reason": job.trigger_reason.value,
        "requested_by": job.requested_by,
        "stage": job.stage.value,
        "attempts": job.attempts,
        "progress": _progress(job, steps, items),
        "steps": [
            {
                "name": s.name,
                "status": s.status.value,
                "started_at": isoformat(s.started_at),
                "finished_at": isoformat(s.finished_at),
                "duration_s": _duration(s.started_at, s.finished_at),
                "attempts": s.attempts,
                "detail": s.detail,
            }
            for s in sorted(steps, key=lambda s: s.position)
        ],
        "folds": {
            "total": 0 if evolve else job.folds_total,
            "done": 0 if evolve else job.folds_done,
            "items": [_item_dict(i) for i in sorted(items, key=lambda i: (i.kind.value, i.fold))],
        },
        "evaluation": evaluation,
        "version": job.version,
        "version_status": (evaluation or {}).get("decision", {}).get("status")
        if job.version else None,
        "error": job.error,
        "lease": {"owner": job.lease_owner, "expires_at": isoformat(job.lease_expires_at)},
        "artifacts": dict(job.artifacts or {}),
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
        "duration_s": _duration(job.started_at, job.finished_at),
    }
    if evolve:
        out["search_id"] = (job.artifacts or {}).get("search_id")
        out["trials"] = {"total": job.folds_total, "done": job.folds_done}
    return out


def get_job(session: Session, job_id: str) -> dict[str, Any]:
    """One job with steps, work items, progress, evaluation, version and error."""
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise JobNotFound(str(job_id))
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    steps = session.scalars(
        select(TrainingJobStep).where(TrainingJobStep.job_id == job_id)
        .execution_options(populate_existing=True)
    ).all()
    items = session.scalars(
        select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id == job_id)
        .execution_options(populate_existing=True)
    ).all()
    return job_to_dict(job, steps, items)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    model_id: str | None = None,
    model_type: str | None = None,
    trigger_reason: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    after: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Jobs (every kind unless `kind` says) newest first, filtered; fetches `limit + 1`
    rows. Returns the items and their keyset keys ([created_at, id]) for
    `app.api.pagination.page`."""
    q = select(TrainingJob)
    if kind is not None:
        q = q.where(TrainingJob.kind == JobKind(kind))
    if status is not None:
        q = q.where(TrainingJob.status == JobStatus(status))
    if model_id is not None:
        q = q.where(TrainingJob.model_id == model_id)
    if model_type is not None:
        q = q.where(TrainingJob.model_type == ModelType(model_type))
    if trigger_reason is not None:
        q = q.where(TrainingJob.trigger_reason == TriggerReason(trigger_reason))
    if after is not None:
        created = parse_cursor_time(str(after[0]))
        q = q.where(or_(TrainingJob.created_at < created,
                        and_(TrainingJob.created_at == created, TrainingJob.id < str(after[1]))))
    jobs = session.scalars(
        q.order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit + 1)
    ).all()
    ids = [j.id for j in jobs]
    steps: dict[str, list[TrainingJobStep]] = {i: [] for i in ids}
    items: dict[str, list[TrainingJobWorkItem]] = {i: [] for i in ids}
    if ids:
        for s in session.scalars(select(TrainingJobStep).where(TrainingJobStep.job_id.in_(ids))):
            steps[s.job_id].append(s)
        for w in session.scalars(
            select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id.in_(ids))
        ):
            items[w.job_id].append(w)
    out = [job_to_dict(j, steps[j.id], items[j.id]) for j in jobs]
    keys = [[isoformat(j.created_at) or "", j.id] for j in jobs]
    return out, keys


def parse_cursor_time(value: str) -> datetime:
    """The created_at of a list cursor key (ValueError if it is not an ISO timestamp)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("cursor time must carry a timezone")
    return parsed


def job_counts(session: Session) -> dict[str, int]:
    """Number of jobs per status (every status present, zeros included)."""
    counts = dict(
        session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status)).all()
    )
    return {s.value: int(counts.get(s, 0)) for s in JobStatus}


def work_items(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's work items (kind, fold, status, result), in (kind, fold) order."""
    rows = session.scalars(
        select(TrainingJobWorkItem).where(TrainingJobWorkItem.job_id == job_id)
        .order_by(TrainingJobWorkItem.kind, TrainingJobWorkItem.fold)
        .execution_options(populate_existing=True)
    ).all()
    return [_item_dict(r) for r in rows]


# -- metrics (scraped by GET /metrics; registered by app/api/jobs.py) -------------------
_METRICS_WINDOW = timedelta(days=7)  # duration histograms cover recent jobs only


def job_metrics(session: Session, settings: Settings) -> Iterator[Any]:
    """Prometheus families: jobs by status and trigger, lost leases, and job and step
    duration histograms over the last seven days (fleet facts from the database)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from app.api.metrics import histogram_family

    by_status = GaugeMetricFamily("clm_training_jobs", "Training jobs by status and trigger",
                                  labels=["status", "trigger_reason"])
    train = TrainingJob.kind == JobKind.TRAIN  # searches have their own metrics
    for status, reason, count in session.execute(
        select(TrainingJob.status, TrainingJob.trigger_reason, func.count())
        .where(train).group_by(TrainingJob.status, TrainingJob.trigger_reason)
    ):
        by_status.add_metric([JobStatus(status).value, TriggerReason(reason).value], count)
    yield by_status
    recovered = session.scalar(
        select(func.coalesce(func.sum(TrainingJob.attempts - 1), 0))
        .where(train, TrainingJob.attempts > 1)
    )
    lost = CounterMetricFamily("clm_training_job_lost_leases",
                               "Stage leases that expired under a worker (retried attempts)")
    lost.add_metric([], float(recovered or 0))
    yield lost
    since = utcnow() - _METRICS_WINDOW
    jobs_rows: dict[tuple[str, ...], list[float]] = {}
    for model_type, status, started, finished in session.execute(
        select(TrainingJob.model_type, TrainingJob.status, TrainingJob.started_at,
               TrainingJob.finished_at)
        .where(train, TrainingJob.finished_at >= since, TrainingJob.started_at.is_not(None))
    ):
        key = (ModelType(model_type).value, JobStatus(status).value)
        jobs_rows.setdefault(key, []).append((finished - started).total_seconds())
    yield histogram_family("clm_training_job_duration_seconds",
                           "Finished training jobs: first claim to finish",
                           ["model_type", "status"], jobs_rows)
    step_rows: dict[tuple[str, ...], list[float]] = {}
    for name, started, finished in session.execute(
        select(TrainingJobStep.name, TrainingJobStep.started_at, TrainingJobStep.finished_at)
        .join(TrainingJob, TrainingJob.id == TrainingJobStep.job_id)
        .where(train, TrainingJobStep.status == StepStatus.SUCCEEDED,
               TrainingJobStep.finished_at >= since)
    ):
        step_rows.setdefault((name,), []).append((finished - started).total_seconds())
    yield histogram_family("clm_training_step_duration_seconds",
                           "Succeeded pipeline steps", ["step"], step_rows)
