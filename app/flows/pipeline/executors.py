"""The executors the Celery tasks call (workers/tasks.py): one stage, one work item, one
reaper pass, each by id; and `enqueue_job`, which publishes a job's pending work again.

Owns the unit-of-work choreography around a task: claim (conditional UPDATE, its own
transaction) → heartbeat thread renewing the lease → the stage's steps, each recorded in
its own short transaction → the hand-over transaction, whose messages
(app.services.jobs registers them) go out once it commits. Transient database errors are
re-raised for the task's retry with backoff (the lease is released first); a permanent
error fails the job with the step that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.bus.producer import send
from app.core.config import Settings
from app.core.logs import job_logger
from app.db import transaction
from app.flows.pipeline.evaluate import run_evaluate, run_register
from app.flows.pipeline.runtime import (
    LeaseKeeper,
    StageRun,
    clean,
    is_transient,
    worker_identity,
)
from app.flows.pipeline.stages import run_prepare, run_work_item
from app.models.jobs import JobStage, WorkKind
from app.services import jobs

log = logging.getLogger("app.flows.pipeline")  # one logger for the whole pipeline


def _fail(settings: Settings, job_id: str, owner: str, attempt: int, step: str | None,
          exc: BaseException, label: str | None = None) -> None:
    """Record a permanent error as the job's failure (in its own transaction), unless the
    pool process is being terminated: then the error is the cancellation's, not the
    job's, and the process exits (the lease and the reaper hand the work on)."""
    if _pool_process_terminating():  # cancelled: not the job's fault (lease -> reaper)
        raise SystemExit(1)
    where = f"{step or 'task'}: " + (f"{label}: " if label else "")
    if "TimeLimit" in type(exc).__name__:
        message = (f"{where}ran past its time limit "
                   f"(CLM_TASK_SOFT_TIME_LIMIT_S={settings.task_soft_time_limit_s})")
    else:
        message = f"{where}{type(exc).__name__}: {exc}"
    try:
        with transaction(settings.database_url, immediate=True) as session:
            jobs.fail_job(session, job_id, message, owner=owner, attempt=attempt,
                          step=step)
    except Exception:  # the lease will expire and the reaper decides
        job_logger(log, job_id).exception("could not record the failure")


def _pool_process_terminating() -> bool:
    """True once Celery's pool process got its terminate signal (task cancelled on broker
    connection loss, soft shutdown, revoke): billiard raises SystemExit from the signal
    handler, and inside a native callback (XGBoost's data iterator) that SystemExit is
    swallowed and resurfaces as a library error, which must not fail the job."""
    try:  # lazy: only a Celery pool process has billiard's handler state worth reading
        from billiard.common import terminate_handler_fired
    except ImportError:  # older billiard, or not in a Celery pool process
        return False
    return bool(terminate_handler_fired())


def _release_for_retry(settings: Settings, jl: logging.LoggerAdapter,  # type: ignore[type-arg]
                       release: Callable[[Session], None]) -> None:
    """Hand a lease back after a transient error so the task's retry can claim at once.
    The error itself is re-raised by the caller; when the database is still away the
    release fails too — said in the log — and the lease expires for the reaper instead."""
    try:
        with transaction(settings.database_url) as session:
            release(session)
    except Exception as exc:
        jl.warning("could not release the lease (%s: %s); it expires and the reaper "
                   "recovers the work", type(exc).__name__, exc)


