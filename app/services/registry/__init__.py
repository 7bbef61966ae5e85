"""The model registry: the only writer of `model_versions` and of their status history.

Owns: registering versions (and choosing their version strings), reading and querying
them, tag/note updates, deletion, the training pipeline's status transitions, promotion
and rollback, and the questions the history answers ("who was production at T, who put
it there and why"). Every function takes a `Session` and plain values, `flush()`es but
never commits (the caller owns the unit of work, `app.db.transaction`), returns plain
dicts in the API's JSON shape and raises `app.core.errors` (NotFound / Conflict /
InvalidInput) for anything a caller got wrong.

Modules (each imports only those above it in this list):

* `validation` — input checks, the contract's `Metrics` and `Artifact` models.
* `views` — rows → the API's dicts.
* `rows` — row access, per-model locking, status-change and audit writers.
* `history` — status history, production at a time, audit log, rollback target.
* `versions` — register, get, query, update, delete, status counts.
* `lifecycle` — set_status, promote, rollback (and their outbox events).

This package re-exports the public names, so `from app.services import registry;
registry.promote(...)` is the way callers use it.

Concurrency. At most one production version per model_id is guaranteed by the database
(partial unique index `uq_model_versions_one_production`). On top of that, promote,
rollback and delete serialize per model_id so that the "retire the current production,
promote the target" read-modify-write cannot interleave:

* PostgreSQL: `SELECT id ... WHERE model_id = :m ORDER BY id FOR UPDATE` locks all of the
  model's rows in a stable order (no deadlock between two promoters).
* SQLite has no row locks; the whole database has one writer. Callers that write should
  open the unit of work with `transaction(url, immediate=True)` (BEGIN IMMEDIATE). Every
  writing function also issues a no-op UPDATE before it reads, which takes the write lock
  up front when the caller forgot, instead of failing on the lock upgrade later (that
  only fails when the caller's transaction already read something before calling).

Every status change writes a `VersionStatusChange` row; promote, rollback, delete and tag
edits also write an `AuditEntry` (actor, action, model_id, version, reason, details).
"""

from app.core.domain import is_model_id
from app.services.registry.history import (
    AuditQuery,
    history,
    model_known,
    production_at,
    query_audit,
)
from app.services.registry.lifecycle import PROMOTABLE, promote, rollback, set_status
from app.services.registry.validation import Artifact, Metrics, no_nul
from app.services.registry.versions import (
    REGISTRABLE,
    VersionQuery,
    delete_version,
    get_production,
    get_version,
    get_version_by_job,
    query_versions,
    register_version,
    status_counts,
    update_version,
)

__all__ = [
    "PROMOTABLE",
    "REGISTRABLE",
    "Artifact",
    "AuditQuery",
    "Metrics",
    "VersionQuery",
    "delete_version",
    "get_production",
    "get_version",
    "get_version_by_job",
    "history",
    "is_model_id",
    "model_known",
    "no_nul",
    "production_at",
    "promote",
    "query_audit",
    "query_versions",
    "register_version",
    "rollback",
    "set_status",
    "status_counts",
    "update_version",
]
