"""Strategy search as a service: DB state machine around Optuna's NSGA-II.

Owns every write to strategy_searches, strategy_search_generations and
strategy_candidates. Public functions:

- `start_search` / `propose_variants` (take the caller's session; only flush): validate
  against the strategy space, snapshot the data, insert a queued search. The caller
  commits, then publishes `dispatch.advance(search_id)`.
- `run_advance(settings, search_id)` — the coordinator: asks Optuna for one generation
  (or finishes the search after the last one).
- `run_trial(settings, candidate_id)` — one trial: claim, evaluate walk-forward, tell
  Optuna, bump the generation counter; the trial that completes a generation returns
  the dispatch that advances the search.
- `run_finish` — front, hypervolume, regime choices, Deflated Sharpe, hold-out check.
- `reap(settings)` / `resume_search` — re-publish what a crash or a lost message left.
- reads: `get_search`, `search_job`, `list_candidates`, `get_candidate`;
  `train_candidate` turns a candidate into a normal training job (gate included).
- `drive_inline` runs a search to the end in this process with the same functions.

The run_* functions are units of work: Optuna's RDBStorage uses its own connections, so
Optuna calls happen *between* CLM transactions, never inside one (on SQLite a CLM write
transaction would hold the lock Optuna needs). The one exception is a trial's tell: it
writes Optuna's rows through CLM's own session, in the transaction that records the
result (`search.tell_in_session`), so told and recorded commit together.

State machine
  search:    queued ──advance──► running ──last generation complete──► succeeded
                                     └── unrecoverable error ──► failed
  candidate: pending ──claim (conditional UPDATE + lease)──► running
             running ──evaluated + told──► evaluated | failed (error / attempts spent)
             running ──lease expired (reaper)──► pending (re-published)
  generation: size = trials asked; evaluated + failed counters bumped in the same
             transaction as the candidate's result; the bump that reaches `size` sets
             completed_at (conditional) and publishes advance exactly once.
Idempotency: Optuna trials are told only if not finished yet; candidate rows are unique
per (search, trial number); a coordinator lease (`advancing_until`) keeps two coordinators
from asking the same generation, and a crashed coordinator's asked-but-unrecorded trials
are adopted by the next one (they carry CLM's generation tag).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.analysis.objectives import (
    OBJECTIVES,
    Constraints,
    constraint_values,
    is_feasible,
    objective_values,
    parse_objectives,
)
from app.analysis.overfitting import deflated_sharpe_ratio, holdout_split, holdout_verdict
from app.analysis.selection import choose, hypervolume, pareto_front, reference_point
from app.bus import evolution_dispatch as dispatch
from app.bus.evolution_dispatch import EvolutionDispatch
from app.core.config import Settings
from app.core.domain import TriggerReason, make_model_id, normalize_symbol, timeframe_seconds
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.timeutil import ensure_utc, isoformat, utcnow
from app.db import transaction
from app.ml.evolution.evaluate import EvalSettings, evaluate_holdout, evaluate_strategy
from app.ml.evolution.space import SPACES, SpaceError, StrategySpace, decode, space_for
from app.models.evolution import (
    CandidateStatus,
    SearchGeneration,
    SearchStatus,
    StrategyCandidate,
    StrategySearch,
)
from app.services import jobs as job_service
from app.services.evolution import search

log = logging.getLogger(__name__)

__all__ = [
    "EvolutionConfig",
    "candidate_dict",
    "drive_inline",
    "get_candidate",
    "get_search",
    "list_candidates",
    "propose_variants",
    "propose_variants_on_degraded",
    "reap",
    "resume_search",
    "run_advance",
    "run_finish",
    "run_trial",
    "search_job",
    "start_search",
    "train_candidate",
]

MAX_POPULATION = 256
MAX_GENERATIONS = 100
# A failed evaluation is told to Optuna as COMPLETE with these values and a violated
# "evaluation_ok" constraint: every generation then holds exactly `population` complete
# trials (NSGA-II's generation bookkeeping counts them), and constrained domination
# ranks the failure below every trial that evaluated.
_FAILURE_VALUES = {"sharpe": -10.0, "max_drawdown": 1.0, "profit_factor": 0.0, "turnover": 2.0}


# -- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class EvolutionConfig:
    """Search defaults from Settings (CLM_EVOLUTION_* variables)."""

    population: int = 16
    generations: int = 4
    min_trades: int = 50
    holdout_fraction: float = 0.2
    mutation_magnitude: float = 0.2
    variants: int = 6
    trial_lease_s: float = 120.0
    requeue_after_s: float = 300.0
    collapse_ratio: float = 0.5
    max_attempts: int = 3
    auto_train_variants: bool = True
    preferences: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> EvolutionConfig:
        base = cls()
        values: dict[str, Any] = {}
        for name in ("population", "generations", "min_trades", "holdout_fraction",
                     "mutation_magnitude", "variants", "trial_lease_s", "requeue_after_s",
                     "collapse_ratio", "auto_train_variants", "preferences"):
            values[name] = getattr(settings, f"evolution_{name}", getattr(base, name))
        values["max_attempts"] = settings.job_max_attempts
        return cls(**values)


# -- small helpers ----------------------------------------------------------------------
def _emit(session: Session, event_type: str, payload: dict[str, Any]) -> None:
    """Publish through the outbox (same transaction) when the event bus is installed."""
    try:
        from app.bus.events import emit  # type: ignore[attr-defined]
    except ImportError:
        return
    emit(session, event_type, payload)


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _search_row(session: Session, search_id: str, *, lock: bool = False) -> StrategySearch:
    stmt = select(StrategySearch).where(StrategySearch.id == search_id)
    if lock and not _is_sqlite(session):
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise NotFound(f"no strategy search {search_id}", search_id=search_id)
    return row


def _space_of(row: StrategySearch) -> StrategySpace:
    return StrategySpace.from_dict(row.space)


_frame_cache: OrderedDict[str, pd.DataFrame] = OrderedDict()
_regime_cache: OrderedDict[tuple[str, int], pd.Series] = OrderedDict()
_cache_lock = threading.Lock()


def _load_frame(settings: Settings, uri: str, sha256: str | None) -> pd.DataFrame:
    """The search's data snapshot; kept in memory per process (trials reuse it)."""
    from app.ml.artifacts import ArtifactStore

    key = f"{uri}#{sha256}"
    with _cache_lock:
        if key in _frame_cache:
            _frame_cache.move_to_end(key)
            return _frame_cache[key]
    frame = ArtifactStore(settings.artifact_root).get_frame(uri, sha256)
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC").rename("timestamp")
    with _cache_lock:
        _frame_cache[key] = frame
        while len(_frame_cache) > 3:
            _frame_cache.popitem(last=False)
    return frame


