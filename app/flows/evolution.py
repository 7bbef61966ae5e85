"""Strategy search use cases: the units of work around Optuna's NSGA-II.

Owns every transaction of a search and what is published after each commit:
- `start_search` (POST /clm/evolve; the caller's session): create the search and
  publish its coordinator after the commit.
- `run_advance(settings, search_id)` — the coordinator: asks Optuna for one generation
  and publishes one evaluation per trial, or finishes the search after the last one.
- `run_trial(settings, candidate_id)` — one trial: claim, evaluate walk-forward, tell
  Optuna, record; the record that completes a generation publishes the next advance.
- `run_finish` — front, hypervolume, regime choices, Deflated Sharpe, hold-out check; a
  variant search's chosen candidate goes on to training (`_auto_train`).
- `reap(settings)` / `resume_search` — re-publish what a crash or a lost message left.
- `train_candidate` — a candidate becomes a normal training job through
  `app.flows.training.request_training` (a trigger decision, the usual gate).
- `propose_variants_on_degraded` — a degraded model's variant search (the performance
  check's flow calls it in its transaction).
- `drive_inline` runs a search to the end in this process with the same functions.

Publishing: each unit of work registers its messages with
`app.bus.producer.send_after_commit` in the transaction that made them necessary, and
returns them as `NextSteps` (ids; the Celery tasks return its size). `publish=False`
registers nothing: `drive_inline` runs the steps itself instead of a worker.

The run_* functions are units of work: Optuna's RDBStorage uses its own connections, so
Optuna calls happen *between* CLM transactions, never inside one (on SQLite a CLM write
transaction would hold the lock Optuna needs). The one exception is a trial's tell: it
writes Optuna's rows through CLM's own session, in the transaction that records the
result (`search.tell_in_session`), so told and recorded commit together. The state
machine and its idempotency rules are in app/services/evolution/state.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.bus import evolution_tasks
from app.bus.evolution_tasks import NextSteps
from app.bus.producer import send_after_commit
from app.core.config import Settings
from app.core.domain import TriggerReason
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows.training import TrainingOutcome, request_training
from app.models.evolution import SearchStatus
from app.services.evolution import scoring, search, state
from app.services.evolution.config import EvolutionConfig
from app.services.evolution.create import create_search
from app.services.evolution.state import LeaseLost, ReapReport
from app.services.evolution.variants import propose_variants
from app.services.evolution.views import get_search, search_row

log = logging.getLogger(__name__)

__all__ = [
    "NextSteps",
    "drive_inline",
    "propose_variants_on_degraded",
    "reap",
    "resume_search",
    "run_advance",
    "run_finish",
    "run_trial",
    "start_search",
    "train_candidate",
]


def _publish(session: Session, settings: Settings, steps: NextSteps, publish: bool) -> None:
    if publish:
        send_after_commit(session, steps.messages(), settings)


def start_search(session: Session, settings: Settings, **request: Any) -> dict[str, Any]:
    """Create a queued search (`app.services.evolution.create.create_search`, same
    arguments) and publish its coordinator once the caller's transaction commits."""
    started = create_search(session, settings, **request)
    send_after_commit(session, [evolution_tasks.advance(started["search_id"])], settings)
    return started


# -- the coordinator --------------------------------------------------------------------
def run_advance(settings: Settings, search_id: str, *, publish: bool = True) -> NextSteps:
    """Ask Optuna for the next generation, or finish the search after the last one.

    Safe to run twice: the coordinator lease and the generation check make a duplicate a
    no-op. A crashed coordinator's asked-but-unrecorded trials (they carry CLM's
    generation tag) are adopted by the next one.
    """
    cfg = EvolutionConfig.from_settings(settings)
    url = settings.database_url
    now = utcnow()
    with transaction(url, immediate=True) as session:
        plan = state.begin_advance(session, search_id, lease_s=cfg.trial_lease_s, now=now)
    if plan is None:
        return NextSteps()
    if plan.finished:
        return run_finish(settings, search_id, publish=publish)

    next_gen = plan.next_generation
    try:
        search.create_study(url, plan.study_name, plan.directions)
        study = search.load_study(url, plan.study_name, plan.population,
                                  (plan.seed * 1000 + next_gen) % 2**32)
        adopted = search.orphaned_trials(study, next_gen)
        need = max(plan.population - len(adopted), 0)
        fixed_params = [f["params"] for f in plan.fixed][len(adopted):]
        asked = adopted + search.ask_generation(study, plan.space.distributions(), need,
                                                next_gen, fixed=fixed_params[:need])
    except Exception:
        with transaction(url) as session:
            state.release_advance(session, search_id)
        raise

    with transaction(url, immediate=True) as session:
        ids = state.record_generation(session, plan, asked, now=now)
        if ids is None:
            return NextSteps()  # someone else recorded this generation meanwhile
        steps = NextSteps.of(trials=ids)
        _publish(session, settings, steps, publish)
    log.info("search %s: generation %d asked (%d trials)", search_id, next_gen, len(ids))
    return steps


