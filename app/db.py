"""Database engine, sessions and the unit of work.

One engine per process (re-created after fork: SQLAlchemy connection pools must not be
shared across processes). Callers own the transaction with `transaction()`; services only
`flush()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import get_settings

T = TypeVar("T")
log = logging.getLogger(__name__)
_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let pysqlite not issue BEGIN itself; we issue BEGIN (IMMEDIATE) in `begin` below
        # so writers serialize up front instead of failing on lock upgrade.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def build_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with CLM's settings for the URL's dialect."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    ping_idle = not kwargs.get("pool_pre_ping", False)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_recycle", 1800)
    engine = create_engine(url, **kwargs)
    if ping_idle:
        _ping_when_idle(engine)
    return engine


# A pooled connection that was in use less than this long ago is handed out without a
# ping. SQLAlchemy's pool_pre_ping pings on every checkout: a round-trip per unit of work,
# two per authenticated request (token check + the view), ~20 % of a registry read's
# database time on a busy 2-core box (docs/BENCHMARKS.md, issue 17). A connection that sat
# idle longer (the server may have restarted or cut it meanwhile) is still pinged; one
# the server dropped within the window fails its first statement, and SQLAlchemy then
# invalidates the whole pool (the disconnect handling every engine has), so a restart
# costs the requests of at most that window, answered 503 like during the outage.
PING_IF_IDLE_S = 2.0
_RETURNED_AT = "clm_returned_at"


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()  # brand new: no ping needed

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is not None and time.monotonic() - returned < PING_IF_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out (connects) another.
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        if alive is False:
            raise DisconnectionError("pooled connection is dead")


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the configured database)."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = build_engine(url)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop every engine (call after fork and in tests that switch databases)."""
    with _lock:
        for (pid, _url), engine in list(_engines.items()):
            # close=False: the parent's connections must not be closed from the child.
            engine.dispose(close=pid == os.getpid())
        _engines.clear()
        _factories.clear()


_factories: dict[Engine, sessionmaker[Session]] = {}


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """The engine's session factory, made once: a `sessionmaker` builds a Session subclass,
    and a new class per unit of work re-resolves the ORM event dispatch each time (~0.3 ms
    of every request, issue 17)."""
    engine = get_engine(url)
    factory = _factories.get(engine)
    if factory is None:  # a race makes two equivalent factories: harmless
        factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
        _factories[engine] = factory
    return factory


_ON_COMMIT_KEY = "clm_on_commit"


def on_commit(session: Session, fn: Callable[[], Any], *, key: Any = None) -> None:
    """Run `fn()` after the transaction of `session` commits (the one way CLM acts after
    a commit: publishing task messages, kicking the outbox relay).

    Callbacks are kept on the session and run in order by `transaction()` once it
    committed; a rollback drops them, and so does the rollback of a savepoint they were
    registered in. `key` registers a callback at most once per transaction (one relay
    kick however many events were emitted). A failing callback is logged, never raised:
    the database already holds the truth and the reapers publish again whatever a
    callback could not.
    """
    pending: list[tuple[Any, Any, Callable[[], Any]]] = session.info.setdefault(
        _ON_COMMIT_KEY, [])
    if key is not None and any(k == key for k, _, _ in pending):
        return
    pending.append((key, session.get_nested_transaction(), fn))


def run_on_commit(session: Session) -> None:
    """Run (and clear) the callbacks registered on `session`; `transaction()` calls this
    after its commit. Code that commits a session itself must call it after commit."""
    pending = session.info.pop(_ON_COMMIT_KEY, [])
    for _key, _savepoint, fn in pending:
        try:
            fn()
        except Exception:  # the database is the truth; reapers publish again
            log.warning("after-commit callback %r failed", fn, exc_info=True)


def drop_on_commit(session: Session) -> None:
    """Forget the registered callbacks (the transaction rolled back)."""
    session.info.pop(_ON_COMMIT_KEY, None)


def _within(tx: Any, ancestor: Any) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: Any) -> None:
    # A savepoint rolled back: what was registered inside it never happened.
    pending = session.info.get(_ON_COMMIT_KEY)
    if pending:
        if not previous_transaction.nested:
            session.info.pop(_ON_COMMIT_KEY, None)
            return
        pending[:] = [p for p in pending
                      if p[1] is None or not _within(p[1], previous_transaction)]


@contextmanager
def transaction(url: str | None = None, *, immediate: bool = False,
                autocommit: bool = False) -> Iterator[Session]:
    """The unit of work: commit on success, roll back on error, always close; after the
    commit, run what was registered with `on_commit` (dropped on rollback).

    `immediate=True` takes SQLite's write lock at BEGIN, so read-then-write sequences
    (promote, claim a job) serialize across processes; on PostgreSQL, services lock the
    rows they change with SELECT ... FOR UPDATE instead.

    `autocommit=True` (PostgreSQL; ignored on SQLite): each statement commits on its own,
    no BEGIN/COMMIT round-trips — for a lookup that only rarely writes (the bearer-token
    check on every request), where atomicity across statements does not matter.
    """
    session = session_factory(url)()
    try:
        if autocommit and not is_sqlite(str(session.get_bind().url)):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        if immediate:
            # Starts the transaction now, with BEGIN IMMEDIATE on SQLite.
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        yield session
        session.commit()
    except BaseException:
        drop_on_commit(session)
        session.rollback()
        raise
    finally:
        session.close()
    run_on_commit(session)


@contextmanager
def read_transaction(url: str | None = None) -> Iterator[Session]:
    """A unit of work that only reads (GET views): on PostgreSQL its statements run in
    autocommit, without the BEGIN and COMMIT round-trips. Nothing is lost by it: at
    PostgreSQL's READ COMMITTED (CLM's level) every statement of a transaction takes its
    own snapshot anyway, so several reads see exactly what they would inside one."""
    with transaction(url, autocommit=True) as session:
        yield session


def is_sqlite_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY, including WAL's BUSY_SNAPSHOT).

    A deferred transaction that read, then writes after another connection committed,
    gets it at once — the busy timeout does not apply to a stale snapshot. The whole
    unit of work can simply run again (nothing was committed)."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "database is locked" in str(exc).lower()


def retry_if_busy(
    fn: Callable[[], T],
    attempts: int = 4,
    delay_s: float = 0.02,
    *,
    conflict: Callable[[BaseException], bool] = is_sqlite_busy,
    max_delay_s: float = 1.0,
) -> T:
    """Run `fn` (one or more whole transactions) again when it failed on a lock
    conflict (`conflict(exc)`; default: SQLite's "database is locked"), backing off
    exponentially; any other error, or the last conflict, propagates."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not conflict(exc):
                raise
            log.info("lock conflict (%s); retrying", exc)
            time.sleep(min(delay_s * 2**attempt, max_delay_s))
    raise AssertionError("unreachable")


def ping(url: str | None = None) -> bool:
    """True when the database answers a trivial query."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def register_fork_safety() -> None:
    """Dispose inherited engines in forked children (multiprocessing, Celery prefork)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_dispose_in_child)


def _dispose_in_child() -> None:
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()
    _factories.clear()


register_fork_safety()
