"""SQLite's stale-snapshot conflict, for real: a deferred transaction reads, another
connection commits, the first one's write fails at once with "database is locked" (the
busy timeout does not help); `retry_if_busy` runs the unit of work again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import dispose_engines, is_sqlite_busy, retry_if_busy, transaction


@pytest.fixture()
def url(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    with transaction(url) as session:
        session.execute(text("CREATE TABLE t (v INTEGER)"))
    yield url
    dispose_engines()


def _read_then_write(url: str, attempts: list[int], interfere_times: int) -> None:
    with transaction(url) as session:
        session.execute(text("SELECT count(*) FROM t")).scalar()  # the snapshot starts
        if len(attempts) < interfere_times:
            with transaction(url) as other:  # another writer commits meanwhile
                other.execute(text("INSERT INTO t VALUES (1)"))
        attempts.append(1)
        session.execute(text("INSERT INTO t VALUES (2)"))


def _values(url: str) -> list[int]:
    with transaction(url) as session:
        return list(session.execute(text("SELECT v FROM t ORDER BY rowid")).scalars())


def test_a_stale_snapshot_write_fails_at_once_and_is_retried(url: str) -> None:
    attempts: list[int] = []
    with pytest.raises(OperationalError) as failed:
        _read_then_write(url, attempts, interfere_times=1)
    assert is_sqlite_busy(failed.value)
    assert _values(url) == [1]  # the failed unit of work left nothing behind

    attempts.clear()
    retry_if_busy(lambda: _read_then_write(url, attempts, interfere_times=1))
    assert len(attempts) == 2 and _values(url) == [1, 1, 2]


def test_retry_gives_up_and_leaves_other_errors_alone(url: str) -> None:
    attempts: list[int] = []
    with pytest.raises(OperationalError):
        retry_if_busy(lambda: _read_then_write(url, attempts, interfere_times=99),
                      attempts=3)
    assert len(attempts) == 3
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        with transaction(url) as session:
            session.execute(text("SELECT nope FROM t"))

    with pytest.raises(OperationalError):
        retry_if_busy(broken)
    assert calls == [1]  # not a lock conflict: not retried