# -- one trial --------------------------------------------------------------------------
def _claim(settings: Settings, candidate_id: int, token: str,
           cfg: EvolutionConfig) -> dict[str, Any] | None:
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        return state.claim_candidate(session, candidate_id, token,
                                     lease_s=cfg.trial_lease_s, now=now)


def _heartbeat(settings: Settings, candidate_id: int, token: str, cfg: EvolutionConfig) -> None:
    with transaction(settings.database_url) as session:
        state.renew_lease(session, candidate_id, token, lease_s=cfg.trial_lease_s)


def run_trial(settings: Settings, candidate_id: int, *, publish: bool = True) -> NextSteps:
    """Claim, evaluate walk-forward OOS, tell Optuna, record (see the module docstring)."""
    cfg = EvolutionConfig.from_settings(settings)
    token = str(uuid.uuid4())
    job = _claim(settings, int(candidate_id), token, cfg)
    if job is None:
        return NextSteps()
    t0 = time.perf_counter()
    try:
        score = scoring.score_trial(
            settings, job, max_attempts=cfg.max_attempts,
            heartbeat=lambda: _heartbeat(settings, int(candidate_id), token, cfg),
            # A third of the lease: renewed well before it runs out, without a commit
            # after every fold of a short trial.
            heartbeat_every_s=cfg.trial_lease_s / 3)
    except LeaseLost:
        log.warning("candidate %s: lease lost during evaluation; dropping", candidate_id)
        return NextSteps()
    user_attrs = {"clm_candidate_id": int(candidate_id)}
    # Told in the record's own transaction where Optuna's storage allows it: the trial
    # is then told and recorded together or not at all (one commit fewer per trial).
    joint = search.can_tell_in_session(settings.database_url)
    if not joint:
        search.tell_trial(settings.database_url, job["study_name"], job["optuna_trial_id"],
                          score.values, score.constraints, population=job["population"],
                          seed=job["seed"], user_attrs=user_attrs)
    elapsed = time.perf_counter() - t0
    return _record_trial(settings, job, token, score.metrics, score.regime_metrics,
                         score.values, score.constraints, score.error, elapsed,
                         tell_attrs=user_attrs if joint else None, publish=publish)


def _record_trial(settings: Settings, job: Mapping[str, Any], token: str,
                  metrics: dict[str, Any] | None, regime_metrics: dict[str, Any] | None,
                  values: list[float], constraints: dict[str, float], error: str | None,
                  elapsed: float, *, tell_attrs: Mapping[str, Any] | None = None,
                  publish: bool = True) -> NextSteps:
    """Record the result (`state.record_trial`); the record completing its generation
    publishes the search's next advance."""
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        hv = state.record_trial(
            session, job, token, metrics=metrics, regime_metrics=regime_metrics,
            values=values, constraints=constraints, error=error, elapsed=elapsed,
            now=now, tell_attrs=tell_attrs)
        if hv is None:
            return NextSteps()
        steps = NextSteps.of(searches=[job["search_id"]])
        _publish(session, settings, steps, publish)
    log.info("search %s: generation %d complete (hypervolume %.4f)", job["search_id"],
             job["generation"], hv)
    return steps


# -- finishing --------------------------------------------------------------------------
def run_finish(settings: Settings, search_id: str, *, publish: bool = True) -> NextSteps:
    """Front, regime choices, Deflated Sharpe and hold-out check; the search succeeds.
    A variant search's chosen candidate is trained (its job publishes itself after the
    commit). Publishes nothing of the search's own: it is over."""
    url = settings.database_url
    finish_started = utcnow()
    with transaction(url) as session:
        inputs = state.finish_inputs(session, search_id)
    choice = scoring.choose_strategy(settings, inputs)
    with transaction(url, immediate=True) as session:
        row = state.record_finish(
            session, search_id, result=choice.result, chosen_id=choice.chosen_id,
            regime_choice=choice.regime_choice, dsr=choice.dsr, holdout=choice.holdout,
            target_regime=inputs.target_regime, n_trials=inputs.n_trials,
            started_at=finish_started)
        if row is None:
            return NextSteps()
        if inputs.kind == "variants" and choice.chosen_id is not None and \
                EvolutionConfig.from_settings(settings).auto_train_variants:
            training = _auto_train(
                session, settings, choice.chosen_id,
                str(inputs.config.get("trigger_reason") or "performance_degraded"))
            row.result = {**(row.result or {}), "training": training}
    log.info("search %s succeeded: front %d, chosen %s", search_id,
             len(choice.result["front"]), choice.chosen_id)
    return NextSteps()


def _auto_train(session: Session, settings: Settings, candidate_id: int,
                trigger_reason: str) -> dict[str, Any]:
    """A variant search's chosen strategy goes straight to a training job (gate and all);
    when the model already has an active job, say so instead of failing the search."""
    try:
        with session.begin_nested():
            outcome = train_candidate(session, settings, candidate_id,
                                      requested_by="clm-evolution",
                                      trigger_reason=trigger_reason, source="evolution")
    except InvalidInput as exc:
        return {"job_id": None, "created": False, "reason": str(exc)}
    if outcome.active_job_id is not None:
        return {"job_id": outcome.active_job_id, "created": False,
                "reason": "the model already has an active training job"}
    return {"job_id": outcome.job_id, "created": True}