def execute_stage(settings: Settings, job_id: str, stage: JobStage | str,
                  worker: str | None = None) -> str:
    """Run one single-task stage of a job (prepare, evaluate or register).

    Returns "done", "duplicate" (someone else owns it or it moved on), "lost" (the lease
    was taken over mid-way), or "failed" (permanent error recorded on the job). Transient
    database errors are re-raised for the task's retry with backoff.
    """
    stage = JobStage(stage)
    owner = jobs.new_owner(worker or worker_identity())
    jl = job_logger(log, job_id, stage=stage.value, owner=owner)
    with transaction(settings.database_url, immediate=True) as session:
        job = jobs.claim_stage(session, settings, job_id, stage, owner)
    if job is None:
        jl.info("stage %s already owned, done or moved on: nothing to do", stage.value)
        return "duplicate"
    run = StageRun(settings, job, owner)
    attempt = run.attempt  # the fencing token: every write below names it
    try:
        renew = lambda s: jobs.renew_stage_lease(s, settings, job_id, owner, attempt)  # noqa: E731
        with LeaseKeeper(settings, renew, jl) as keeper:
            run.keeper = keeper
            if stage == JobStage.PREPARE:
                run_prepare(run)
            elif stage == JobStage.EVALUATE:
                evaluation, drift = run_evaluate(run)
                run_register(run, evaluation, drift)
            else:
                run_register(run, job["evaluation"] or {},
                              (job.get("artifacts") or {}).get("drift_lineage"))
    except jobs.LeaseLost as exc:
        jl.warning("stopped: %s", exc)
        return "lost"
    except Exception as exc:
        if is_transient(exc):
            jl.warning("transient error in %s (%s); retrying", run.current_step, exc)
            _release_for_retry(settings, jl, lambda s: jobs.release_stage_lease(
                s, settings, job_id, owner, attempt))
            raise
        jl.exception("step %s failed", run.current_step)
        _fail(settings, job_id, owner, attempt, run.current_step, exc)
        return "failed"
    return "done"


def execute_work_item(settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
                      worker: str | None = None) -> str:
    """Run one work item of the train stage (a fold, a champion fold or the final fit);
    same return values as `execute_stage`."""
    kind = WorkKind(kind)
    worker = worker or worker_identity()
    owner = jobs.new_owner(worker)
    jl = job_logger(log, job_id, kind=kind.value, fold=int(fold), owner=owner)
    with transaction(settings.database_url, immediate=True) as session:
        claim = jobs.claim_work_item(session, settings, job_id, kind, fold, owner)
    if claim is None:
        jl.info("%s %d already owned or done, or the job moved on: nothing to do",
                kind.value, fold)
        return "duplicate"
    step = "final_fit" if kind == WorkKind.FINAL else "train_folds"
    attempt = int(claim["item"]["attempts"])  # the fencing token: every write names it
    try:
        renew = lambda s: jobs.renew_item_lease(  # noqa: E731
            s, settings, job_id, kind, fold, owner, attempt)
        with LeaseKeeper(settings, renew, jl) as keeper:
            result = run_work_item(settings, claim, worker, keeper)
            keeper.check()
        with transaction(settings.database_url, immediate=True) as session:
            # The last item moves the job to evaluate; that message goes out on commit.
            jobs.complete_work_item(session, settings, job_id, kind, fold, owner, attempt,
                                    clean(result))
    except jobs.LeaseLost as exc:
        jl.warning("stopped: %s", exc)
        return "lost"
    except Exception as exc:
        if is_transient(exc):
            jl.warning("transient error on %s %d (%s); retrying", kind.value, fold, exc)
            _release_for_retry(settings, jl, lambda s: jobs.release_item_lease(
                s, settings, job_id, kind, fold, owner, attempt))
            raise
        jl.exception("%s %d failed", kind.value, fold)
        label = f"{kind.value} {fold}" if kind != WorkKind.FINAL else None
        _fail(settings, job_id, owner, attempt, step, exc, label)
        return "failed"
    return "done"


def execute_reap(settings: Settings) -> jobs.ReapResult:
    """One reaper pass in its own transaction; what it recovered is published once that
    transaction committed."""
    with transaction(settings.database_url, immediate=True) as session:
        result = jobs.reap(session, settings)
    if result.recovered or result.failed or result.redispatched:
        log.info("reaper: %d recovered, %d republished, %d failed",
                 len(result.recovered), len(result.redispatched), len(result.failed))
    return result


def enqueue_job(job_id: str, settings: Settings) -> bool:
    """Publish again what the job is waiting for (to the workers, a duplicate delivery,
    which the claims make harmless). Reads in its own short transaction, then sends.
    False when the broker could not be reached (the reaper publishes the work at its
    dispatch deadline). Not needed to start a job: a created job publishes itself."""
    with transaction(settings.database_url) as session:
        dispatches = jobs.pending_dispatches(session, job_id)
    return send(dispatches, settings) == len(dispatches)
