"""The registry over HTTP on SQLite and PostgreSQL: every endpoint's happy path, bad
input (422 naming the field), unknown ids (404), lifecycle conflicts (409), auth
(401/403), problem+json on every error, pagination and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import transaction
from app.services import registry

MODEL = "xgboost_btcusdt_1h"
METRICS = {
    "sharpe": 1.4,
    "win_rate": 0.55,
    "profit_factor": 1.6,
    "max_drawdown": 0.12,
    "trades": 75,
    "total_return": 0.25,
}
PROBLEM = "application/problem+json"


def body(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model_type": "xgboost",
        "symbol": "btcusdt",
        "timeframe": "1h",
        "metrics": METRICS,
    }
    data.update(overrides)
    return data


def register(client, auth, **overrides: Any) -> dict[str, Any]:
    response = client.post("/clm/models", json=body(**overrides), headers=auth("operator"))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def promote(client, auth, version: str, **extra: Any):
    payload = {"model_id": MODEL, "version": version, "promoted_by": "alice",
               "reason": "looks good", **extra}
    return client.post("/clm/promote", json=payload, headers=auth("admin"))


def rollback(client, auth, **extra: Any):
    payload = {"model_id": MODEL, "rollback_by": "bob", "reason": "regression", **extra}
    return client.post("/clm/rollback", json=payload, headers=auth("admin"))


def problem(response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    doc = response.get_json()
    assert doc["status"] == status and doc["title"] and doc["detail"]
    if field is not None:
        assert field in [e["field"] for e in doc["errors"]], doc
    return doc


# ---------------------------------------------------------------------------- register / read


def test_register_then_read_one_version_with_history(client, auth):
    response = client.post(
        "/clm/models",
        json=body(tags={"team": "quant"}, notes="from notebook", status="shadow",
                  params={"max_depth": 4}),
        headers=auth("operator"),
    )
    assert response.status_code == 201
    created = response.get_json()
    assert created["model_id"] == MODEL and created["status"] == "shadow"
    assert created["symbol"] == "BTCUSDT"
    assert created["created_by"] == "token:test-operator"
    assert 0 < created["metrics"]["promotion_score"] <= 100
    location = response.headers["Location"]
    assert location == f"/clm/models/{MODEL}/versions/{created['version']}"

    one = client.get(location, headers=auth("viewer"))
    assert one.status_code == 200
    doc = one.get_json()
    for key in ("model_id", "version", "model_type", "symbol", "timeframe", "status", "regime",
                "metrics", "params", "tags", "notes", "artifact", "lineage", "evaluation",
                "job_id", "created_at", "updated_at", "created_by", "history"):
        assert key in doc, key
    assert doc["params"] == {"max_depth": 4} and doc["tags"] == {"team": "quant"}
    assert doc["history"] == [
        {"from_status": None, "to_status": "shadow", "at": doc["created_at"],
         "actor": "token:test-operator", "reason": "registered"}
    ]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(bogus=1), "bogus"),
        ({k: v for k, v in body().items() if k != "metrics"}, "metrics"),
        (body(metrics={**METRICS, "win_rate": 1.2}), "metrics.win_rate"),
        (body(metrics={**METRICS, "max_drawdown": 2}), "metrics.max_drawdown"),
        (body(metrics={**METRICS, "trades": 10.5}), "metrics.trades"),
        (body(metrics={**METRICS, "trades": -1}), "metrics.trades"),
        (body(metrics={**METRICS, "trades": 10**23}), "metrics.trades"),
        (body(metrics={**METRICS, "sharpe": "1.2"}), "metrics.sharpe"),
        (body(metrics={**METRICS, "extra": [1]}), "metrics.extra"),
        (body(model_type="XGBOOST"), "model_type"),
        (body(timeframe="2h"), "timeframe"),
        (body(symbol="btc usdt"), "symbol"),
        (body(status="production"), "status"),
        (body(tags={"k": 5}), "tags.k"),
        (body(regime="Not Valid"), "regime"),
        (body(artifact={"uri": "file:///m", "sha256": "0" * 64, "format": "x", "size": 1}),
         "artifact.size"),
        (body(notes="nul\x00"), "notes"),
    ],
)
def test_register_rejects_bad_bodies_naming_the_field(shared_api, payload, field):
    client, auth = shared_api
    problem(client.post("/clm/models", json=payload, headers=auth("operator")), 422, field)


def test_register_rejects_non_json_and_non_finite_numbers(client, auth):
    headers = {**auth("operator"), "Content-Type": "application/json"}
    problem(client.post("/clm/models", data="{not json", headers=headers), 400)
    problem(client.post("/clm/models", data="[1, 2]", headers=headers), 422, "body")
    nan_body = (
        '{"model_type": "xgboost", "symbol": "BTCUSDT", "timeframe": "1h",'
        ' "metrics": {"sharpe": NaN}}'
    )
    problem(client.post("/clm/models", data=nan_body, headers=headers), 422, "metrics.sharpe")
    # NaN inside free-form params cannot be stored as JSON: it becomes null instead.
    params_nan = nan_body.replace('{"sharpe": NaN}', '{"sharpe": 1}').replace(
        '"timeframe"', '"params": {"x": Infinity}, "timeframe"'
    )
    response = client.post("/clm/models", data=params_nan, headers=headers)
    assert response.status_code == 201 and response.get_json()["params"] == {"x": None}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", f"/clm/models/{MODEL}/versions/v20000101_000000_001"),
        ("get", "/clm/models/not-a-model/versions/v1"),
        ("get", "/clm/models/xgboost_btcusdt_1h/versions/bad%00version"),
        ("get", "/clm/models/bad%00model/versions/v1"),
        ("patch", f"/clm/models/{MODEL}/versions/v20000101_000000_001"),
        ("delete", f"/clm/models/{MODEL}/versions/v20000101_000000_001"),
        ("delete", "/clm/models/%F0%9F%92%A5/versions/v1"),
        ("get", "/clm/models/lightgbm_nothing_1d/production"),
        ("get", "/clm/models/garbage%00/production"),
    ],
)
def test_unknown_or_impossible_ids_are_404(shared_api, method, path):
    client, auth = shared_api
    kwargs = {"json": {"notes": "x"}} if method == "patch" else {}
    problem(getattr(client, method)(path, headers=auth("admin"), **kwargs), 404)


# ---------------------------------------------------------------------------- lifecycle


def test_promote_rollback_and_audit(client, auth):
    v1 = register(client, auth)["version"]
    v2 = register(client, auth)["version"]

    first = promote(client, auth, v1)
    assert first.status_code == 200
    doc = first.get_json()
    assert set(doc) == {"model_id", "production", "retired", "noop"}
    assert doc["production"]["version"] == v1 and doc["retired"] is None and not doc["noop"]

    second = promote(client, auth, v2).get_json()
    assert second["production"]["status"] == "production"
    assert second["retired"]["version"] == v1 and second["retired"]["status"] == "retired"

    noop = promote(client, auth, v2)
    assert noop.status_code == 200 and noop.get_json()["noop"] is True

    back = rollback(client, auth)
    assert back.status_code == 200
    assert back.get_json()["production"]["version"] == v1
    assert back.get_json()["retired"]["version"] == v2

    named = rollback(client, auth, target_version=v2)
    assert named.get_json()["production"]["version"] == v2

    audit = client.get(f"/clm/audit?model_id={MODEL}", headers=auth("viewer")).get_json()
    actions = [(e["action"], e["version"], e["actor"]) for e in audit["items"]]
    assert actions == [
        ("version.rolled_back", v2, "bob"),
        ("version.rolled_back", v1, "bob"),
        ("version.promoted", v2, "alice"),
        ("version.promoted", v1, "alice"),
    ]
    newest = audit["items"][0]
    assert newest["reason"] == "regression" and newest["at"].endswith("Z")
    # The body names the person; the token that made the call is recorded too.
    assert newest["details"]["token"] == "test-admin"

    filtered = client.get("/clm/audit?action=version.promoted&actor=alice",
                          headers=auth("viewer")).get_json()
    assert [e["version"] for e in filtered["items"]] == [v2, v1]
    none = client.get("/clm/audit?since=2999-01-01T00:00:00Z", headers=auth("viewer"))
    assert none.get_json() == {"items": [], "next_cursor": None}
    until = client.get("/clm/audit?until=2000-01-01", headers=auth("viewer")).get_json()
    assert until["items"] == []


def test_lifecycle_conflicts_are_409(client, auth, settings):
    with transaction(settings.database_url, immediate=True) as session:
        training = registry.register_version(
            session, model_type="xgboost", symbol="BTCUSDT", timeframe="1h", metrics={},
            status="training", actor="pipeline",
        )["version"]
        failed = registry.register_version(
            session, model_type="xgboost", symbol="BTCUSDT", timeframe="1h", metrics={},
            status="failed", actor="pipeline",
        )["version"]
    v1 = register(client, auth)["version"]

    problem(rollback(client, auth), 409)  # nothing in production yet
    problem(promote(client, auth, training), 409)
    problem(promote(client, auth, failed), 409)
    assert promote(client, auth, v1).status_code == 200
    problem(rollback(client, auth), 409)  # no previous production version
    problem(client.delete(f"/clm/models/{MODEL}/versions/{v1}", headers=auth("admin")), 409)
    problem(rollback(client, auth, target_version=failed), 409)

    forced = promote(client, auth, failed, force=True)
    assert forced.status_code == 200
    entry = client.get("/clm/audit?action=version.promoted", headers=auth("viewer")).get_json()
    assert entry["items"][0]["details"]["force"] is True
    assert entry["items"][0]["details"]["from_status"] == "failed"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/clm/promote", {"model_id": MODEL, "version": "v1", "promoted_by": "a"}, "reason"),
        ("/clm/promote", {"model_id": MODEL, "version": "v1", "reason": "r"}, "promoted_by"),
        ("/clm/promote", {"model_id": MODEL, "version": "v1", "promoted_by": "a", "reason": "r",
                          "force": "yes"}, "force"),
        ("/clm/promote", {"model_id": MODEL, "version": "v1", "promoted_by": "a", "reason": "r",
                          "extra": 1}, "extra"),
        ("/clm/promote", {"model_id": "BAD ID", "version": "v1", "promoted_by": "a",
                          "reason": "r"}, "model_id"),
        ("/clm/rollback", {"model_id": MODEL, "reason": "r"}, "rollback_by"),
        ("/clm/rollback", {"model_id": MODEL, "rollback_by": "b", "reason": ""}, "reason"),
        ("/clm/rollback", {"model_id": MODEL, "rollback_by": "b", "reason": "r",
                           "target_version": "../etc"}, "target_version"),
    ],
)
def test_promote_and_rollback_bodies_are_validated(shared_api, path, payload, field):
    client, auth = shared_api
    problem(client.post(path, json=payload, headers=auth("admin")), 422, field)


def test_promote_unknown_version_is_404(client, auth):
    register(client, auth)
    problem(promote(client, auth, "v20000101_000000_001"), 404)
    problem(rollback(client, auth, model_id="xgboost_nothing_1h"), 404)


# ---------------------------------------------------------------------------- patch / delete


def test_patch_merges_tags_and_replaces_notes(client, auth):
    v = register(client, auth, tags={"a": "1", "b": "2"}, notes="old")["version"]
    url = f"/clm/models/{MODEL}/versions/{v}"
    response = client.patch(url, json={"tags": {"b": None, "c": "3"}}, headers=auth("operator"))
    assert response.status_code == 200
    assert response.get_json()["tags"] == {"a": "1", "c": "3"}
    assert response.get_json()["notes"] == "old"
    cleared = client.patch(url, json={"notes": None}, headers=auth("operator")).get_json()
    assert cleared["notes"] is None and cleared["tags"] == {"a": "1", "c": "3"}

    problem(client.patch(url, json={}, headers=auth("operator")), 422, "body")
    problem(client.patch(url, json={"status": "production"}, headers=auth("operator")), 422,
            "status")
    problem(client.patch(url, json={"tags": {"x": 1}}, headers=auth("operator")), 422, "tags.x")


def test_delete_version(client, auth):
    v = register(client, auth)["version"]
    url = f"/clm/models/{MODEL}/versions/{v}"
    response = client.delete(url + "?reason=duplicate", headers=auth("admin"))
    assert response.status_code == 200
    assert response.get_json() == {"model_id": MODEL, "version": v, "deleted": True,
                                   "previous_status": "candidate"}
    problem(client.get(url, headers=auth("viewer")), 404)
    entry = client.get("/clm/audit?action=version.deleted", headers=auth("viewer")).get_json()
    assert entry["items"][0]["reason"] == "duplicate"
    assert entry["items"][0]["actor"] == "token:test-admin"


# ---------------------------------------------------------------------------- lists


def test_list_pages_walk_everything_once(client, auth):
    made = [register(client, auth)["version"] for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/clm/models?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth("viewer")).get_json()
        assert len(page["items"]) <= 3
        seen += [item["version"] for item in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))  # newest first, no duplicates, nothing skipped

    problem(client.get("/clm/models?cursor=garbage!", headers=auth("viewer")), 422, "cursor")
    problem(client.get("/clm/models?cursor=eyJrIjogIngifQ", headers=auth("viewer")), 422,
            "cursor")
    problem(client.get("/clm/models?limit=0", headers=auth("viewer")), 422, "limit")
    problem(client.get("/clm/models?limit=501", headers=auth("viewer")), 422, "limit")


def test_list_filters(client, auth):
    low = register(client, auth, metrics={**METRICS, "sharpe": 0.2})
    high = register(client, auth, symbol="ETHUSDT", timeframe="4h", status="shadow")
    promote(client, auth, low["version"])

    def versions(query: str) -> list[str]:
        response = client.get(f"/clm/models?{query}", headers=auth("viewer"))
        assert response.status_code == 200, response.get_json()
        return [i["version"] for i in response.get_json()["items"]]

    assert versions("status=production") == [low["version"]]
    assert versions("status=shadow&timeframe=4h&symbol=ethusdt") == [high["version"]]
    assert versions("min_sharpe=1") == [high["version"]]
    assert versions(f"model_id={MODEL}") == [low["version"]]
    assert versions("model_type=lightgbm") == []
    assert versions("created_after=2000-01-01T00:00:00Z&created_before=2999-01-01") == [
        high["version"], low["version"]
    ]
    assert versions("created_after=2999-01-01T00:00:00%2B05:00") == []
    for bad, field in (("status=live", "status"), ("min_sharpe=nan", "min_sharpe"),
                       ("created_after=yesterday", "created_after"),
                       ("created_before=9999-12-31T23:59:59-05:00", "created_before"),
                       ("timeframe=2h", "timeframe"), ("symbol=a b", "symbol")):
        problem(client.get(f"/clm/models?{bad}", headers=auth("viewer")), 422, field)


def test_audit_pages_and_validates(client, auth):
    v = register(client, auth)["version"]
    for _ in range(3):
        client.patch(f"/clm/models/{MODEL}/versions/{v}", json={"notes": "n"},
                     headers=auth("operator"))
    ids: list[int] = []
    cursor = None
    while True:
        url = "/clm/audit?limit=2&action=version.updated" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth("viewer")).get_json()
        ids += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    problem(client.get("/clm/audit?since=soon", headers=auth("viewer")), 422, "since")


# ---------------------------------------------------------------------------- status / production


def test_status_counts_versions(client, auth):
    v = register(client, auth)["version"]
    register(client, auth, status="shadow")
    promote(client, auth, v)
    doc = client.get("/clm/status", headers=auth("viewer")).get_json()
    assert doc["versions"] == {"training": 0, "shadow": 1, "candidate": 0, "production": 1,
                               "retired": 0, "failed": 0}
    assert doc["models"] == {"total": 1, "with_production": 1}
    assert set(doc["jobs"]) == {"queued", "running", "succeeded", "failed"}
    assert set(doc["queues"]) >= {"data", "train", "evaluate", "default"}
    assert "scheduler" in doc


def test_production_endpoint_answers_at_a_time(client, auth):
    v1 = register(client, auth)["version"]
    v2 = register(client, auth)["version"]
    url = f"/clm/models/{MODEL}/production"
    empty = client.get(url, headers=auth("viewer")).get_json()
    assert empty["version"] is None and empty["model_id"] == MODEL
    promote(client, auth, v1)
    since = client.get(url, headers=auth("viewer")).get_json()["since"]
    promote(client, auth, v2, promoted_by="carol", reason="newer")

    now = client.get(url, headers=auth("viewer")).get_json()
    assert (now["version"], now["actor"], now["reason"]) == (v2, "carol", "newer")
    then = client.get(f"{url}?at={since}", headers=auth("viewer")).get_json()
    assert (then["version"], then["actor"], then["reason"]) == (v1, "alice", "looks good")
    before = client.get(f"{url}?at=2000-01-01T00:00:00Z", headers=auth("viewer")).get_json()
    assert before["version"] is None and before["at"] == "2000-01-01T00:00:00Z"
    problem(client.get(f"{url}?at=later", headers=auth("viewer")), 422, "at")


# ---------------------------------------------------------------------------- auth / openapi

ROUTES = [
    ("get", "/clm/models", "viewer"),
    ("post", "/clm/models", "operator"),
    ("get", f"/clm/models/{MODEL}/versions/v1", "viewer"),
    ("patch", f"/clm/models/{MODEL}/versions/v1", "operator"),
    ("delete", f"/clm/models/{MODEL}/versions/v1", "admin"),
    ("get", f"/clm/models/{MODEL}/production", "viewer"),
    ("post", "/clm/promote", "admin"),
    ("post", "/clm/rollback", "admin"),
    ("get", "/clm/audit", "viewer"),
    ("get", "/clm/status", "viewer"),
]
BELOW = {"operator": "viewer", "admin": "operator"}


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
def test_every_route_needs_a_token_and_the_role(shared_api, method, path, role):
    client, auth = shared_api
    call = getattr(client, method)
    doc = problem(call(path), 401)
    assert "token" in doc["detail"]
    assert call(path).headers["WWW-Authenticate"] == "Bearer"
    problem(call(path, headers={"Authorization": "Bearer clm_not-a-real-token"}), 401)
    if role in BELOW:
        problem(call(path, headers=auth(BELOW[role]), json={}), 403)


def test_openapi_lists_every_registry_route(client):
    doc = client.get("/openapi.json").get_json()
    paths = doc["paths"]
    expected = {
        "/clm/models": {"get", "post"},
        "/clm/models/{model_id}/versions/{version}": {"get", "patch", "delete"},
        "/clm/models/{model_id}/production": {"get"},
        "/clm/promote": {"post"},
        "/clm/rollback": {"post"},
        "/clm/audit": {"get"},
        "/clm/status": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths.get(path, {})), path
    promote_op = paths["/clm/promote"]["post"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(promote_op["responses"])
    schema = doc["components"]["schemas"]["PromoteBody"]
    assert set(schema["required"]) == {"model_id", "version", "promoted_by", "reason"}
    params = {p["name"] for p in paths["/clm/models"]["get"]["parameters"]}
    assert {"model_id", "model_type", "symbol", "timeframe", "status", "min_sharpe",
            "created_after", "created_before", "limit", "cursor"} <= params


# ---------------------------------------------------------------------------- forged input


def _cursor(key: Any) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps({"k": key}).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "path",
    ["/clm/models", "/clm/audit", "/clm/jobs", "/clm/candidates", "/clm/triggers",
     "/clm/drift", "/clm/performance", "/clm/events", "/clm/events/dead-letters",
     "/clm/regimes/champions", "/clm/tracked"],
)
@pytest.mark.parametrize("key", [10**30, 2**63, -1, 1.5, {"a": 1}, [1, 2]])
def test_forged_cursor_is_422_never_500(shared_api, path, key):
    """A cursor decoding to an out-of-range key names `cursor` (not a database error)."""
    client, auth = shared_api
    problem(client.get(f"{path}?cursor={_cursor(key)}", headers=auth("viewer")), 422, "cursor")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/clm/drift/999999999999999999999"),
        ("get", "/clm/drift/9223372036854775808"),
        ("get", "/clm/drift/abc"),
        ("get", "/clm/drift/-1"),
        ("get", "/clm/drift/0"),
        ("get", "/clm/candidates/9223372036854775808"),
        ("get", "/clm/candidates/999999999999999999999"),
        ("get", "/clm/candidates/%C2%B2"),
        ("post", "/clm/candidates/%C2%B2/train"),
        ("get", "/clm/drift/%C2%B2"),
        ("post", "/clm/candidates/999999999999999999999/train"),
        ("get", "/clm/searches/999999999999999999999"),
        ("get", "/clm/jobs/999999999999999999999"),
        ("get", "/clm/jobs/not-a-uuid"),
    ],
)
def test_impossible_ids_in_other_paths_are_404(shared_api, method, path):
    client, auth = shared_api
    problem(getattr(client, method)(path, headers=auth("admin")), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/clm/models"), ("post", "/clm/promote"), ("post", "/clm/train"),
     ("patch", f"/clm/models/{MODEL}/versions/v1"), ("post", "/clm/tracked")],
)
@pytest.mark.parametrize(
    "raw",
    ["[" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000,
     '{"params":' + '{"a":' * 500 + "1" + "}" * 500 + "}"],
)
def test_deeply_nested_json_is_400_naming_the_body(shared_api, method, path, raw):
    """JSON nested past what the parser (or anything after it) can recurse through is
    bad input, not a server error."""
    client, auth = shared_api
    response = getattr(client, method)(
        path, data=raw, content_type="application/json", headers=auth("admin"))
    problem(response, 400, "body")


def test_oversized_body_is_413(client, auth):
    huge = '{"model_type": "xgboost", "params": {"a": "' + "x" * (17 << 20) + '"}}'
    response = client.post("/clm/models", data=huge, content_type="application/json",
                           headers=auth("operator"))
    problem(response, 413, "body")


@pytest.mark.parametrize("path", ["/clm/triggers", "/clm/drift", "/clm/events", "/clm/audit"])
@pytest.mark.parametrize(
    "since", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00%2B05:00"])
def test_since_past_the_calendar_is_422(shared_api, path, since):
    client, auth = shared_api
    problem(client.get(f"{path}?since={since}", headers=auth("viewer")), 422, "since")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/clm/train", {"data": '{"symbol": "a\\u0000"}'}),
        ("post", "/clm/train", {"data": "[" * 10_000}),
        ("get", "/clm/models?model_id=%00", {}),
        ("get", "/clm/jobs/%00", {}),
        ("delete", f"/clm/models/{MODEL}/versions/v%00", {}),
    ],
)
def test_token_and_role_are_checked_before_the_input(shared_api, method, path, kwargs):
    """Missing token 401 and too-low role 403 come first, whatever the input holds."""
    client, auth = shared_api
    if "data" in kwargs:
        kwargs = {**kwargs, "content_type": "application/json"}
    call = getattr(client, method)
    problem(call(path, **kwargs), 401)
    problem(call(path, headers={"Authorization": "Bearer clm_nope"}, **kwargs), 401)
    below = {"post": "viewer", "get": None, "delete": "operator"}[method]
    if below is not None:
        problem(call(path, headers=auth(below), **kwargs), 403)


def test_json_sent_without_the_json_content_type_is_400_saying_so(client, auth):
    """`curl -d '{...}'` sends form encoding: the answer names the Content-Type."""
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        kwargs = {"content_type": content_type} if content_type else {}
        response = client.post("/clm/models", data='{"model_type": "xgboost"}',
                               headers=auth("operator"), **kwargs)
        doc = problem(response, 400, "body")
        assert "Content-Type: application/json" in doc["detail"], doc
    bad = client.post("/clm/models", data="{nope", content_type="application/json",
                      headers=auth("operator"))
    assert "not valid JSON" in problem(bad, 400, "body")["detail"]
    null = client.post("/clm/models", data="null", content_type="application/json",
                       headers=auth("operator"))
    assert "must be a JSON object" in problem(null, 422, "body")["detail"]
