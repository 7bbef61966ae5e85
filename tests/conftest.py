"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, the Flask app, tokens."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Keep native thread pools small: tests share 2 cores with worker processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CLM_LOG_JSON", "0")

from app.core.config import Settings, get_settings, load_settings
from app.db import dispose_engines
from tests.support.services import (
    PostgresDatabases,
    SqliteDatabases,
    redis_url,
    unavailable,
)


@pytest.fixture(scope="session")
def postgres_dbs() -> Iterator[PostgresDatabases]:
    try:
        dbs = PostgresDatabases()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    yield dbs
    dbs.close()


@pytest.fixture(scope="session")
def sqlite_dbs(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database on each backend (the suite runs against both)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_dbs").migrated()
    else:
        dbs: PostgresDatabases = request.getfixturevalue("postgres_dbs")
        url = dbs.migrated()
        yield url
        dbs.drop(url)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3-compatible server (moto in server mode, tests/support/objectstore.py)."""
    try:
        from tests.support.objectstore import MotoServer

        server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    except Exception as exc:
        unavailable("an S3 test server (moto[server])", exc)
    yield server
    server.close()


@pytest.fixture
def s3_bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on `s3_server`, with the (fake) AWS_* variables exported so this
    process and the workers it starts reach it. `.env()` gives the CLM_* roots."""
    from tests.support.objectstore import TEST_ENV, new_bucket

    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    return new_bucket(s3_server)


@pytest.fixture
def pg_url(postgres_dbs: PostgresDatabases) -> Iterator[str]:
    url = postgres_dbs.migrated()
    yield url
    postgres_dbs.drop(url)


@pytest.fixture
def sqlite_url(sqlite_dbs: SqliteDatabases) -> str:
    return sqlite_dbs.migrated()


@pytest.fixture
def redis_broker_url() -> Iterator[str]:
    yield from redis_url()


@pytest.fixture
def make_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    """Point every CLM_* path at tmp_path, set the given variables, return fresh Settings.

    The variables are also exported (monkeypatch), so subprocesses (workers, the CLI)
    started by the test see the same configuration.
    """

    def build(database_url: str, **env: Any) -> Settings:
        values = {
            "CLM_VAR_DIR": str(tmp_path / "var"),
            "CLM_DATABASE_URL": database_url,
            "CLM_DATA_DIR": str(tmp_path / "var" / "data"),
            "CLM_ARTIFACT_ROOT": str(tmp_path / "var" / "artifacts"),
            **{k: str(v) for k, v in env.items()},
        }
        for key in list(os.environ):
            if key.startswith("CLM_") and key not in values and key not in _KEEP:
                monkeypatch.delenv(key, raising=False)
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        dispose_engines()
        return load_settings()

    yield build
    get_settings.cache_clear()
    dispose_engines()


# Variables that describe the test run itself, not the system under test.
_KEEP = {"CLM_REQUIRE_SERVICES", "CLM_LOG_JSON", "CLM_TEST_PG_ADMIN_URL", "CLM_TEST_REDIS_URL"}


@pytest.fixture
def settings(db_url: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def app(settings: Settings) -> Any:
    from app import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    """A raw bearer token per role."""
    from app.db import transaction
    from app.services.auth import create_token

    with transaction(settings.database_url) as session:
        return {
            role: create_token(session, role=role, name=f"test-{role}")
            for role in ("viewer", "operator", "admin")
        }


@pytest.fixture
def auth(tokens: dict[str, str]) -> Callable[[str], dict[str, str]]:
    """auth("admin") -> headers with that role's bearer token."""
    return lambda role: {"Authorization": f"Bearer {tokens[role]}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_api(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """(client, auth) over one app and database per backend for a whole module.

    Only for tests whose requests must all be refused (bad input, unknown ids, missing
    tokens): nothing they send changes what the next test sees, so they need not pay for
    a fresh database each (PostgreSQL: ~0.5-1 s per database).
    """
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    dbs: Any = request.getfixturevalue(
        "sqlite_dbs" if request.param == "sqlite" else "postgres_dbs")
    url = dbs.migrated()
    root = tmp_path_factory.mktemp("shared-api")
    settings = load_settings({
        "CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var"),
        "CLM_DATA_DIR": str(root / "var" / "data"),
        "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0",
    })
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    with transaction(url) as session:
        raw = {role: create_token(session, role=role, name=f"shared-{role}")
               for role in ("viewer", "operator", "admin")}
    yield flask_app.test_client(), lambda role: {"Authorization": f"Bearer {raw[role]}"}
    if request.param == "postgresql":
        dbs.drop(url)
