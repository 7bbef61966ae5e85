"""The Celery app: queues, routes and at-least-once settings, from CLM's config.

`celery -A workers.celery_app worker` and `clm worker` both use `app` below. Tasks are
registered from workers/tasks.py (thin adapters over app/ services).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from app.bus.broker import WORK_QUEUES, transport_options
from app.core.config import Settings, get_settings
from workers.schedule import beat_schedule

TASK_MODULES = ["workers.tasks", "workers.tasks_continuous", "workers.tasks_evolution"]

# Training pipeline steps by kind of work (publishers also name the queue explicitly).
TASK_ROUTES = {
    "clm.job.prepare": {"queue": "data", "routing_key": "data"},
    "clm.job.train_fold": {"queue": "train", "routing_key": "train"},
    "clm.job.final_fit": {"queue": "train", "routing_key": "train"},
    "clm.job.evaluate": {"queue": "evaluate", "routing_key": "evaluate"},
    "clm.job.register": {"queue": "evaluate", "routing_key": "evaluate"},
}


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("clm", include=TASK_MODULES)
    work_exchange = Exchange("clm.work", type="direct")
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=settings.result_backend,
        task_ignore_result=settings.result_backend is None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        timezone="UTC",
        enable_utc=True,
        task_queues=[Queue(q, work_exchange, routing_key=q) for q in WORK_QUEUES],
        task_default_queue="default",
        task_default_exchange="clm.work",
        task_default_routing_key="default",
        task_routes=TASK_ROUTES,
        # At-least-once: ack after the task ran; a worker that dies returns its task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_max_memory_per_child=settings.worker_max_memory_per_child_kb,
        # Flower and `celery inspect` need task events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        # A long task must not keep running after the broker connection is lost: its
        # message comes back and the job lease decides who finishes it.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Soft shutdown (Celery >= 5.5): on a cold shutdown -- SIGQUIT, or SIGTERM when
        # REMAP_SIGTERM=SIGQUIT, which `clm worker` sets -- running tasks get this long to
        # finish; the rest are cancelled and their messages returned to the queue (the job
        # lease and the reaper decide who redoes them). A stop is bounded, not a 30-min wait.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout_s,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        # Beat answers `celery inspect ping -d celerybeat@<host>` while its scheduler
        # ticks (Celery >= 5.7): its liveness probe (python -m app.liveness beat).
        beat_enable_remote_control=True,
        # Periodic tasks (reaper, scheduler tick, ...): workers/schedule.py.
        beat_schedule=beat_schedule(settings),
    )
    return celery


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Connection pools and OpenMP state must not be shared with the parent process.
    from app.db import dispose_engines

    dispose_engines()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


app = create_celery_app()
