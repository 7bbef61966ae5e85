"""The strategy search's state machine in the database: every write to
strategy_searches, strategy_search_generations and strategy_candidates after creation.

Each function takes the caller's session and only flushes; app/flows/evolution.py opens
the transactions (Optuna's own storage calls happen between them) and publishes what
they make necessary.

State machine
  search:    queued ──advance──► running ──last generation complete──► succeeded
                                     └── unrecoverable error ──► failed
  candidate: pending ──claim (conditional UPDATE + lease)──► running
             running ──evaluated + told──► evaluated | failed (error / attempts spent)
             running ──lease expired (reaper)──► pending (re-published)
  generation: size = trials asked; evaluated + failed counters bumped in the same
             transaction as the candidate's result; the bump that reaches `size` sets
             completed_at (conditional), so exactly one record advances the search.
Idempotency: candidate rows are unique per (search, trial number); a coordinator lease
(`advancing_until`, `begin_advance`) keeps two coordinators from asking the same
generation; claims and records are conditional on the claim token.

Owns: `begin_advance` / `release_advance` / `record_generation` (the coordinator),
`claim_candidate` / `renew_lease` / `record_trial` / `update_front` (one trial),
`finish_inputs` / `record_finish` (the search's end), `reap_stale` (what crashes and
lost messages left), `pending_trials`, `active_variant_search`, `candidate_training` /
`mark_trained` (a candidate turned into a training job).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.analysis.objectives import OBJECTIVES, is_feasible
from app.analysis.selection import hypervolume, pareto_front, reference_point
from app.bus.evolution_tasks import NextSteps
from app.bus.outbox import emit
from app.core.errors import Conflict, NotFound
from app.core.timeutil import ensure_utc, utcnow
from app.ml.evolution.evaluate import EvalSettings
from app.ml.evolution.space import StrategySpace, decode
from app.models.evolution import (
    CandidateStatus,
    SearchGeneration,
    SearchStatus,
    StrategyCandidate,
    StrategySearch,
)
from app.services import jobs as job_service
from app.services.evolution.optuna_ask import AskedTrial
from app.services.evolution.optuna_tell import tell_in_session
from app.services.evolution.views import json_safe, search_row

__all__ = [
    "AdvancePlan",
    "CandidateTraining",
    "FinishInputs",
    "LeaseLost",
    "ReapReport",
    "active_variant_search",
    "begin_advance",
    "candidate_training",
    "claim_candidate",
    "finish_inputs",
    "mark_trained",
    "pending_trials",
    "reap_stale",
    "record_finish",
    "record_generation",
    "record_trial",
    "release_advance",
    "renew_lease",
    "update_front",
]

_FINISHED = (SearchStatus.SUCCEEDED, SearchStatus.FAILED)
_ACTIVE = (SearchStatus.QUEUED, SearchStatus.RUNNING)


def space_of(row: StrategySearch) -> StrategySpace:
    return StrategySpace.from_dict(row.space)


# -- the coordinator --------------------------------------------------------------------
@dataclass(frozen=True)
class AdvancePlan:
    """What a coordinator holding the lease asks Optuna for."""

    search_id: str
    generation: int  # the search's current generation (-1: none asked yet)
    finished: bool  # the last generation is complete: finish instead of asking
    study_name: str
    population: int
    seed: int
    directions: list[str]
    space: StrategySpace
    fixed: list[dict[str, Any]]  # preset trials of generation 0 (variant searches)

    @property
    def next_generation(self) -> int:
        return self.generation + 1


def begin_advance(session: Session, search_id: str, *, lease_s: float,
                  now: datetime) -> AdvancePlan | None:
    """Take the coordinator lease of a search whose current generation is complete (or
    that has none yet); None when there is nothing to do: finished, trials still running
    (their last one advances), or another coordinator holds the lease."""
    row = search_row(session, search_id, lock=True)
    if row.status in _FINISHED:
        return None
    gen = row.current_generation
    if gen >= 0:
        generation = session.get(SearchGeneration, (search_id, gen))
        if generation is None or generation.completed_at is None:
            return None
    if row.advancing_until is not None and ensure_utc(row.advancing_until) > now:
        return None
    row.advancing_until = now + timedelta(seconds=lease_s)
    row.status = SearchStatus.RUNNING
    row.updated_at = now
    job_service.evolve_job_running(session, row.job_id, now=now)
    next_gen = gen + 1
    return AdvancePlan(
        search_id=search_id, generation=gen, finished=next_gen >= row.generations,
        study_name=row.study_name, population=row.population, seed=row.seed,
        directions=[OBJECTIVES[n].direction for n in row.objectives], space=space_of(row),
        fixed=list((row.config or {}).get("fixed") or []) if next_gen == 0 else [])


def release_advance(session: Session, search_id: str) -> None:
    """Give the coordinator lease back (asking Optuna failed)."""
    session.execute(update(StrategySearch).where(StrategySearch.id == search_id)
                    .values(advancing_until=None))


def record_generation(session: Session, plan: AdvancePlan, asked: Sequence[AskedTrial], *,
                      now: datetime) -> list[int] | None:
    """Insert the asked trials as pending candidates and the generation's counters;
    returns the candidate ids to evaluate, or None when another coordinator recorded
    this generation meanwhile."""
    search_id, next_gen = plan.search_id, plan.next_generation
    row = search_row(session, search_id, lock=True)
    if row.current_generation != plan.generation:
        return None
    existing = {c.trial_number: c for c in session.scalars(
        select(StrategyCandidate).where(StrategyCandidate.search_id == search_id)).all()}
    origins = dict(enumerate(plan.fixed))
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
            optuna_trial_id=trial.trial_id, params=json_safe(plan.space.snap_all(trial.params)),
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
        emit(session, "candidate.created", {
            "candidate_id": cand.id, "search_id": search_id, "model_id": row.model_id,
            "generation": next_gen, "params": cand.params, "parents": cand.parents,
            "origin": cand.origin,
        })
    ids = [c.id for c in created]
    # Adopted trials already had rows only if recorded; re-publish any still pending.
    ids += [c.id for c in existing.values()
            if c.generation == next_gen and c.status == CandidateStatus.PENDING]
    return ids


# -- one trial --------------------------------------------------------------------------
class LeaseLost(RuntimeError):
    """Another worker took this trial over (our lease expired)."""


def claim_candidate(session: Session, candidate_id: int, token: str, *, lease_s: float,
                    now: datetime) -> dict[str, Any] | None:
    """Claim a pending trial (or one whose lease expired) for `token`, counting an
    attempt; returns what evaluating it needs, or None (someone else holds it, or the
    search is over)."""
    result = session.execute(
        update(StrategyCandidate)
        .where(StrategyCandidate.id == candidate_id,
               or_(StrategyCandidate.status == CandidateStatus.PENDING,
                   and_(StrategyCandidate.status == CandidateStatus.RUNNING,
                        StrategyCandidate.lease_until < now)))
        .values(status=CandidateStatus.RUNNING, claim_token=token,
                lease_until=now + timedelta(seconds=lease_s),
                attempts=StrategyCandidate.attempts + 1, started_at=now,
                evaluated_by=f"{socket.gethostname()}:{os.getpid()}"[:200])
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    cand = session.get(StrategyCandidate, candidate_id)
    assert cand is not None
    row = search_row(session, cand.search_id)
    if row.status in _FINISHED:
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


def renew_lease(session: Session, candidate_id: int, token: str, *, lease_s: float) -> None:
    """Extend the claim of `token`; LeaseLost when another worker took the trial over."""
    result = session.execute(
        update(StrategyCandidate)
        .where(StrategyCandidate.id == candidate_id, StrategyCandidate.claim_token == token,
               StrategyCandidate.status == CandidateStatus.RUNNING)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"candidate {candidate_id}: lease lost")


def record_trial(session: Session, job: Mapping[str, Any], token: str, *,
                 metrics: dict[str, Any] | None, regime_metrics: dict[str, Any] | None,
                 values: list[float], constraints: dict[str, float], error: str | None,
                 elapsed: float, now: datetime,
                 tell_attrs: Mapping[str, Any] | None = None) -> float | None:
    """Store a claimed trial's result and bump the counters; with `tell_attrs`, tell
    Optuna in the same transaction (after the claim check, so a worker that lost the
    trial tells nothing).

    Returns the front's hypervolume when this record completed its generation (the
    caller advances the search, exactly once), else None (lost claim, or trials of the
    generation still outstanding).
    """
    names: list[str] = job["objectives"]
    ok = metrics is not None
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
        return None  # lost the lease; the new owner records (Optuna was told once)
    if tell_attrs is not None:
        # False: an earlier attempt told it already (idempotent either way).
        tell_in_session(session, job["optuna_trial_id"], values, constraints,
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
    if counts.evaluated + counts.failed < counts.size:
        return None
    won = session.execute(
        update(SearchGeneration)
        .where(SearchGeneration.search_id == job["search_id"],
               SearchGeneration.generation == job["generation"],
               SearchGeneration.completed_at.is_(None))
        .values(completed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if not won:
        return None
    hv = update_front(session, job["search_id"])
    session.execute(
        update(SearchGeneration)
        .where(SearchGeneration.search_id == job["search_id"],
               SearchGeneration.generation == job["generation"])
        .values(hypervolume=hv).execution_options(synchronize_session=False)
    )
    job_service.evolve_generation_completed(
        session, job.get("search_job_id"), job["generation"], now=now,
        detail=json_safe({"evaluated": counts.evaluated, "failed": counts.failed,
                          "hypervolume": hv}))
    return hv


def update_front(session: Session, search_id: str) -> float:
    """Mark the Pareto front among evaluated feasible candidates; return its hypervolume."""
    row = search_row(session, search_id)
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
@dataclass(frozen=True)
class FinishInputs:
    """What choosing a search's strategy reads (one snapshot, then no transaction)."""

    search_id: str
    kind: str
    objectives: list[str]
    views: list[dict[str, Any]]  # evaluated candidates: id, metrics, objectives, params
    feasible: list[bool]
    space: StrategySpace
    config: dict[str, Any]
    data_uri: str
    data_sha256: str | None
    target_regime: str | None
    n_trials: int