# -- training a candidate ---------------------------------------------------------------
def train_candidate(
    session: Session,
    settings: Settings,
    candidate_id: int,
    *,
    requested_by: str | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    source: str = "api",
    details: Mapping[str, Any] | None = None,
) -> TrainingOutcome:
    """A normal training job with the candidate's model params and whole strategy,
    started through `request_training(decide="now")`: a trigger decision is recorded,
    the job goes through the usual pipeline and promotion gate, and publishes itself
    after the caller's transaction commits (open it with `immediate=True`).

    Raises NotFound, Conflict (candidate not evaluated) or InvalidInput. When the model
    already has an active job the outcome names it (`active_job_id`; the API answers
    409) and the candidate keeps no job.
    """
    request = state.candidate_training(session, candidate_id)
    outcome = request_training(
        session, settings, model_type=request.model_type, symbol=request.symbol,
        timeframe=request.timeframe, dataset_span_days=request.dataset_span_days,
        params=request.params, strategy=request.strategy, regime=request.regime,
        reason=trigger_reason, source=source, requested_by=requested_by, decide="now",
        details={**dict(details or {}), "candidate_id": request.candidate_id,
                 "search_id": request.search_id})
    if outcome.job is not None:
        state.mark_trained(session, request.candidate_id, outcome.job["job_id"])
    return outcome


# -- variants (the response to degraded performance) ------------------------------------
def propose_variants_on_degraded(
    session: Session, settings: Settings, model_id: str, *, now: datetime | None = None
) -> str | None:
    """Start a variant search for a degraded model, in the performance check's
    transaction (inserts only; Optuna is touched later by the coordinator), and publish
    its coordinator after that transaction commits.

    At most one active variant search per model (the active one's id is returned); a
    model without a space, production version or enough data is skipped (logged), never
    failing the check. `now` is the check's clock (the proposals' seed comes from the
    wall clock). Returns the search id, or None.
    """
    active = state.active_variant_search(session, model_id)
    if active is not None:
        return active
    try:
        with session.begin_nested():
            started = propose_variants(session, settings, model_id)
    except (InvalidInput, NotFound) as exc:
        log.info("no strategy variants for degraded %s: %s", model_id, exc)
        return None
    search_id = str(started["search_id"])
    send_after_commit(session, [evolution_tasks.advance(search_id)], settings)
    log.info("degraded %s: variant search %s proposed", model_id, search_id)
    return search_id


# -- reaper -----------------------------------------------------------------------------
def reap(settings: Settings, now: datetime | None = None, search_id: str | None = None, *,
         publish: bool = True) -> ReapReport:
    """Recover what crashes and lost messages left (`state.reap_stale`) and publish it
    again after the commit (`report.next_steps`)."""
    cfg = EvolutionConfig.from_settings(settings)
    now = now or utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        report = state.reap_stale(session, now=now, requeue_after_s=cfg.requeue_after_s,
                                  search_id=search_id)
        _publish(session, settings, report.next_steps, publish)
    if report.expired_trials or report.republished_trials or report.advanced_searches:
        log.info("evolution reaper: %d expired, %d republished, %d searches advanced",
                 len(report.expired_trials), len(report.republished_trials),
                 len(report.advanced_searches))
    return report


def resume_search(settings: Settings, search_id: str, *, publish: bool = True) -> NextSteps:
    """Everything a search is waiting for, right now (after an outage or a restart):
    its pending and expired trials, and its coordinator when it stalled."""
    with transaction(settings.database_url) as session:
        search_row(session, search_id)
    report = reap(settings, search_id=search_id, publish=False)
    with transaction(settings.database_url) as session:
        pending = state.pending_trials(session, search_id)
        ids = sorted(set(pending) | set(report.expired_trials) | set(report.republished_trials))
        steps = NextSteps.of(trials=ids, searches=report.advanced_searches)
        _publish(session, settings, steps, publish)
    return steps


# -- in-process driver ------------------------------------------------------------------
def drive_inline(settings: Settings, search_id: str, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run a search to the end in this process with the same units of work the Celery
    tasks run, publishing nothing (tests, benchmarks). Returns the finished search."""
    deadline = time.monotonic() + timeout_s
    queue: list[tuple[str, Any]] = [("advance", search_id)]

    def follow(steps: NextSteps) -> None:
        queue.extend(("trial", t) for t in steps.trials)
        queue.extend(("advance", s) for s in steps.searches)

    while time.monotonic() < deadline:
        if not queue:
            follow(resume_search(settings, search_id, publish=False))
            if not queue:
                break
        kind, ident = queue.pop(0)
        if kind == "advance":
            follow(run_advance(settings, ident, publish=False))
        else:
            follow(run_trial(settings, ident, publish=False))
    with transaction(settings.database_url) as session:
        result = get_search(session, search_id)
    if result["status"] not in (SearchStatus.SUCCEEDED.value, SearchStatus.FAILED.value):
        raise TimeoutError(f"search {search_id} still {result['status']} after {timeout_s}s")
    return result
