"""The foundation: settings parsing, migrations round trip on both databases, health."""

from __future__ import annotations

import pytest

from app import migrate
from app.core.config import ConfigError, load_settings


def test_empty_variables_count_as_unset(tmp_path):
    settings = load_settings({"CLM_DATABASE_URL": "", "CLM_VAR_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'clm.db'}"
    assert settings.broker_url == "filesystem://"


def test_plain_postgres_url_uses_psycopg3():
    settings = load_settings({"CLM_DATABASE_URL": "postgresql://u@h/db"})
    assert settings.database_url == "postgresql+psycopg://u@h/db"


def test_bad_setting_names_the_variable():
    with pytest.raises(ConfigError, match="CLM_JOB_MAX_ATTEMPTS"):
        load_settings({"CLM_JOB_MAX_ATTEMPTS": "many"})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_round_trip_and_match_models(backend, request):
    dbs = request.getfixturevalue("sqlite_dbs" if backend == "sqlite" else "postgres_dbs")
    url = dbs.empty()
    assert len(migrate.heads(url)) == 1, "exactly one migration head"
    migrate.upgrade(url)
    migrate.check(url)  # raises if models and migrations disagree
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    migrate.check(url)
    assert migrate.current_revision(url) == migrate.heads(url)[0]
    if backend == "postgresql":
        dbs.drop(url)


def test_app_refuses_database_behind_head(sqlite_dbs, make_settings):
    from app import create_app

    settings = make_settings(sqlite_dbs.empty())
    with pytest.raises(migrate.DatabaseNotAtHead, match="clm db upgrade"):
        create_app(settings)


def test_health_reports_database_and_broker(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"]["reachable"] is True
    assert body["broker"]["reachable"] is True


def test_health_is_problem_when_database_is_down(make_settings, tmp_path):
    from app import create_app

    settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    response = create_app(settings, check_schema=False).test_client().get("/health")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["database"]["reachable"] is False
