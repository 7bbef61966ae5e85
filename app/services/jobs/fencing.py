"""Fencing tokens: a claim's attempt number, checked in every write a worker makes.

Owns `FencingRefused`, the fence clauses (`stage_fence`, `item_fence`: the WHERE of a
worker's conditional UPDATE) and `refuse` (the refusal: the log line and the exception).

Why: a lease can expire while its worker still runs — a network partition, a process
paused by SIGSTOP or a long GC pause, a host whose clock stalled. The reaper (or another
worker) then takes the work over on a new attempt. When the first worker comes back, its
late writes must not land. Every claim therefore carries the attempt number it was given
(`training_jobs.attempts` for a stage, `training_job_work_items.attempts` for a work item)
plus its delivery-unique owner token, and every write it makes is a conditional
UPDATE whose WHERE names both: a stale attempt matches 0 rows and is refused in that very
statement, never by a read followed by a write. On PostgreSQL the UPDATE also takes the
row's lock until commit, so the rest of that transaction (a step row, the model version
INSERT, whose `job_id` is unique besides) cannot interleave with a take-over; SQLite
transactions are immediate (one writer at a time).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.core.domain import JobStatus
from app.core.logs import job_logger
from app.models.jobs import TrainingJob, TrainingJobWorkItem, WorkKind, WorkStatus

log = logging.getLogger("app.services.jobs")  # one logger for the whole job service


class LeaseLost(RuntimeError):
    """This worker no longer owns the job or work item (another one took over)."""


class FencingRefused(LeaseLost):
    """A write from a claim whose attempt is no longer the current one was refused."""

    def __init__(self, message: str, *, job_id: str, attempt: int,
                 current: int | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt
        self.current = current


def stage_fence(job_id: str, owner: str, attempt: int) -> list[ColumnElement[bool]]:
    """WHERE of a stage holder's write: its owner token and its attempt, job running."""
    return [TrainingJob.id == job_id, TrainingJob.lease_owner == owner,
            TrainingJob.attempts == int(attempt), TrainingJob.status == JobStatus.RUNNING]


def item_fence(job_id: str, kind: WorkKind | str, fold: int, owner: str,
               attempt: int) -> list[ColumnElement[bool]]:
    """WHERE of a work item holder's write: its owner token and its attempt, running."""
    W = TrainingJobWorkItem
    return [W.job_id == job_id, W.kind == WorkKind(kind), W.fold == int(fold),
            W.lease_owner == owner, W.attempts == int(attempt),
            W.status == WorkStatus.RUNNING]


def refuse(session: Session, what: str, job_id: str, owner: str, attempt: int, *,
           kind: WorkKind | str | None = None, fold: int | None = None) -> LeaseLost:
    """The exception for a write that matched 0 rows, logged.

    `fencing: refused` (a warning naming the job and both attempts) when the work moved on
    to another attempt or owner; a plain LeaseLost when the lease simply ended with this
    claim (the stage handed over or the job finished: nothing stale about it).
    """
    current: Any
    if kind is None:
        current = session.execute(
            select(TrainingJob.attempts, TrainingJob.lease_owner, TrainingJob.status)
            .where(TrainingJob.id == job_id)).first()
        label = "job"
    else:
        W = TrainingJobWorkItem
        current = session.execute(
            select(W.attempts, W.lease_owner, W.status)
            .where(W.job_id == job_id, W.kind == WorkKind(kind), W.fold == int(fold or 0))
        ).first()
        label = f"{WorkKind(kind).value} {fold}"
    now_attempt = None if current is None else int(current[0])
    now_owner = None if current is None else current[1]
    if now_attempt == int(attempt) and now_owner in (None, owner):
        return LeaseLost(f"job {job_id}: {label}: lease ended with attempt {attempt} "
                         f"({what} not needed)")
    message = (f"fencing: refused {what} for job {job_id} ({label}): this claim is attempt "
               f"{attempt} by {owner}; the {label} is now on attempt {now_attempt}"
               + (f" held by {now_owner}" if now_owner else ""))
    job_logger(log, job_id, owner=owner, attempt=int(attempt),
               current_attempt=now_attempt).warning("%s", message)
    return FencingRefused(message, job_id=job_id, attempt=int(attempt), current=now_attempt)
