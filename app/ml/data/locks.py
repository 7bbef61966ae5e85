"""Merge locks of the market data store: one writer per series at a time, across hosts.

Owns `SeriesLock` (what `MarketDataStore.merge` holds around its read-modify-write),
`FileSeriesLock` (fcntl on a lock file: every process that shares the folder, i.e. one
machine or one shared volume) and `DatabaseSeriesLock` (for a store in S3, which has no
lock of its own: a PostgreSQL transaction-level advisory lock keyed by a hash of the
store, symbol and timeframe, so every host that shares the registry serializes on it;
on SQLite, which means a single machine, a file lock next to the database).

Why the database: every process of a distributed CLM already holds its URL; an
advisory lock needs no table, and is released by PostgreSQL itself when the holder's
connection ends (a killed worker never leaves a series locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from app.core.errors import Conflict

__all__ = ["DatabaseSeriesLock", "FileSeriesLock", "SeriesLock", "advisory_key"]


class SeriesLock(Protocol):
    """`with lock(symbol, timeframe):` — the holder is the only writer of that series."""

    def __call__(self, symbol: str, timeframe: str) -> contextlib.AbstractContextManager[None]:
        ...


@contextlib.contextmanager
def _flock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # The lock file is never deleted: unlinking it would let two processes hold locks
    # on different inodes of "the same" file.
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class FileSeriesLock:
    """fcntl lock on `<folder>/SYMBOL/.<timeframe>.lock` (the local store's own layout)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __call__(self, symbol: str, timeframe: str) -> contextlib.AbstractContextManager[None]:
        return _flock(self.folder / symbol / f".{timeframe}.lock")


def advisory_key(store_url: str, symbol: str, timeframe: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock: the first 8 bytes of a sha256 of
    what the lock protects (the store is part of it, so two stores never contend)."""
    digest = hashlib.sha256(f"clm.market-data\0{store_url}\0{symbol}\0{timeframe}".encode())
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


class DatabaseSeriesLock:
    """The registry database as the lock service of a remote store.

    PostgreSQL: `pg_advisory_xact_lock` in a transaction of its own, held for the merge
    and released by its commit (or by the server when the connection dies); waits at
    most `timeout_s`, then `Conflict`. SQLite: a file lock under `lock_dir` (SQLite means
    one machine; holding SQLite's write lock for a merge would stall every other write).
    """

    def __init__(self, database_url: str, store_url: str, lock_dir: Path,
                 timeout_s: float = 300.0) -> None:
        self.database_url = database_url
        self.store_url = store_url
        self.lock_dir = Path(lock_dir)
        self.timeout_s = timeout_s

    def __call__(self, symbol: str, timeframe: str) -> contextlib.AbstractContextManager[None]:
        key = advisory_key(self.store_url, symbol, timeframe)
        if self.database_url.startswith("sqlite"):
            return _flock(self.lock_dir / f"series-{key & (2**64 - 1):016x}.lock")
        return self._advisory(key, symbol, timeframe)

    @contextlib.contextmanager
    def _advisory(self, key: int, symbol: str, timeframe: str) -> Iterator[None]:
        # lazy: the store is imported by commands that must not load SQLAlchemy
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        from app.db import get_engine

        engine = get_engine(self.database_url)
        with engine.connect() as conn, conn.begin():
            # lock_timeout bounds the wait for any lock, advisory ones included.
            conn.execute(text(f"SET LOCAL lock_timeout = '{int(self.timeout_s * 1000)}ms'"))
            try:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                    raise Conflict(
                        f"another process has been merging into {symbol} {timeframe} for "
                        f"over {self.timeout_s:.0f}s; retry later",
                        symbol=symbol, timeframe=timeframe) from None
                raise
            yield  # the commit on leaving the block releases the lock
