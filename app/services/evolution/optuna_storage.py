"""Optuna's storage and studies on the CLM database (part of the Optuna glue; see
app/services/evolution/search.py for why Optuna and what each trial costs).

Owns `storage_for` (one RDBStorage per process and URL, created lazily so a forked worker
child makes its own, without re-reading Optuna's migration scripts when the schema is
current), `optuna_schema_head`, the per-process trial cache of each study
(`_cached_storage`), `create_study` / `load_study` with the NSGA-II sampler
(`make_sampler`), `dispose_storages`, and `retry_transient` — the one retry for Optuna's
lock and serialization errors.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from app.db import retry_if_busy

__all__ = [
    "create_study",
    "dispose_storages",
    "load_study",
    "make_sampler",
    "optuna_schema_head",
    "retry_transient",
    "storage_for",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_storages: dict[tuple[int, str], Any] = {}
_STUDY_CACHE_SIZE = 8
_study_storages: OrderedDict[tuple[int, str, str], Any] = OrderedDict()
_known_studies: set[tuple[int, str, str]] = set()
T = TypeVar("T")

def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The same settings CLM's own engine uses (app/db.py): WAL is a property of the file,
    # but `synchronous` is per connection and SQLite's default (FULL) fsyncs the WAL on
    # every commit — Optuna commits once per storage call, so that fsync dominated ask
    # and tell. NORMAL in WAL mode is still safe against a process crash.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def storage_for(database_url: str) -> Any:
    """The process-wide Optuna RDBStorage on the CLM database (created on first use).

    Created lazily in the process that uses it (a forked Celery child makes its own: the
    cache is keyed by pid and cleared after fork). SQLite: a 30 s busy timeout so
    concurrent workers wait for the write lock instead of failing, and the connection
    pragmas of CLM's engine. Optuna's heartbeat is deliberately off: CLM's trial leases
    decide liveness, and Optuna's stale-trial handling would FAIL a trial that CLM's
    reaper is about to hand to another worker.
    """
    key = (os.getpid(), database_url)
    storage = _storages.get(key)
    if storage is not None:
        return storage
    with _lock:
        storage = _storages.get(key)
        if storage is None:
            _quiet_optuna()
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            sqlite = database_url.startswith("sqlite")
            if sqlite:
                kwargs = {"connect_args": {"timeout": 30}}
            storage = retry_transient(lambda: _open_storage(database_url, kwargs))
            if sqlite:
                from sqlalchemy import event

                event.listen(storage.engine, "connect", _sqlite_pragmas)
                storage.engine.dispose()  # connections opened so far lack the pragmas
            _storages[key] = storage
    return storage


def _open_storage(database_url: str, engine_kwargs: dict[str, Any]) -> Any:
    """RDBStorage without re-reading Optuna's migration scripts in every process.

    Optuna's own start-up creates missing tables and then compares the database's schema
    revision with the newest migration script, which means importing every script
    (~50-80 ms per process, paid again by each Celery pool child). Here the newest
    revision is computed once per process (`optuna_schema_head`, preloaded by the worker
    before it forks) and the database's revision is read with one query; anything other
    than an exact match — tables missing, an older or newer schema — takes Optuna's
    full path, which creates the tables or raises its own upgrade message.
    """
    import optuna

    fast = None
    try:
        fast = optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs,
                                          skip_compatibility_check=True,
                                          skip_table_creation=True)
        if fast.get_current_version() == optuna_schema_head():
            return fast
    except Exception as exc:  # no tables yet (a fresh database), an odd schema, ...
        if _transient(exc):
            raise
        log.debug("optuna storage: full start-up (%s)", exc)
    if fast is not None:
        fast.engine.dispose()
    return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs)


@functools.cache
def optuna_schema_head() -> str:
    """The newest revision among the installed Optuna's storage migrations."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from optuna.storages._rdb import storage as rdb_storage

    here = os.path.dirname(rdb_storage.__file__)
    config = Config(os.path.join(here, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(here, "alembic").replace("%", "%%"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _cached_storage(database_url: str, study_name: str) -> Any:
    """Optuna's trial cache over the process-wide storage, one per study (LRU).

    Optuna's `_CachedStorage` (what `optuna.load_study(storage=url)` wraps around an
    RDBStorage) keeps finished trials — immutable — and re-reads only unfinished or new
    ones, so a coordinator that asks generation after generation reads each finished
    trial once per process instead of once per ask.
    """
    from optuna.storages._cached_storage import _CachedStorage

    key = (os.getpid(), database_url, study_name)
    with _lock:
        cached = _study_storages.get(key)
        if cached is not None:
            _study_storages.move_to_end(key)
            return cached
    cached = _CachedStorage(storage_for(database_url))
    with _lock:
        cached = _study_storages.setdefault(key, cached)
        while len(_study_storages) > _STUDY_CACHE_SIZE:
            _study_storages.popitem(last=False)
    return cached


def dispose_storages() -> None:
    """Drop cached storages (after fork, or when a test switches databases)."""
    with _lock:
        for (pid, _url), storage in list(_storages.items()):
            if pid == os.getpid():
                storage.engine.dispose()
        _storages.clear()
        _study_storages.clear()
        _known_studies.clear()


def _clear_after_fork() -> None:
    # The parent's engines and caches are not the child's: start empty, build lazily.
    _storages.clear()
    _study_storages.clear()
    _known_studies.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clear_after_fork)


def _transient(exc: BaseException) -> bool:
    """A lock/serialization error worth retrying. Optuna's RDBStorage wraps SQLAlchemy
    errors of its own sessions in StorageInternalError; the cause tells."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OperationalError):
            text = str(seen).lower()
            return "locked" in text or "deadlock" in text or "could not serialize" in text
        seen = seen.__cause__
    return False


def retry_transient(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry on transient lock errors (SQLite "database is locked", PG deadlocks)."""
    return retry_if_busy(fn, attempts, 0.05, conflict=_transient)


def make_sampler(population: int, seed: int) -> Any:
    """NSGA-II with the given population; constraints come from Trial.set_constraint."""
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


def create_study(database_url: str, study_name: str, directions: Sequence[str]) -> None:
    """Create the search's study (idempotent: an existing study is kept)."""
    import optuna

    key = (os.getpid(), database_url, study_name)
    if key in _known_studies:
        return
    storage = storage_for(database_url)
    try:
        storage.get_study_id_from_name(study_name)  # one read: the usual case
    except KeyError:
        retry_transient(lambda: optuna.create_study(storage=storage, study_name=study_name,
                                           directions=list(directions),
                                           load_if_exists=True))
    _known_studies.add(key)


def load_study(database_url: str, study_name: str, population: int, seed: int) -> Any:
    """The study with an NSGA-II sampler, over this process's cached storage of it."""
    import optuna

    storage = _cached_storage(database_url, study_name)
    return retry_transient(lambda: optuna.load_study(study_name=study_name, storage=storage,
                                            sampler=make_sampler(population, seed)))