def _regimes(key: str, frame: pd.DataFrame, holdout_start: int) -> pd.Series:
    from app.ml.evolution.evaluate import regime_series

    ck = (key, holdout_start)
    with _cache_lock:
        if ck in _regime_cache:
            return _regime_cache[ck]
    labels = regime_series(frame.iloc[:holdout_start])
    with _cache_lock:
        _regime_cache[ck] = labels
        while len(_regime_cache) > 3:
            _regime_cache.popitem(last=False)
    return labels


def _finite(value: Any) -> Any:
    """JSON-safe numbers (NaN/inf → None), recursively."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- starting a search ------------------------------------------------------------------
def _read_market_data(settings: Settings, symbol: str, timeframe: str,
                      span_days: int) -> pd.DataFrame:
    from app.ml.data.store import DataNotFound, MarketDataStore

    store = MarketDataStore(settings.data_dir)
    coverage = store.coverage(symbol, timeframe)
    if coverage is None:
        raise InvalidInput("symbol", f"no market data for {symbol} {timeframe}; import some "
                                     f"with `clm data import FILE --symbol {symbol} "
                                     f"--timeframe {timeframe}`")
    last = coverage.last.to_pydatetime()
    tf = timeframe_seconds(timeframe)
    available = ((coverage.last - coverage.first).total_seconds() + tf) / 86_400
    if span_days > math.ceil(available):
        # Same rule as a training job: a candidate must be trainable on the same span.
        raise InvalidInput("dataset_span_days", f"only {available:.1f} days of {symbol} "
                                                f"{timeframe} data are stored; asked for "
                                                f"{span_days}")
    start = last - timedelta(days=span_days) + timedelta(seconds=timeframe_seconds(timeframe))
    try:
        return store.read(symbol, timeframe, start, last)
    except DataNotFound as exc:
        raise InvalidInput("symbol", str(exc)) from None


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(name, f"must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def start_search(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    objectives: Sequence[str] | None = None,
    population: int | None = None,
    generations: int | None = None,
    constraints: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    regime: str | None = None,
    seed: int = 0,
    requested_by: str | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    frame: pd.DataFrame | None = None,
    evaluation: Mapping[str, Any] | None = None,
    base_space: StrategySpace | None = None,
    kind: str = "search",
    fixed: Sequence[Mapping[str, Any]] = (),
    source_model_version: str | None = None,
) -> dict[str, Any]:
    """Validate and insert a queued search; returns {"search_id", "job_id", ...}.

    `space`: request overrides of the model type's declared space (see
    StrategySpace.narrow). `frame`: market data to use instead of the store (tests,
    benchmarks). `fixed`: [{"params", "origin", "parents"}] evaluated as generation 0
    (variant searches). Raises InvalidInput naming the field. Publish
    `dispatch.advance(search_id)` after commit.
    """
    cfg = EvolutionConfig.from_settings(settings)
    try:
        declared = base_space or space_for(model_type)
    except SpaceError as exc:
        raise InvalidInput("model_type", str(exc)) from None
    try:
        sym = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    try:
        timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput("timeframe", str(exc)) from None
    span = _int_in("dataset_span_days", dataset_span_days, 1, 36_500)
    try:
        names = parse_objectives(objectives)
    except ValueError as exc:
        raise InvalidInput("objectives", str(exc)) from None
    pop = _int_in("population", cfg.population if population is None else population, 2,
                  MAX_POPULATION)
    gens = _int_in("generations", cfg.generations if generations is None else generations, 1,
                   MAX_GENERATIONS)
    try:
        cons = Constraints.from_dict(
            {"min_trades": cfg.min_trades, **dict(constraints or {})})
    except (TypeError, ValueError) as exc:
        raise InvalidInput("constraints", str(exc)) from None
    try:
        searched = declared.narrow(space)
    except SpaceError as exc:
        raise InvalidInput(f"space.{exc.field}", str(exc)) from None
    if regime is not None and (not isinstance(regime, str) or not 1 <= len(regime) <= 40):
        raise InvalidInput("regime", "must be a string of 1-40 characters")
    checked_fixed = []
    for i, item in enumerate(fixed):
        try:
            checked_fixed.append({"params": searched.validate(item["params"]),
                                  "origin": str(item.get("origin", "fixed")),
                                  "parents": list(item.get("parents", []))})
        except SpaceError as exc:
            raise InvalidInput(f"fixed[{i}].{exc.field}", str(exc)) from None
    try:
        eval_cfg = EvalSettings.from_dict({
            "n_folds": settings.walk_forward_folds, "fee_bps": settings.fee_bps,
            "slippage_bps": settings.slippage_bps, "holdout_fraction": cfg.holdout_fraction,
            "collapse_ratio": cfg.collapse_ratio, "seed": int(seed),
            **dict(evaluation or {}),
        })
    except (TypeError, ValueError) as exc:
        raise InvalidInput("evaluation", str(exc)) from None

    if frame is None:
        frame = _read_market_data(settings, sym, timeframe, span)
    try:
        holdout_start = holdout_split(len(frame), eval_cfg.holdout_fraction,
                                      eval_cfg.holdout_min_bars)
        # The default strategy must fit the walk-forward set-up on the search part.
        from app.ml.evaluation import make_folds, prepare_dataset

        default = decode(searched, searched.defaults())
        ecfg = eval_cfg.evaluation_config(default.label_horizon)
        rows = prepare_dataset(frame.iloc[:holdout_start], ecfg, default.windows).n_rows
        make_folds(rows, ecfg)
    except ValueError as exc:
        raise InvalidInput("dataset_span_days", f"{span} days hold {len(frame)} bars, too "
                                                f"few for a search: {exc}") from None

    from app.ml.artifacts import ArtifactStore

    ref = ArtifactStore(settings.artifact_root).put_frame(frame)
    search_id = str(uuid.uuid4())
    job_id = str(uuid.uuid4())
    now = utcnow()
    row = StrategySearch(
        id=search_id, job_id=job_id, kind=kind, model_id=make_model_id(
            searched.model_type, sym, timeframe),
        model_type=searched.model_type, symbol=sym, timeframe=timeframe,
        dataset_span_days=span, regime=regime, objectives=names,
        constraints=cons.to_dict(), population=max(pop, len(checked_fixed)),
        generations=gens, space=searched.to_dict(),
        config={
            "evaluation": eval_cfg.to_dict(), "holdout_start": holdout_start,
            "n_bars": len(frame), "fixed": checked_fixed, "trigger_reason": trigger_reason,
            "preferences": cfg.preferences, "data_first": isoformat(frame.index[0]),
            "data_last": isoformat(frame.index[-1]),
        },
        seed=int(seed), study_name=f"clm-search-{search_id}", data_uri=ref.uri,
        data_sha256=ref.sha256, status=SearchStatus.QUEUED, current_generation=-1,
        trials_total=0, trials_evaluated=0, trials_failed=0,
        source_model_version=source_model_version, requested_by=requested_by,
        created_at=now, updated_at=now,
    )
    session.add(row)
    session.flush()
    # The search's job (GET /clm/jobs): status and progress mirror the search below.
    job_service.create_evolve_job(
        session, job_id=job_id, search_id=search_id, model_type=row.model_type, symbol=sym,
        timeframe=timeframe, dataset_span_days=span, generations=gens,
        trials_planned=row.population * gens, trigger_reason=trigger_reason,
        requested_by=requested_by, regime=regime, now=now)
    log.info("strategy search %s created for %s (%d x %d)", search_id, row.model_id,
             row.population, gens)
    return search_dict(row)


# -- the coordinator --------------------------------------------------------------------
def run_advance(settings: Settings, search_id: str) -> list[EvolutionDispatch]:
    """Ask Optuna for the next generation, or finish the search after the last one.

    Returns the dispatches to publish (already committed). Safe to run twice: the
    coordinator lease and the generation check make a duplicate a no-op.
    """
    cfg = EvolutionConfig.from_settings(settings)
    url = settings.database_url
    now = utcnow()
    with transaction(url, immediate=True) as session:
        row = _search_row(session, search_id, lock=True)
        if row.status in (SearchStatus.SUCCEEDED, SearchStatus.FAILED):
            return []
        gen = row.current_generation
        if gen >= 0:
            generation = session.get(SearchGeneration, (search_id, gen))
            if generation is None or generation.completed_at is None:
                return []  # trials still running: their last one advances
        if row.advancing_until is not None and ensure_utc(row.advancing_until) > now:
            return []  # another coordinator holds the lease
        row.advancing_until = now + timedelta(seconds=cfg.trial_lease_s)
        row.status = SearchStatus.RUNNING
        row.updated_at = now
        job_service.evolve_job_running(session, row.job_id, now=now)
        next_gen = gen + 1
        finished = next_gen >= row.generations
        study_name, population, seed = row.study_name, row.population, row.seed
        directions = [OBJECTIVES[n].direction for n in row.objectives]
        space = _space_of(row)
        distributions = space.distributions()
        fixed = list((row.config or {}).get("fixed") or []) if next_gen == 0 else []
    if finished:
        return run_finish(settings, search_id)

    try:
        search.create_study(url, study_name, directions)
        study = search.load_study(url, study_name, population,
                                  (seed * 1000 + next_gen) % 2**32)
        adopted = _orphans(study, next_gen)
        need = max(population - len(adopted), 0)
        fixed_params = [f["params"] for f in fixed][len(adopted):]
        asked = adopted + search.ask_generation(study, distributions, need, next_gen,
                                                fixed=fixed_params[:need])
    except Exception:
        with transaction(url) as session:
            session.execute(update(StrategySearch).where(StrategySearch.id == search_id)
                            .values(advancing_until=None))
        raise

    with transaction(url, immediate=True) as session:
        row = _search_row(session, search_id, lock=True)
        if row.current_generation != gen:
            return []  # someone else recorded this generation meanwhile
        existing = {c.trial_number: c for c in session.scalars(
            select(StrategyCandidate).where(StrategyCandidate.search_id == search_id)).all()}
        origins = {i: f for i, f in enumerate(fixed)}
        created: list[StrategyCandidate] = []
        for i, trial in enumerate(asked):
            if trial.number in existing:
                continue
            meta = origins.get(i)
            parents = [existing[n].id for n in trial.parents if n in existing]
            if meta is not None:
                parents = list(meta.get("parents") or [])
            cand = StrategyCandidate(
                search_id=search_id, model_id=row.model_id, model_type=row.model_type,
                generation=next_gen, trial_number=trial.number,
                # Snapped onto the declared grid: Optuna's stepped floats carry binary
                # noise (0.42000000000000004); the value evaluated is the grid value.
                optuna_trial_id=trial.trial_id, params=_finite(space.snap_all(trial.params)),
                parents=parents,
                origin=(meta or {}).get("origin", "random" if next_gen == 0 else "nsga2"),
                status=CandidateStatus.PENDING, pareto=False, attempts=0, told=False,
                enqueued_at=now, created_at=now,
            )
            session.add(cand)
            created.append(cand)
        session.add(SearchGeneration(search_id=search_id, generation=next_gen,
                                     size=len(asked), evaluated=0, failed=0, created_at=now))
        row.current_generation = next_gen
        row.advancing_until = None
        row.trials_total = (row.trials_total or 0) + len(created)
        row.updated_at = utcnow()
        session.flush()
        job_service.evolve_generation_started(session, row.job_id, next_gen, trials=len(asked))
        for cand in created:
            _emit(session, "candidate.created", {
                "candidate_id": cand.id, "search_id": search_id, "model_id": row.model_id,
                "generation": next_gen, "params": cand.params, "parents": cand.parents,
                "origin": cand.origin,
            })
        ids = [c.id for c in created]
        # Adopted trials already had rows only if recorded; re-publish any still pending.
        ids += [c.id for c in existing.values()
                if c.generation == next_gen and c.status == CandidateStatus.PENDING]
    log.info("search %s: generation %d asked (%d trials)", search_id, next_gen, len(ids))
    return [dispatch.evaluate(cid) for cid in ids]


def _orphans(study: Any, generation: int) -> list[search.AskedTrial]:
    """Trials a crashed coordinator asked for this generation but never recorded."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get(search.CLM_GENERATION_ATTR) == generation:
            out.append(search.AskedTrial(t.number, t._trial_id, dict(t.params), []))
    return out