def finish_inputs(session: Session, search_id: str) -> FinishInputs:
    row = search_row(session, search_id)
    cands = session.scalars(select(StrategyCandidate).where(
        StrategyCandidate.search_id == search_id,
        StrategyCandidate.status == CandidateStatus.EVALUATED)).all()
    views = [{"id": c.id, "metrics": c.metrics or {}, "regime_metrics": c.regime_metrics or {},
              "objectives": c.objectives or {}, "params": c.params} for c in cands]
    return FinishInputs(
        search_id=search_id, kind=row.kind, objectives=list(row.objectives), views=views,
        feasible=[bool(c.feasible) for c in cands], space=space_of(row),
        config=dict(row.config or {}), data_uri=str(row.data_uri),
        data_sha256=row.data_sha256, target_regime=row.regime,
        n_trials=row.trials_evaluated + row.trials_failed)


def record_finish(session: Session, search_id: str, *, result: dict[str, Any],
                  chosen_id: int | None, regime_choice: Mapping[str, int],
                  dsr: Mapping[str, Any] | None, holdout: dict[str, Any] | None,
                  target_regime: str | None, n_trials: int,
                  started_at: datetime) -> StrategySearch | None:
    """The search succeeds with its front, choices and the chosen candidate's overfitting
    checks; its job finishes. None when the search had finished already."""
    row = search_row(session, search_id, lock=True)
    if row.status in _FINISHED:
        return None
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
    row.result = json_safe(result)
    session.flush()
    job_service.finish_evolve_job(
        session, row.job_id, status="succeeded", started_at=started_at,
        detail={"chosen_candidate_id": chosen_id, "front": len(result["front"]),
                "trials": n_trials})
    return row


