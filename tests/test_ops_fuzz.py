"""The API fuzzed from its own OpenAPI document (schemathesis): whatever a client sends,
never a 500 — a 4xx problem+json naming what is wrong instead (API_CONTRACT: "Never a
500 for anything a client sent").

Every operation of GET /openapi.json gets generated requests (valid and invalid bodies,
query strings and path parameters), each sent twice: with an admin token (every handler
runs past authorization) and with a viewer token (writes must answer 403, reads the
same as admin). PostgreSQL is the backend: it is the stricter one (NUL bytes, lengths,
types), so input that only SQLite would swallow is caught too. The app is the real Flask
app in-process; the broker is the embedded one (jobs are queued, no worker runs them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from app.core.config import Settings
from tests.support.pipeline import seed_market

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

# Per operation and generation mode; FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 for a deeper hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") != "1"
# Generate, and shrink a failure to its simplest request; no example database.
FUZZ_PHASES = (Phase.explicit, Phase.generate, Phase.shrink)


@pytest.fixture(scope="module")
def fuzz_app(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Flask app on a fresh PostgreSQL database (FUZZ_BACKEND=sqlite: SQLite), with
    tokens and some market data."""
    from app import create_app
    from app.core.config import get_settings, load_settings
    from app.db import dispose_engines, transaction
    from app.services.auth import create_token

    sqlite = os.environ.get("FUZZ_BACKEND") == "sqlite"
    dbs = request.getfixturevalue("sqlite_dbs" if sqlite else "postgres_dbs")
    url = dbs.migrated()
    var = tmp_path_factory.mktemp("fuzz") / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLM_")}
    env.update(CLM_VAR_DIR=str(var), CLM_DATABASE_URL=url)
    fuzz_settings: Settings = load_settings(env)
    seed_market(fuzz_settings, bars=1500)
    app = create_app(fuzz_settings)
    with transaction(url) as session:
        app.config["FUZZ_TOKENS"] = {
            role: create_token(session, role=role, name=f"fuzz-{role}")
            for role in ("viewer", "admin")}
    yield app
    get_settings.cache_clear()
    dispose_engines()
    if not sqlite:
        dbs.drop(url)


def problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is application/problem+json with type/title/status/detail."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("Content-Type") or response.headers.get(
        "content-type") or ""
    if isinstance(content_type, list):
        content_type = content_type[0]
    assert "application/problem+json" in content_type, (response.status_code, content_type)
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code
    return True


def test_no_request_makes_the_api_answer_500(fuzz_app: Any) -> None:
    # schemathesis' pytest integration (`from_fixture`) does not run under pytest 9, so
    # each operation's Hypothesis strategy (valid and invalid requests) is driven here.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    tokens: dict[str, str] = fuzz_app.config["FUZZ_TOKENS"]
    checks: list[Callable[..., Any]] = [not_a_server_error, problem_json_errors]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the whole documented API, not a subset
    failures: dict[str, str] = {}
    calls = {"n": 0}
    for operation in operations:
        strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                    | operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                  suppress_health_check=list(HealthCheck), phases=FUZZ_PHASES)
        def fuzz(case: Any) -> None:
            for role in ("admin", "viewer"):
                calls["n"] += 1
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {tokens[role]}"}, checks=checks)

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # collect every failure, report all
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert calls["n"] >= len(operations) * 2


def test_nul_bytes_are_refused_before_reaching_the_database(fuzz_app: Any) -> None:
    """What the fuzzer found first: a NUL byte in a filter was a 500 on PostgreSQL."""
    client = fuzz_app.test_client()
    tokens: dict[str, str] = fuzz_app.config["FUZZ_TOKENS"]
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    r = client.get("/clm/regimes/champions?model_id=xgboost_a%00b_1h", headers=headers)
    assert r.status_code == 422 and r.get_json()["errors"][0]["field"] == "model_id"
    r = client.get("/clm/models/xgboost_a%00_1h/versions/v1", headers=headers)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = client.post("/clm/models", headers=headers, json={
        "model_type": "xgboost", "symbol": "BTCUSDT", "timeframe": "1h",
        "metrics": {"sharpe": 1.0}, "tags": {"note": "a\x00b"}})
    assert r.status_code == 422 and r.get_json()["errors"][0]["field"] == "tags.note"
    # Ordinary input still goes through.
    assert client.get("/clm/regimes/champions?model_id=xgboost_a_1h",
                      headers=headers).status_code == 200
