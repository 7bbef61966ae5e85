"""Real PostgreSQL / Redis for tests: fresh databases from a migrated template, per test.

With CLM_REQUIRE_SERVICES=1 (CI) a missing service fails the run; otherwise tests that
need it are skipped and the embedded-default tests still run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get(
    "CLM_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("CLM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def services_required() -> bool:
    return os.environ.get("CLM_REQUIRE_SERVICES", "") == "1"


def unavailable(service: str, why: object) -> None:
    message = f"{service} is not reachable ({why})"
    if services_required():
        pytest.fail(f"{message} and CLM_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def pg_url_for(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


class PostgresDatabases:
    """Throw-away databases from a migrated template, dropped at the end.

    Creating a database costs ~0.5-1 s; a released migrated database is emptied instead
    (every table truncated, identities restarted, other sessions ended) and handed out
    again, unless it is no longer exactly as migrated — another revision (migration
    tests), extra tables (Optuna's) — in which case it is dropped.
    """

    def __init__(self) -> None:
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_size=1)
        with self.admin.connect() as conn:
            conn.execute(text("SELECT 1"))
        self.created: list[str] = []
        self.template: str | None = None
        self._migrated: set[str] = set()  # handed out by migrated(): may be recycled
        self._pool: list[str] = []  # emptied, ready to hand out again
        self._shape: tuple[str, frozenset[str]] | None = None  # (revision, tables)

    def _create(self, name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return pg_url_for(name)

    def empty(self) -> str:
        return self._create(f"clm_t_{uuid.uuid4().hex[:12]}")

    def migrated(self) -> str:
        if self.template is None:
            from app import migrate

            name = f"clm_tpl_{uuid.uuid4().hex[:12]}"
            url = self._create(name)
            migrate.upgrade(url)
            self.template = name
            self._shape = self._read_shape(name)
        if self._pool:
            return pg_url_for(self._pool.pop())
        name = f"clm_t_{uuid.uuid4().hex[:12]}"
        self._migrated.add(name)
        return self._create(name, self.template)

    @staticmethod
    def _read_shape(name: str) -> tuple[str, frozenset[str]]:
        engine = create_engine(pg_url_for(name), isolation_level="AUTOCOMMIT", pool_size=1)
        try:
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM clm_alembic_version")
                                        ).scalar_one()
                tables = frozenset(conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        finally:
            engine.dispose()
        return revision, tables

    def _recycle(self, name: str) -> bool:
        """Empty a released database for reuse; False when it must be dropped instead."""
        if name not in self._migrated or self._shape is None:
            return False
        engine = create_engine(pg_url_for(name), isolation_level="AUTOCOMMIT", pool_size=1)
        try:
            with engine.connect() as conn:
                # As DROP ... WITH (FORCE) would: no session of the test survives.
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid()"))
                revision, tables = self._shape
                now = self._read_shape(name)
                if now != (revision, tables):
                    return False
            data = sorted(tables - {"clm_alembic_version"})
            # DELETE, not TRUNCATE: on a few rows it is several times faster (TRUNCATE
            # writes new files for every table). Foreign-key triggers are off for it
            # (replica role); sequences restart as in a fresh database.
            engine.dispose()
            engine = create_engine(pg_url_for(name), pool_size=1)  # one real transaction
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                for table in data:
                    conn.execute(text(f'DELETE FROM "{table}"'))
                conn.execute(text(
                    "SELECT setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relkind = 'S' "
                    "AND n.nspname = 'public'"))
            return True
        except Exception:
            return False
        finally:
            engine.dispose()

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        from app.db import dispose_engines

        dispose_engines()
        if name != self.template and self._recycle(name):
            self._pool.append(name)
            return
        self._migrated.discard(name)
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        from app.db import dispose_engines

        dispose_engines()
        self._migrated.clear()  # drop everything for real
        self._pool.clear()
        for name in [*self.created]:
            if name != self.template:
                self.drop(pg_url_for(name))
        if self.template:
            self.drop(pg_url_for(self.template))
        self.admin.dispose()


class SqliteDatabases:
    """Fresh SQLite files copied from one migrated template."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.template: Path | None = None

    def empty(self) -> str:
        return f"sqlite:///{self.root / f'e_{uuid.uuid4().hex[:8]}.db'}"

    def migrated(self) -> str:
        if self.template is None:
            from app import migrate

            self.template = self.root / "template.db"
            migrate.upgrade(f"sqlite:///{self.template}")
        target = self.root / f"t_{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"


def redis_url() -> Iterator[str]:
    """A Redis logical database for this test process, emptied before use."""
    import redis

    index = os.getpid() % 14 + 1
    url = f"{REDIS_BASE_URL}/{index}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.flushdb()
    except Exception as exc:  # pragma: no cover - depends on the machine
        unavailable("Redis", exc)
    yield url
    client.flushdb()
