"""Issue 19, findings 3-6: /openapi.json resolves and validates, says what the service
does (400/413/414, /metrics' content type), every 4xx is problem+json (404, 405, 414
included), body fields are strictly typed, and schemathesis with every check passes
over the whole API (the checks left out are listed below, with why).

In-process against the WSGI app on SQLite (fast); tests/test_ops_fuzz.py fuzzes on
PostgreSQL for 500s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from app.core.config import load_settings
from tests.support.pipeline import seed_market

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def api(sqlite_dbs: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    root = tmp_path_factory.mktemp("openapi")
    s = load_settings({
        "CLM_DATABASE_URL": sqlite_dbs.migrated(), "CLM_VAR_DIR": str(root / "var"),
        "CLM_DATA_DIR": str(root / "var" / "data"),
        "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0"})
    seed_market(s, bars=600)
    app = create_app(s)
    with transaction(s.database_url) as session:
        app.config["TOKEN"] = create_token(session, role="admin", name="openapi")
    yield app


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_ref_resolves_and_the_document_validates(api: Any) -> None:
    doc = api.test_client().get("/openapi.json").get_json()
    refs = set(_refs(doc))
    assert refs and all(r.startswith("#/components/schemas/") for r in refs), refs
    missing = {r for r in refs if r.split("/")[-1] not in doc["components"]["schemas"]}
    assert not missing, missing
    validate(doc)  # openapi-spec-validator: raises on any violation of OpenAPI 3.1


def test_the_document_says_what_the_service_does(api: Any) -> None:
    doc = api.test_client().get("/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "414" in op["responses"], (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    r = api.test_client().get("/metrics")
    assert r.mimetype == "text/plain" and "version=0.0.4" in r.headers["Content-Type"]


def test_every_4xx_is_problem_json(api: Any) -> None:
    client = api.test_client()
    headers = {"Authorization": f"Bearer {api.config['TOKEN']}"}
    answers = {
        404: client.get("/no/such/route"),
        405: client.delete("/health"),
        414: client.get("/clm/models?model_id=" + "x" * 9000, headers=headers),
        400: client.post("/clm/tracked", data="{", headers=headers,
                         content_type="application/json"),
    }
    for status, r in answers.items():
        assert r.status_code == status and r.mimetype == "application/problem+json", (
            status, r.status_code, r.data[:200])
        assert r.get_json()["status"] == status
    assert answers[414].get_json()["errors"][0]["field"] == "url"


@pytest.mark.parametrize("field,value", [
    ("degraded_sharpe", False), ("degraded_sharpe", "1.5"), ("interval_hours", True),
    ("min_trades", 2.5), ("min_trades", True), ("symbol", 12),
])
def test_body_fields_are_strictly_typed(api: Any, field: str, value: Any) -> None:
    client = api.test_client()
    headers = {"Authorization": f"Bearer {api.config['TOKEN']}"}
    body = {"model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h", field: value}
    r = client.post("/clm/tracked", json=body, headers=headers)
    assert r.status_code == 422, r.get_json()
    assert [e["field"] for e in r.get_json()["errors"]] == [field]


def test_numbers_still_accept_integers(api: Any) -> None:
    client = api.test_client()
    headers = {"Authorization": f"Bearer {api.config['TOKEN']}"}
    r = client.post("/clm/tracked", headers=headers, json={
        "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
        "degraded_sharpe": 0, "interval_hours": 24})
    assert r.status_code in (200, 201), r.get_json()
    assert client.delete("/clm/tracked/xgboost_planted_1h", headers=headers).status_code < 300


EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "8"))
# Every check schemathesis has, except (and why):
LEFT_OUT = {
    # Semantic refusals of schema-valid input are the service's job and are 4xx
    # problem+json naming the field: "no market data for SYMBOL", "more days than are
    # stored", a `cursor` of the documented shape (pattern) that the API never issued,
    # trainer-specific `params`, an unknown id in the body (e.g. promote a version that
    # does not exist). A schema cannot state which symbols have data or which cursors
    # were issued.
    "positive_data_acceptance",
    # Generated resources do not exist between calls: stateful links are not declared.
    "use_after_free", "ensure_resource_availability",
    # One token (admin) is used: authorization per role is tests/test_ops_fuzz.py's
    # (viewer vs admin) and tests/test_api_registry.py's subject.
    "ignored_auth", "object_level_authorization",
}


def test_schemathesis_all_checks(api: Any) -> None:
    import schemathesis.specs.openapi.checks
    from schemathesis.checks import CHECKS

    every = {c.__name__: c for c in CHECKS.get_all()}
    checks = [c for name, c in every.items() if name not in LEFT_OUT]
    assert set(every) >= LEFT_OUT, LEFT_OUT - set(every)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", api)
    headers = {"Authorization": f"Bearer {api.config['TOKEN']}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                    | operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck),
                  phases=(Phase.explicit, Phase.generate))
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1200]}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
