"""The Celery worker app: CLM's configuration (app/bus/producer.py) plus the task modules
and the beat schedule.

`celery -A workers.celery_app worker` and `clm worker` both use `app` below. Tasks are
registered from workers/tasks*.py (thin adapters over app/flows).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

from app.bus.producer import celery_config
from app.core.config import Settings, get_settings
from app.db import dispose_engines
from workers.schedule import beat_schedule

TASK_MODULES = [
    "workers.tasks",
    "workers.tasks_continuous",
    "workers.tasks_evolution",
    "workers.tasks_feeds",
]


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("clm", include=TASK_MODULES)
    celery.conf.update(celery_config(settings))
    # Periodic tasks (reaper, scheduler tick, ...): workers/schedule.py.
    celery.conf.beat_schedule = beat_schedule(settings)
    return celery


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Connection pools and OpenMP state must not be shared with the parent process.
    dispose_engines()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


app = create_celery_app()
