"""Structured logging: one JSON object per line, with job_id (and other context) as fields.

`configure_logging(level, json_lines)` is called by every process entry point (web, worker,
beat, consumer). Attach context with `job_logger(logger, job_id)` so every line about a job
carries its id. Lines that Celery itself writes about a training-pipeline task ("Task
clm.job.prepare[…] received / succeeded / raised …") and any line logged while such a task
runs get the job id too: the formatter takes it from the task's arguments (tasks pass ids
only, the job id first); so do gunicorn's access lines for /clm/jobs/<job_id>. So
`grep '"job_id": "<id>"'` over every process's log finds the whole story of a job.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

from app.core.timeutil import isoformat, utcnow

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# Celery tasks whose first argument is a training job id (workers/tasks.py).
JOB_TASK_PREFIX = "clm.job."
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# An access-log line for GET /clm/jobs/<job_id> is about that job.
_JOB_URL = re.compile(r"/clm/jobs/(" + _UUID.pattern + r")\b")


def _job_id_from_celery_record(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """(job_id, task_id) for a line Celery wrote about a clm.job.* task (its `data` extra)."""
    data = record.__dict__.get("data")
    if not isinstance(data, dict):
        return None, None
    if not str(data.get("name") or "").startswith(JOB_TASK_PREFIX):
        return None, None
    match = _UUID.search(str(data.get("args") or ""))
    return (match.group(0) if match else None), data.get("id")


def _job_id_from_current_task() -> tuple[str | None, str | None]:
    """(job_id, task_id) of the clm.job.* task running in this process, if any."""
    if "celery" not in sys.modules:  # never import Celery just to log (fast CLI start)
        return None, None
    try:
        from celery import current_task

        task = current_task._get_current_object()
        if task is None or not str(task.name or "").startswith(JOB_TASK_PREFIX):
            return None, None
        args = task.request.args or ()
        job_id = args[0] if args and isinstance(args[0], str) else None
        return job_id, task.request.id
    except Exception:  # logging must never fail because of context lookup
        return None, None


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: at, level, logger, message, then every extra."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "at": isoformat(utcnow()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if "job_id" not in payload and record.name == "gunicorn.access":
            match = _JOB_URL.search(payload["message"])
            if match:
                payload["job_id"] = match.group(1)
        if "job_id" not in payload:
            job_id, task_id = _job_id_from_celery_record(record)
            if job_id is None:
                job_id, task_id = _job_id_from_current_task()
            if job_id is not None:
                payload["job_id"] = job_id
                if task_id:
                    payload.setdefault("task_id", task_id)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class ContextAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Merges fixed context (e.g. job_id) into every record's fields."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def job_logger(logger: logging.Logger, job_id: str, **context: Any) -> ContextAdapter:
    return ContextAdapter(logger, {"job_id": job_id, **context})


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