# -- reaper -----------------------------------------------------------------------------
@dataclass
class ReapReport:
    expired_trials: list[int] = field(default_factory=list)
    republished_trials: list[int] = field(default_factory=list)
    advanced_searches: list[str] = field(default_factory=list)

    @property
    def next_steps(self) -> NextSteps:
        """What to publish again: every expired or lost trial, every stalled search."""
        return NextSteps.of(trials=self.expired_trials + self.republished_trials,
                            searches=self.advanced_searches)


def reap_stale(session: Session, *, now: datetime, requeue_after_s: float,
               search_id: str | None = None) -> ReapReport:
    """Find (and mark) what crashes and lost messages left, among active searches (or
    the one `search_id`, without waiting for `requeue_after_s`):

    - a running trial whose lease expired (its worker died) goes back to pending (its
      next claim counts an attempt; past max attempts it fails);
    - a pending trial not claimed within requeue_after_s (message lost) is re-published;
    - a search whose generation completed (or that never started) but did not advance
      within requeue_after_s gets its coordinator re-published.
    """
    stale = now - timedelta(seconds=requeue_after_s)
    report = ReapReport()
    active = select(StrategySearch.id).where(StrategySearch.status.in_(_ACTIVE))
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
    return report


def pending_trials(session: Session, search_id: str) -> list[int]:
    """Ids of the search's candidates waiting for a worker."""
    return list(session.scalars(select(StrategyCandidate.id).where(
        StrategyCandidate.search_id == search_id,
        StrategyCandidate.status == CandidateStatus.PENDING)).all())


