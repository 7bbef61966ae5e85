"""The one producer of task messages, and the Celery configuration shared with workers/.

Owns how CLM's processes talk to the broker as senders: `celery_config(settings)` is the
whole at-least-once configuration (workers/celery_app.py builds its worker app from it,
adding the task modules and the beat schedule), `producer_app(settings)` a Celery app
without tasks that sends by name (so a publisher never imports the task modules or the
ML stack), and `send(...)` the one publish with the one retry policy. A broker that is
down is logged, not raised: every message CLM sends names state that the database
keeps, and the reapers publish it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.bus.broker import WORK_QUEUES, transport_options
from app.core.config import Settings, get_settings
from app.db import on_commit

log = logging.getLogger(__name__)

# Training pipeline steps by kind of work (publishers also name the queue explicitly).
TASK_ROUTES = {
    "clm.job.prepare": {"queue": "data", "routing_key": "data"},
    "clm.job.train_fold": {"queue": "train", "routing_key": "train"},
    "clm.job.final_fit": {"queue": "train", "routing_key": "train"},
    "clm.job.evaluate": {"queue": "evaluate", "routing_key": "evaluate"},
    "clm.job.register": {"queue": "evaluate", "routing_key": "evaluate"},
}

# Short: a publish runs after a commit, often on a request path; the reapers publish again.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5,
                "interval_max": 1.0}


class Message(Protocol):
    """Anything naming a task, its queue and its (id-only) arguments."""

    @property
    def task(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def args(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class TaskMessage:
    """One task to publish: its registered name, its queue and its (id-only) arguments."""

    task: str
    queue: str
    args: tuple[Any, ...] = ()


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for every CLM process (senders and workers alike)."""
    from kombu import Exchange, Queue

    work_exchange = Exchange("clm.work", type="direct")
    return dict(
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
    )


_apps: dict[tuple[str, str | None, str], Any] = {}
# Request threads publish at once: celery's first import is not thread-safe (a second
# thread sees the half-initialised lazy module: "cannot import name 'Celery'"), and one
# app per configuration is enough. Found by tests/test_ops_load.py (gunicorn, 8 threads).
_apps_lock = threading.Lock()


def producer_app(settings: Settings | None = None) -> Any:
    """A task-less Celery app for `settings`' broker, one per configuration (tests switch
    brokers; Settings holds dicts, so it cannot be an lru_cache key)."""
    settings = settings or get_settings()
    key = (settings.broker_url, settings.result_backend, str(settings.var_dir))
    app = _apps.get(key)
    if app is None:
        with _apps_lock:
            app = _apps.get(key)
            if app is None:
                from celery import Celery  # lazy: start-up (a sender needs no worker code)

                app = Celery("clm")
                app.conf.update(celery_config(settings))
                _apps[key] = app
    return app


def send(messages: Iterable[Message], settings: Settings | None = None, *,
         retry: bool = True) -> int:
    """Publish each message by task name; returns how many were sent. Call it after the
    commit (through `app.db.on_commit`): a worker must find the rows a message names."""
    settings = settings or get_settings()
    sent = 0
    for m in messages:
        try:
            producer_app(settings).send_task(
                m.task, args=list(m.args), queue=m.queue, routing_key=m.queue,
                retry=retry, retry_policy=RETRY_POLICY)
            sent += 1
        except Exception as exc:  # broker down: the reapers publish again from the database
            log.warning("could not publish %s%s (%s: %s); a reaper will publish it again",
                        m.task, tuple(m.args), type(exc).__name__, exc)
    return sent


def send_after_commit(session: Any, messages: Sequence[Message],
                      settings: Settings | None = None) -> None:
    """Publish `messages` once the transaction of `session` commits (dropped on rollback)."""
    if messages:
        batch = tuple(messages)
        on_commit(session, lambda: send(batch, settings))