# -- one trial --------------------------------------------------------------------------
class LeaseLost(RuntimeError):
    """Another worker took this trial over (our lease expired)."""


def _claim(settings: Settings, candidate_id: int, token: str,
           cfg: EvolutionConfig) -> dict[str, Any] | None:
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        result = session.execute(
            update(StrategyCandidate)
            .where(StrategyCandidate.id == candidate_id,
                   or_(StrategyCandidate.status == CandidateStatus.PENDING,
                       and_(StrategyCandidate.status == CandidateStatus.RUNNING,
                            StrategyCandidate.lease_until < now)))
            .values(status=CandidateStatus.RUNNING, claim_token=token,
                    lease_until=now + timedelta(seconds=cfg.trial_lease_s),
                    attempts=StrategyCandidate.attempts + 1, started_at=now,
                    evaluated_by=f"{socket.gethostname()}:{os.getpid()}"[:200])
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        cand = session.get(StrategyCandidate, candidate_id)
        assert cand is not None
        row = _search_row(session, cand.search_id)
        if row.status in (SearchStatus.SUCCEEDED, SearchStatus.FAILED):
            return None
        return {
            "candidate_id": cand.id, "search_id": row.id, "generation": cand.generation,
            "attempts": cand.attempts, "params": dict(cand.params),
            "optuna_trial_id": cand.optuna_trial_id, "space": row.space,
            "config": row.config, "objectives": list(row.objectives),
            "constraints": dict(row.constraints or {}), "study_name": row.study_name,
            "population": row.population, "seed": row.seed, "data_uri": row.data_uri,
            "data_sha256": row.data_sha256, "model_id": row.model_id,
            "search_job_id": row.job_id,
        }


def _heartbeat(settings: Settings, candidate_id: int, token: str, cfg: EvolutionConfig) -> None:
    with transaction(settings.database_url) as session:
        result = session.execute(
            update(StrategyCandidate)
            .where(StrategyCandidate.id == candidate_id, StrategyCandidate.claim_token == token,
                   StrategyCandidate.status == CandidateStatus.RUNNING)
            .values(lease_until=utcnow() + timedelta(seconds=cfg.trial_lease_s))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise LeaseLost(f"candidate {candidate_id}: lease lost")


def run_trial(settings: Settings, candidate_id: int) -> list[EvolutionDispatch]:
    """Claim, evaluate walk-forward OOS, tell Optuna, record; see the module docstring."""
    cfg = EvolutionConfig.from_settings(settings)
    token = str(uuid.uuid4())
    job = _claim(settings, int(candidate_id), token, cfg)
    if job is None:
        return []
    t0 = time.perf_counter()
    space = StrategySpace.from_dict(job["space"])
    names: list[str] = job["objectives"]
    cons = Constraints.from_dict(job["constraints"])
    metrics: dict[str, Any] | None = None
    regime_metrics: dict[str, Any] | None = None
    error: str | None = None
    if job["attempts"] > cfg.max_attempts:
        error = (f"gave up after {cfg.max_attempts} attempts (the worker evaluating it "
                 "died or stalled each time)")
    else:
        try:
            frame = _load_frame(settings, job["data_uri"], job["data_sha256"])
            hs = int(job["config"]["holdout_start"])
            regimes = _regimes(f"{job['data_uri']}#{job['data_sha256']}", frame, hs)
            result = evaluate_strategy(
                frame, space, job["params"], EvalSettings.from_dict(job["config"]["evaluation"]),
                holdout_start=hs, regimes=regimes,
                heartbeat=lambda: _heartbeat(settings, int(candidate_id), token, cfg),
                # A third of the lease: renewed well before it runs out, without a
                # commit after every fold of a short trial.
                heartbeat_every_s=cfg.trial_lease_s / 3,
            )
            metrics, regime_metrics = _finite(result.metrics), _finite(result.regime_metrics)
        except LeaseLost:
            log.warning("candidate %s: lease lost during evaluation; dropping", candidate_id)
            return []
        except (ValueError, KeyError, LookupError) as exc:
            # Parameters that leave too little data, a corrupt snapshot...: this
            # parameter set fails, the search goes on.
            error = f"{type(exc).__name__}: {exc}"
    if metrics is not None:
        values = objective_values(metrics, names)
        constraints = {**constraint_values(metrics, cons), "evaluation_ok": 0.0}
    else:
        values = [_FAILURE_VALUES[n] for n in names]
        constraints = {**{k: 1.0 for k in constraint_values({}, cons)}, "evaluation_ok": 1.0}
    user_attrs = {"clm_candidate_id": int(candidate_id)}
    # Told in the record's own transaction where Optuna's storage allows it: the trial
    # is then told and recorded together or not at all (one commit fewer per trial).
    joint = search.can_tell_in_session(settings.database_url)
    if not joint:
        search.tell_trial(settings.database_url, job["study_name"], job["optuna_trial_id"],
                          values, constraints, population=job["population"],
                          seed=job["seed"], user_attrs=user_attrs)
    elapsed = time.perf_counter() - t0
    return _record_trial(settings, job, token, metrics, regime_metrics, values, constraints,
                         error, elapsed, tell_attrs=user_attrs if joint else None)


def _record_trial(settings: Settings, job: Mapping[str, Any], token: str,
                  metrics: dict[str, Any] | None, regime_metrics: dict[str, Any] | None,
                  values: list[float], constraints: dict[str, float], error: str | None,
                  elapsed: float, *,
                  tell_attrs: Mapping[str, Any] | None = None) -> list[EvolutionDispatch]:
    """Store the result and bump the counters; with `tell_attrs`, tell Optuna in the same
    transaction (after the lease check, so a worker that lost the trial tells nothing)."""
    names: list[str] = job["objectives"]
    ok = metrics is not None
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        result = session.execute(
            update(StrategyCandidate)
            .where(StrategyCandidate.id == job["candidate_id"],
                   StrategyCandidate.claim_token == token,
                   StrategyCandidate.status == CandidateStatus.RUNNING)
            .values(
                status=CandidateStatus.EVALUATED if ok else CandidateStatus.FAILED,
                objectives=dict(zip(names, values, strict=True)) if ok else None,
                constraints=constraints, feasible=ok and is_feasible(constraints),
                metrics=metrics, regime_metrics=regime_metrics, error=error, told=True,
                lease_until=None, evaluation_seconds=elapsed, finished_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return []  # lost the lease; the new owner records (Optuna was told once)
        if tell_attrs is not None:
            # False: an earlier attempt told it already (idempotent either way).
            search.tell_in_session(session, job["optuna_trial_id"], values, constraints,
                                   user_attrs=tell_attrs)
        column = SearchGeneration.evaluated if ok else SearchGeneration.failed
        counts = session.execute(
            update(SearchGeneration)
            .where(SearchGeneration.search_id == job["search_id"],
                   SearchGeneration.generation == job["generation"])
            .values({column.key: column + 1})
            .returning(SearchGeneration.evaluated, SearchGeneration.failed,
                       SearchGeneration.size)
        ).one()
        search_counter = StrategySearch.trials_evaluated if ok else StrategySearch.trials_failed
        session.execute(
            update(StrategySearch).where(StrategySearch.id == job["search_id"])
            .values({search_counter.key: search_counter + 1, "updated_at": now})
            .execution_options(synchronize_session=False)
        )
        job_service.evolve_trial_recorded(session, job.get("search_job_id"), now=now)
        done = counts.evaluated + counts.failed >= counts.size
        if not done:
            return []
        won = session.execute(
            update(SearchGeneration)
            .where(SearchGeneration.search_id == job["search_id"],
                   SearchGeneration.generation == job["generation"],
                   SearchGeneration.completed_at.is_(None))
            .values(completed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not won:
            return []
        hv = _update_front(session, job["search_id"])
        session.execute(
            update(SearchGeneration)
            .where(SearchGeneration.search_id == job["search_id"],
                   SearchGeneration.generation == job["generation"])
            .values(hypervolume=hv).execution_options(synchronize_session=False)
        )
        job_service.evolve_generation_completed(
            session, job.get("search_job_id"), job["generation"], now=now,
            detail=_finite({"evaluated": counts.evaluated, "failed": counts.failed,
                            "hypervolume": hv}))
    log.info("search %s: generation %d complete (hypervolume %.4f)", job["search_id"],
             job["generation"], hv)
    return [dispatch.advance(job["search_id"])]


def _update_front(session: Session, search_id: str) -> float:
    """Mark the Pareto front among evaluated feasible candidates; return its hypervolume."""
    row = _search_row(session, search_id)
    names = list(row.objectives)
    cands = session.scalars(select(StrategyCandidate).where(
        StrategyCandidate.search_id == search_id,
        StrategyCandidate.status == CandidateStatus.EVALUATED)).all()
    values = [[c.objectives[n] for n in names] for c in cands]
    dirs = [OBJECTIVES[n].direction for n in names]
    front = set(pareto_front(values, dirs, [bool(c.feasible) for c in cands]))
    for i, c in enumerate(cands):
        c.pareto = i in front
    session.flush()
    return hypervolume([values[i] for i in front], dirs, reference_point(names))


# -- finishing --------------------------------------------------------------------------
def _candidate_view(c: StrategyCandidate) -> dict[str, Any]:
    return {"id": c.id, "metrics": c.metrics or {}, "regime_metrics": c.regime_metrics or {},
            "objectives": c.objectives or {}, "params": c.params}


def run_finish(settings: Settings, search_id: str) -> list[EvolutionDispatch]:
    """Front, regime choices, Deflated Sharpe and hold-out check; the search succeeds."""
    url = settings.database_url
    finish_started = utcnow()
    with transaction(url) as session:
        row = _search_row(session, search_id)
        names = list(row.objectives)
        cands = session.scalars(select(StrategyCandidate).where(
            StrategyCandidate.search_id == search_id,
            StrategyCandidate.status == CandidateStatus.EVALUATED)).all()
        views = [_candidate_view(c) for c in cands]
        feasible = [bool(c.feasible) for c in cands]
        space = _space_of(row)
        config = dict(row.config or {})
        data_uri, data_sha, target_regime = row.data_uri, row.data_sha256, row.regime
        kind = row.kind
        n_trials = row.trials_evaluated + row.trials_failed
    dirs = [OBJECTIVES[n].direction for n in names]
    values = [[v["objectives"][n] for n in names] for v in views]
    front_idx = pareto_front(values, dirs, feasible)
    front = [views[i] for i in front_idx]
    prefs = config.get("preferences") or {}
    result: dict[str, Any] = {
        "front": [v["id"] for v in front],
        "hypervolume": hypervolume([values[i] for i in front_idx], dirs, reference_point(names)),
        "trials": n_trials,
    }
    chosen_id: int | None = None
    holdout: dict[str, Any] | None = None
    dsr: dict[str, Any] | None = None
    regime_choice: dict[str, int] = {}
    if front:
        pick, detail = choose(front, regime=target_regime, preferences=prefs)
        assert pick is not None
        chosen = front[pick]
        chosen_id = int(chosen["id"])
        result["choice"] = {**detail, "scores": {str(front[k]["id"]): s
                                                 for k, s in detail["scores"].items()}}
        regimes = sorted({r for v in front for r in (v["regime_metrics"] or {})
                          if r != "unknown"})
        for regime in regimes:
            idx, _ = choose(front, regime=regime, preferences=prefs)
            if idx is not None:
                regime_choice[regime] = int(front[idx]["id"])
        result["regime_choice"] = regime_choice
        m = chosen["metrics"]
        trial_sharpes = [v["metrics"].get("sharpe_per_bar") for v in views]
        dsr = deflated_sharpe_ratio(
            float(m.get("sharpe_per_bar") or 0.0), int(m.get("returns_n") or 0),
            [s for s in trial_sharpes if s is not None],
            skew=float(m.get("returns_skew") or 0.0),
            kurtosis=float(m.get("returns_kurtosis") or 3.0), n_trials=max(n_trials, 1))
        dsr = _finite(dsr)
        result["deflated_sharpe"] = dsr
        eval_cfg = EvalSettings.from_dict(config.get("evaluation"))
        try:
            frame = _load_frame(settings, str(data_uri), data_sha)
            hm = evaluate_holdout(frame, space, chosen["params"], eval_cfg,
                                  holdout_start=int(config["holdout_start"]))
            verdict = holdout_verdict(float(m.get("sharpe") or 0.0), float(hm["sharpe"]),
                                      eval_cfg.collapse_ratio)
            holdout = _finite({"metrics": hm, **verdict.to_dict()})
        except ValueError as exc:
            holdout = {"error": str(exc), "collapsed": True,
                       "reason": "hold-out could not be evaluated"}
        result["holdout"] = holdout
    else:
        result["choice"] = {"reason": "no feasible candidate: nothing satisfies the "
                                      "constraints"}

    training: dict[str, Any] | None = None
    with transaction(url, immediate=True) as session:
        row = _search_row(session, search_id, lock=True)
        if row.status in (SearchStatus.SUCCEEDED, SearchStatus.FAILED):
            return []
        front_set = set(result["front"])
        for c in session.scalars(select(StrategyCandidate).where(
                StrategyCandidate.search_id == search_id)).all():
            c.pareto = c.id in front_set
            chosen_for = sorted(r for r, cid in regime_choice.items() if cid == c.id)
            if chosen_for:
                c.regime = chosen_for[0]
            if c.id == chosen_id:
                c.regime = target_regime or c.regime
                c.deflated_sharpe = None if dsr is None else dsr.get("dsr")
                c.holdout = holdout
                c.overfit = bool(holdout.get("collapsed")) if holdout else None
        row.status = SearchStatus.SUCCEEDED
        row.chosen_candidate_id = chosen_id
        row.advancing_until = None
        row.finished_at = utcnow()
        row.result = _finite(result)
        session.flush()
        job_service.finish_evolve_job(
            session, row.job_id, status="succeeded", started_at=finish_started,
            detail={"chosen_candidate_id": chosen_id, "front": len(result["front"]),
                    "trials": n_trials})
        if kind == "variants" and chosen_id is not None and EvolutionConfig.from_settings(
                settings).auto_train_variants:
            training = _auto_train(session, settings, chosen_id,
                                   str(config.get("trigger_reason") or "performance_degraded"))
            row.result = {**(row.result or {}), "training": training}
    if training and training.get("job_id") and training.get("created"):
        from app.services.jobs import enqueue_job

        enqueue_job(training["job_id"], settings)
    log.info("search %s succeeded: front %d, chosen %s", search_id, len(result["front"]),
             chosen_id)
    return []


def _auto_train(session: Session, settings: Settings, candidate_id: int,
                trigger_reason: str) -> dict[str, Any]:
    """A variant search's chosen strategy goes straight to a training job (gate and all);
    when the model already has an active job, say so instead of failing the search."""
    from app.services.jobs import ActiveJobExists

    try:
        with session.begin_nested():
            job = train_candidate(session, settings, candidate_id, requested_by="clm-evolution",
                                  trigger_reason=trigger_reason)
        return {"job_id": job["job_id"], "created": True}
    except ActiveJobExists as exc:
        return {"job_id": exc.job_id, "created": False,
                "reason": "the model already has an active training job"}
    except InvalidInput as exc:
        return {"job_id": None, "created": False, "reason": str(exc)}


# -- training a candidate ---------------------------------------------------------------
def train_candidate(
    session: Session,
    settings: Settings,
    candidate_id: int,
    *,
    requested_by: str | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
) -> dict[str, Any]:
    """A normal training job (app.services.jobs) with the candidate's model params and strategy.

    The job goes through the usual pipeline and promotion gate. Raises NotFound,
    Conflict (candidate not evaluated) or app.services.jobs.ActiveJobExists (409). Publish with
    `app.services.jobs.enqueue_job(job_id)` after commit.
    """
    from app.services.jobs import create_training_job

    cand = session.get(StrategyCandidate, int(candidate_id))
    if cand is None:
        raise NotFound(f"no strategy candidate {candidate_id}", candidate_id=candidate_id)
    if cand.status != CandidateStatus.EVALUATED:
        raise Conflict(f"candidate {candidate_id} is {cand.status.value}; only an evaluated "
                       "candidate can be trained", candidate_id=candidate_id)
    row = _search_row(session, cand.search_id)
    strategy = decode(_space_of(row), cand.params)
    job = create_training_job(
        session, settings, model_type=row.model_type, symbol=row.symbol,
        timeframe=row.timeframe, dataset_span_days=row.dataset_span_days,
        params=strategy.model_params, trigger_reason=trigger_reason,
        requested_by=requested_by, regime=cand.regime,
        strategy=_job_strategy(strategy, EvalSettings.from_dict(
            (row.config or {}).get("evaluation")).seed),
    )
    cand.training_job_id = job["job_id"]
    session.flush()
    return job


def _job_strategy(strategy: Any, seed: int) -> dict[str, Any]:
    """Everything the search evaluated, for the training pipeline: windows, label
    horizon, thresholds, trading rules (exit, minimum hold, stop loss / take profit) and
    the seed its trials trained with."""
    return {**strategy.to_strategy_dict(), "seed": int(seed)}


# -- variants (the seed's response to degraded performance) -----------------------------
def _base_params(space: StrategySpace, version: Mapping[str, Any]) -> dict[str, Any]:
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
    search dict; publish `dispatch.advance(search_id)` after commit.
    """
    from app.services.registry import get_production

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
    base = _base_params(space, version)
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
    return start_search(
        session, settings, model_type=version["model_type"], symbol=version["symbol"],
        timeframe=version["timeframe"], dataset_span_days=span, population=len(proposals),
        generations=1, requested_by=requested_by, trigger_reason=trigger_reason, frame=frame,
        evaluation=evaluation, kind="variants", fixed=proposals,
        source_model_version=version["version"], regime=version.get("regime"),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def propose_variants_on_degraded(
    session: Session, settings: Settings, model_id: str, *, now: datetime | None = None
) -> str | None:
    """The performance trigger's hook: start a variant search for a degraded model.

    Runs in the trigger's transaction (inserts only; Optuna is touched later by the
    coordinator) and publishes the coordinator after that transaction commits. At most
    one active variant search per model; a model without a space, production version or
    enough data is skipped (logged), never failing the trigger. Returns the search id.
    """
    if not getattr(settings, "evolution_propose_on_degraded", True):
        return None
    active = session.scalars(select(StrategySearch.id).where(
        StrategySearch.model_id == model_id, StrategySearch.kind == "variants",
        StrategySearch.status.in_((SearchStatus.QUEUED, SearchStatus.RUNNING)))).first()
    if active is not None:
        return active
    try:
        with session.begin_nested():
            started = propose_variants(session, settings, model_id)
    except (InvalidInput, NotFound) as exc:
        log.info("no strategy variants for degraded %s: %s", model_id, exc)
        return None
    search_id = str(started["search_id"])

    def _publish_after_commit(_session: Session) -> None:
        dispatch.publish([dispatch.advance(search_id)], settings)

    from sqlalchemy import event as sa_event

    sa_event.listen(session, "after_commit", _publish_after_commit, once=True)
    log.info("degraded %s: variant search %s proposed", model_id, search_id)
    return search_id


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


# -- reaper -----------------------------------------------------------------------------
@dataclass
class ReapReport:
    expired_trials: list[int] = field(default_factory=list)
    republished_trials: list[int] = field(default_factory=list)
    advanced_searches: list[str] = field(default_factory=list)

    @property
    def dispatches(self) -> list[EvolutionDispatch]:
        return ([dispatch.evaluate(c) for c in self.expired_trials + self.republished_trials]
                + [dispatch.advance(s) for s in self.advanced_searches])


def reap(settings: Settings, now: datetime | None = None,
         search_id: str | None = None) -> ReapReport:
    """Recover what crashes and lost messages left (publish the report's dispatches):

    - a running trial whose lease expired (its worker died) goes back to pending and is
      re-published (its next claim counts an attempt; past max attempts it fails);
    - a pending trial not claimed within requeue_after_s (message lost) is re-published;
    - a search whose generation completed (or that never started) but did not advance
      within requeue_after_s gets its coordinator re-published.
    """
    cfg = EvolutionConfig.from_settings(settings)
    now = now or utcnow()
    stale = now - timedelta(seconds=cfg.requeue_after_s)
    report = ReapReport()
    with transaction(settings.database_url, immediate=True) as session:
        active = select(StrategySearch.id).where(
            StrategySearch.status.in_((SearchStatus.QUEUED, SearchStatus.RUNNING)))
        if search_id is not None:
            active = active.where(StrategySearch.id == search_id)
        expired = session.scalars(
            select(StrategyCandidate).where(
                StrategyCandidate.search_id.in_(active),
                StrategyCandidate.status == CandidateStatus.RUNNING,
                StrategyCandidate.lease_until < now)).all()
        for c in expired:
            c.status = CandidateStatus.PENDING
            c.claim_token = None
            c.lease_until = None
            c.enqueued_at = now
            report.expired_trials.append(c.id)
        pending = session.scalars(
            select(StrategyCandidate).where(
                StrategyCandidate.search_id.in_(active),
                StrategyCandidate.status == CandidateStatus.PENDING,
                or_(StrategyCandidate.enqueued_at.is_(None),
                    StrategyCandidate.enqueued_at < stale))).all()
        for c in pending:
            if c.id not in report.expired_trials:
                c.enqueued_at = now
                report.republished_trials.append(c.id)
        searches = session.scalars(
            select(StrategySearch).where(StrategySearch.id.in_(active))).all()
        for s in searches:
            if s.advancing_until is not None and ensure_utc(s.advancing_until) > now:
                continue
            if s.current_generation < 0:
                if search_id is not None or ensure_utc(s.created_at) < stale:
                    report.advanced_searches.append(s.id)
                continue
            gen = session.get(SearchGeneration, (s.id, s.current_generation))
            if gen is not None and gen.completed_at is not None and (
                    search_id is not None or ensure_utc(gen.completed_at) < stale):
                report.advanced_searches.append(s.id)
            elif gen is not None and gen.completed_at is None:
                done = session.scalar(select(func.count()).select_from(StrategyCandidate).where(
                    StrategyCandidate.search_id == s.id,
                    StrategyCandidate.generation == s.current_generation,
                    StrategyCandidate.status.in_((CandidateStatus.EVALUATED,
                                                  CandidateStatus.FAILED))))
                if done is not None and done >= gen.size:
                    # Every trial is recorded but the completing bump never committed
                    # its completed_at (cannot happen in one transaction; be safe).
                    gen.completed_at = now
                    report.advanced_searches.append(s.id)
    if report.expired_trials or report.republished_trials or report.advanced_searches:
        log.info("evolution reaper: %d expired, %d republished, %d searches advanced",
                 len(report.expired_trials), len(report.republished_trials),
                 len(report.advanced_searches))
    return report


def resume_search(settings: Settings, search_id: str) -> list[EvolutionDispatch]:
    """Everything a search is waiting for, right now (after an outage or a restart)."""
    with transaction(settings.database_url) as session:
        _search_row(session, search_id)
    report = reap(settings, search_id=search_id)
    with transaction(settings.database_url) as session:
        pending = session.scalars(select(StrategyCandidate.id).where(
            StrategyCandidate.search_id == search_id,
            StrategyCandidate.status == CandidateStatus.PENDING)).all()
    ids = sorted(set(pending) | set(report.expired_trials) | set(report.republished_trials))
    out = [dispatch.evaluate(i) for i in ids]
    out += [dispatch.advance(s) for s in report.advanced_searches]
    return out


# -- in-process driver ------------------------------------------------------------------
def drive_inline(settings: Settings, search_id: str, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run a search to the end in this process with the same units of work the Celery
    tasks run (tests, benchmarks, the CLI). Returns the finished search."""
    deadline = time.monotonic() + timeout_s
    queue: list[EvolutionDispatch] = [dispatch.advance(search_id)]
    while time.monotonic() < deadline:
        if not queue:
            queue = resume_search(settings, search_id)
            if not queue:
                break
        d = queue.pop(0)
        if d.task == dispatch.ADVANCE_TASK:
            queue.extend(run_advance(settings, d.args[0]))
        else:
            queue.extend(run_trial(settings, d.args[0]))
    with transaction(settings.database_url) as session:
        result = get_search(session, search_id)
    if result["status"] not in (SearchStatus.SUCCEEDED.value, SearchStatus.FAILED.value):
        raise TimeoutError(f"search {search_id} still {result['status']} after {timeout_s}s")
    return result


# -- reads ------------------------------------------------------------------------------
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
    out = search_dict(_search_row(session, search_id))
    out["generation_stats"] = [
        {"generation": g.generation, "size": g.size, "evaluated": g.evaluated,
         "failed": g.failed, "hypervolume": _finite(g.hypervolume),
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