def active_variant_search(session: Session, model_id: str) -> str | None:
    """The model's queued or running variant search, if any (at most one is started)."""
    return session.scalars(select(StrategySearch.id).where(
        StrategySearch.model_id == model_id, StrategySearch.kind == "variants",
        StrategySearch.status.in_(_ACTIVE))).first()


# -- a candidate as a training job ------------------------------------------------------
@dataclass(frozen=True)
class CandidateTraining:
    """The training request that reproduces an evaluated candidate's strategy."""

    candidate_id: int
    search_id: str
    model_type: str
    symbol: str
    timeframe: str
    dataset_span_days: int
    params: dict[str, Any]  # the model's parameters
    strategy: dict[str, Any]  # windows, label horizon, thresholds, rules, seed
    regime: str | None


def candidate_training(session: Session, candidate_id: int) -> CandidateTraining:
    """What training candidate `candidate_id` asks for: its model parameters and
    everything the search evaluated — windows, label horizon, thresholds, trading rules
    (exit, minimum hold, stop loss / take profit) and the seed its trials trained with.
    Raises NotFound, or Conflict when the candidate is not evaluated."""
    cand = session.get(StrategyCandidate, int(candidate_id))
    if cand is None:
        raise NotFound(f"no strategy candidate {candidate_id}", candidate_id=candidate_id)
    if cand.status != CandidateStatus.EVALUATED:
        raise Conflict(f"candidate {candidate_id} is {cand.status.value}; only an evaluated "
                       "candidate can be trained", candidate_id=candidate_id)
    row = search_row(session, cand.search_id)
    strategy = decode(space_of(row), cand.params)
    seed = EvalSettings.from_dict((row.config or {}).get("evaluation")).seed
    return CandidateTraining(
        candidate_id=cand.id, search_id=row.id, model_type=row.model_type,
        symbol=row.symbol, timeframe=row.timeframe,
        dataset_span_days=row.dataset_span_days, params=dict(strategy.model_params),
        strategy={**strategy.to_strategy_dict(), "seed": int(seed)}, regime=cand.regime)


def mark_trained(session: Session, candidate_id: int, job_id: str) -> None:
    """Remember the training job started from the candidate."""
    cand = session.get(StrategyCandidate, int(candidate_id))
    assert cand is not None
    cand.training_job_id = job_id
    session.flush()
