"""`clm worker` and `clm beat`: exec the Celery worker / beat of workers/celery_app.py.

Both replace the `clm` process with `celery` (os.execv), so signals reach Celery directly:
SIGTERM is a soft shutdown (see `worker` below). `clm worker` is exactly
`celery -A workers.celery_app worker` with CLM's defaults (all queues, the prefork pool
that keeps training out of the main process, CLM_WORKER_CONCURRENCY), so running plain
`celery` is equivalent (add REMAP_SIGTERM=SIGQUIT to its environment to get the same
bounded soft shutdown on SIGTERM).
"""

from __future__ import annotations

import os
import sys

import click

from app.bus.broker import WORK_QUEUES
from app.core.config import get_settings


def _queues(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is None or not value.strip():
        return ",".join(WORK_QUEUES)
    names = [q.strip() for q in value.split(",") if q.strip()]
    unknown = sorted(set(names) - set(WORK_QUEUES))
    if unknown:
        raise click.BadParameter(
            f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(WORK_QUEUES)}"
        )
    return ",".join(dict.fromkeys(names))


def _exec(args: list[str]) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@click.command()
@click.option("--queues", "-Q", callback=_queues, default=None,
              help=f"comma-separated queues to consume (default: all: {','.join(WORK_QUEUES)})")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="pool processes (default: CLM_WORKER_CONCURRENCY)")
@click.option("--hostname", "-n", default=None,
              help="node name (default: clm-<queues>@%h)")
@click.option("--loglevel", "-l", default=None, help="default: CLM_LOG_LEVEL")
def worker(queues: str, concurrency: int | None, hostname: str | None,
           loglevel: str | None) -> None:
    """A Celery worker of the configured app (exec's `celery ... worker`)."""
    settings = get_settings()
    # SIGTERM (docker stop, systemd, honcho) starts Celery's soft shutdown instead of an
    # unbounded warm one: running tasks get CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S to finish,
    # the rest are cancelled and their messages returned. Set REMAP_SIGTERM= (empty) to
    # keep Celery's plain warm shutdown.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    _exec([
        "worker",
        "--queues", queues,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        # prefork: tasks (and OpenMP) run in children, never in the main process.
        "--pool", "prefork",
        "--hostname", hostname or f"clm-{queues.replace(',', '-')}@%h",
        "--loglevel", (loglevel or settings.log_level).upper(),
        # Task events for Flower / `celery inspect`.
        "--task-events",
        # Not needed for correctness (the database decides), and they slow start-up.
        "--without-mingle", "--without-gossip",
    ])


@click.command()
@click.option("--loglevel", "-l", default=None, help="default: CLM_LOG_LEVEL")
def beat(loglevel: str | None) -> None:
    """The Celery beat scheduler of the configured app (exec's `celery ... beat`).

    Its entries (workers/schedule.py) decide in the database what is due, so a second
    beat started by mistake does no harm.
    """
    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _exec([
        "beat",
        "--schedule", str(settings.var_dir / "celerybeat-schedule"),
        "--loglevel", (loglevel or settings.log_level).upper(),
    ])
