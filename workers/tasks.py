"""Celery tasks of the training pipeline: thin adapters that call app.flows.pipeline by id.

Each task names itself explicitly (`clm.job.*`, `clm.jobs.reap`), takes only ids, and
delegates to an executor that owns its transactions and its lease; the next tasks are
published once the transaction that hands the job over commits. Transient database
errors (OperationalError) are retried with exponential backoff; everything else is
recorded on the job by the executor, never raised into Celery.

The worker's main process sizes the native thread pools before it forks the pool:
OMP_NUM_THREADS and CLM_TRAIN_THREADS = cores ÷ this worker's concurrency, and records its
pid so training can refuse to run outside a prefork child (OpenMP is not fork-safe).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task
from celery.signals import setup_logging, worker_init
from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import get_settings
from app.core.logs import configure_logging
from app.core.objectstore import ObjectStoreUnavailable
from app.flows.pipeline import (
    MAIN_PID_ENV,
    THREADS_ENV,
    execute_reap,
    execute_stage,
    execute_work_item,
    worker_identity,
)
from workers.celery_app import app

log = logging.getLogger(__name__)

# Transient database or object-store trouble: retry with backoff (1, 2, 4, … s, capped,
# jittered). The executors re-raise only what `is_transient` says is transient.
RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, DBAPIError, ObjectStoreUnavailable),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    # CLM's structured logs (JSON lines with job_id) instead of Celery's own format.
    settings = get_settings()
    level = loglevel if isinstance(loglevel, str) else settings.log_level
    if isinstance(loglevel, int):
        level = logging.getLevelName(loglevel)
    configure_logging(level, settings.log_json)


@worker_init.connect
def _size_thread_pools(sender: Any = None, **_: Any) -> None:
    # Runs in the worker's main process before the pool forks: children inherit it.
    # An explicit CLM_TRAIN_THREADS wins (several workers sharing one machine's cores).
    explicit = os.environ.get(THREADS_ENV, "")
    if explicit.isdigit() and int(explicit) > 0:
        threads = int(explicit)
    else:
        concurrency = int(getattr(sender, "concurrency", 0) or get_settings().worker_concurrency)
        threads = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    os.environ[THREADS_ENV] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ[MAIN_PID_ENV] = str(os.getpid())
    settings = get_settings()
    if (settings.broker_url.startswith(("redis://", "rediss://"))
            and settings.broker_visibility_timeout_s <= settings.task_time_limit_s):
        # An unacked task comes back after the visibility timeout even while it runs.
        log.warning("CLM_BROKER_VISIBILITY_TIMEOUT_S (%ss) should be well above "
                    "CLM_TASK_TIME_LIMIT_S (%ss): long steps would be delivered twice",
                    settings.broker_visibility_timeout_s, settings.task_time_limit_s)
    pool = str(getattr(sender, "pool_cls", ""))
    if pool and "prefork" not in pool:
        log.warning("pool %s runs tasks in the worker's main process: training tasks "
                    "refuse to run there (OpenMP is not fork-safe); use --pool prefork", pool)


def _worker(task: Task) -> str:
    return worker_identity(task.request.hostname)


@app.task(bind=True, name="clm.job.prepare", **RETRY)
def prepare_job(self: Task, job_id: str) -> str:
    """Steps 1-5: validate request, fetch data, validate data, build features, split folds."""
    return execute_stage(get_settings(), job_id, "prepare", _worker(self))


@app.task(bind=True, name="clm.job.train_fold", **RETRY)
def train_fold(self: Task, job_id: str, kind: str, fold: int) -> str:
    """Step 6: one walk-forward fold (challenger or champion)."""
    return execute_work_item(get_settings(), job_id, kind, fold, _worker(self))


@app.task(bind=True, name="clm.job.final_fit", **RETRY)
def final_fit(self: Task, job_id: str, kind: str = "final", fold: int = 0) -> str:
    """Step 8: the deployable model on every row (runs alongside the folds)."""
    return execute_work_item(get_settings(), job_id, kind, fold, _worker(self))


@app.task(bind=True, name="clm.job.evaluate", **RETRY)
def evaluate_job(self: Task, job_id: str) -> str:
    """Steps 7, 9, 10: evaluate (fan-in), register the version, decide its status."""
    return execute_stage(get_settings(), job_id, "evaluate", _worker(self))


@app.task(bind=True, name="clm.job.register", **RETRY)
def register_job(self: Task, job_id: str) -> str:
    """Steps 9-10 again, for a job whose evaluate worker died after evaluating."""
    return execute_stage(get_settings(), job_id, "register", _worker(self))


@app.task(bind=True, name="clm.jobs.reap", **RETRY)
def reap_jobs(self: Task) -> dict[str, int]:
    """Recover jobs whose lease or dispatch deadline passed (beat: every reaper_interval_s)."""
    result = execute_reap(get_settings())
    return {"recovered": len(result.recovered), "redispatched": len(result.redispatched),
            "failed": len(result.failed)}
