"""app.db's PostgreSQL pool: a connection is pinged only after it sat idle, and a dead
one is replaced on checkout (issue 17: no ping round-trip on every unit of work)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

import app.db as db
from tests.support.workers import wait_for


def _pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_recently_used_connection_is_not_pinged_an_idle_one_is_and_a_dead_one_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.build_engine(pg_url, pool_size=1, max_overflow=0)
    pings: list[str] = []
    real_ping = engine.dialect.do_ping

    def counting_ping(dbapi_conn: Any) -> bool:
        try:
            alive = real_ping(dbapi_conn)
        except Exception:
            pings.append("raised")
            raise
        pings.append("alive" if alive else "dead")
        return alive

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        first = _pid(engine)  # a brand-new connection: not pinged
        assert _pid(engine) == first  # reused at once: not pinged either
        assert pings == []

        monkeypatch.setattr(db, "PING_IF_IDLE_S", 0.0)  # from now on every reuse is "idle"
        assert _pid(engine) == first and pings == ["alive"]

        with admin.connect() as conn:  # the server drops it, as on a restart
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            wait_for(lambda: conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": first}
            ).scalar_one() == 0, timeout=10, interval=0.02, what="the backend to exit")
        second = _pid(engine)  # the ping finds it dead; the pool connects anew
        assert second != first
        # the dead one's ping failed (False or an error); the new one (also "idle" with
        # a zero window) answered
        assert pings[1] in ("dead", "raised") and pings[-1] == "alive", pings
        assert _pid(engine) == second
    finally:
        admin.dispose()
        engine.dispose()


def test_explicit_pre_ping_is_left_to_sqlalchemy(pg_url: str) -> None:
    engine = db.build_engine(pg_url, pool_pre_ping=True)
    try:
        assert engine.pool._pre_ping is True
        assert _pid(engine) > 0
    finally:
        engine.dispose()
