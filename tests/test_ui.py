"""Issue 15: the web console's sign-in, session cookie, CSRF, roles and errors, over the
WSGI app (no browser: tests/test_ui_browser.py drives the pages in Chromium).

Nothing is readable without a token; the cookie is HttpOnly, SameSite=Strict, not the
token, expires, and dies with the token; every form post needs the session's CSRF token;
viewers may not promote; API clients get problem+json, browsers pages; bad input is a
4xx naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from app.core.config import load_settings
from tests.support import console_state as cs

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture(scope="module")
def ui(sqlite_dbs: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    url = sqlite_dbs.migrated()
    root = tmp_path_factory.mktemp("ui")
    settings = load_settings({"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var"),
                              "CLM_LOG_JSON": "0"})
    app = create_app(settings)
    app.config["TESTING"] = True
    with transaction(url) as session:
        tokens = {r: create_token(session, role=r, name=f"ui-{r}")
                  for r in ("viewer", "operator", "admin")}
    first = cs.register(url, cs.MODEL, 1.2)
    second = cs.register(url, cs.MODEL, 1.5, with_report=True)
    yield {"app": app, "url": url, "tokens": tokens, "versions": [first, second]}


def _login(ui: dict, role: str) -> Any:
    client = ui["app"].test_client()
    page = client.get("/ui/login", headers=BROWSER)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    r = client.post("/ui/login", data={"csrf": csrf, "token": ui["tokens"][role],
                                       "next": "/ui/jobs"}, headers=BROWSER)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/jobs"
    return client, r


def _form_csrf(client: Any, path: str) -> str:
    html = client.get(path, headers=BROWSER).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_nothing_is_readable_without_a_token(ui: dict) -> None:
    client = ui["app"].test_client()
    for path in ("/ui/", f"/ui/models/{cs.MODEL}", "/ui/jobs", "/ui/triggers",
                 "/ui/searches", "/ui/audit"):
        api = client.get(path)
        assert api.status_code == 401 and api.mimetype == "application/problem+json"
        browser = client.get(path, headers=BROWSER)
        assert browser.status_code == 303
        assert browser.headers["Location"].startswith("/ui/login?next=")
        assert "data-model-id" not in browser.get_data(as_text=True)
        assert "<table" not in browser.get_data(as_text=True)
    bad = client.get("/ui/", headers={"Authorization": "Bearer clm_nope"})
    assert bad.status_code == 401 and bad.get_json()["detail"] == "unknown or revoked token"


def test_bearer_token_reads_pages(ui: dict) -> None:
    r = ui["app"].test_client().get(
        "/ui/", headers={"Authorization": f"Bearer {ui['tokens']['viewer']}"})
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert f'data-model-id="{cs.MODEL}"' in r.get_data(as_text=True)
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_session_cookie_is_http_only_strict_and_not_the_token(ui: dict) -> None:
    client, r = _login(ui, "viewer")
    cookies = [c for c in r.headers.getlist("Set-Cookie") if c.startswith("clm_session=")]
    assert len(cookies) == 1
    cookie = cookies[0]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert ui["tokens"]["viewer"] not in cookie
    assert client.get("/ui/", headers=BROWSER).status_code == 200


def test_login_refuses_bad_tokens_and_missing_csrf(ui: dict) -> None:
    client = ui["app"].test_client()
    r = client.post("/ui/login", data={"token": ui["tokens"]["viewer"]}, headers=BROWSER)
    assert r.status_code == 400 and "clm_session" not in r.headers.get("Set-Cookie", "")
    csrf = _form_csrf(client, "/ui/login")
    r = client.post("/ui/login", data={"csrf": csrf, "token": "clm_wrong"}, headers=BROWSER)
    assert r.status_code == 401 and "unknown or revoked" in r.get_data(as_text=True)


def test_login_never_redirects_off_the_console(ui: dict) -> None:
    client = ui["app"].test_client()
    csrf = _form_csrf(client, "/ui/login")
    r = client.post("/ui/login", data={"csrf": csrf, "token": ui["tokens"]["viewer"],
                                       "next": "https://evil.example/ui/"}, headers=BROWSER)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/"


def test_forged_or_revoked_sessions_are_refused(ui: dict) -> None:
    from app.db import transaction
    from app.services.auth import create_token, revoke_token

    client = ui["app"].test_client()
    client.set_cookie("clm_session", "1.99999999999.deadbeef", path="/ui")
    assert client.get("/ui/").status_code == 401
    with transaction(ui["url"]) as session:
        raw = create_token(session, role="viewer", name="ui-soon-revoked")
    ui["tokens"]["soon"] = raw
    client, _ = _login(ui, "soon")
    assert client.get("/ui/").status_code == 200
    with transaction(ui["url"]) as session:
        revoke_token(session, "ui-soon-revoked", actor="test")
    assert client.get("/ui/").status_code == 401


def test_viewer_cannot_promote_and_sees_no_button(ui: dict) -> None:
    client, _ = _login(ui, "viewer")
    html = client.get(f"/ui/models/{cs.MODEL}", headers=BROWSER).get_data(as_text=True)
    assert "promote-button" not in html and "/promote" not in html
    csrf = _form_csrf(client, "/ui/")  # the sign-out form carries it
    r = client.post(f"/ui/models/{cs.MODEL}/promote", headers=BROWSER, data={
        "csrf": csrf, "version": ui["versions"][0], "reason": "x", "confirm": "yes"})
    assert r.status_code == 403


def test_admin_promote_needs_csrf_a_reason_and_a_confirmation(ui: dict) -> None:
    from app.db import transaction
    from app.services import registry

    client, _ = _login(ui, "admin")
    path = f"/ui/models/{cs.MODEL}"
    target = ui["versions"][0]
    csrf = _form_csrf(client, path)
    assert 'id="promote-button"' in client.get(path, headers=BROWSER).get_data(as_text=True)
    no_csrf = client.post(f"{path}/promote", data={"version": target, "reason": "r",
                                                   "confirm": "yes"})
    assert no_csrf.status_code == 403 and no_csrf.get_json()["errors"][0]["field"] == "csrf"
    no_reason = client.post(f"{path}/promote", data={"csrf": csrf, "version": target,
                                                     "reason": "  ", "confirm": "yes"})
    assert no_reason.status_code == 422
    assert no_reason.get_json()["errors"] == [{"field": "reason",
                                               "message": "a reason is required"}]
    unknown = client.post(f"{path}/promote", data={"csrf": csrf, "version": "v0",
                                                   "reason": "r"}, headers=BROWSER)
    assert unknown.status_code == 404 and "text/html" in unknown.content_type
    ask = client.post(f"{path}/promote", data={"csrf": csrf, "version": target,
                                               "reason": "because"}, headers=BROWSER)
    assert ask.status_code == 200 and 'id="confirm-button"' in ask.get_data(as_text=True)
    with transaction(ui["url"]) as session:
        assert registry.get_production(session, cs.MODEL) is None  # not yet
    done = client.post(f"{path}/promote", data={"csrf": csrf, "version": target,
                                                "reason": "because", "confirm": "yes"})
    assert done.status_code == 303
    with transaction(ui["url"]) as session:
        assert registry.get_production(session, cs.MODEL)["version"] == target
        audit, _ = registry.query_audit(session, registry.AuditQuery(model_id=cs.MODEL))
    assert (audit[0]["action"], audit[0]["reason"], audit[0]["actor"]) == (
        "version.promoted", "because", "token:ui-admin")


def test_admin_rollback_goes_back(ui: dict) -> None:
    from app.db import transaction
    from app.services import registry

    client, _ = _login(ui, "admin")
    path = f"/ui/models/{cs.MODEL}"
    csrf = _form_csrf(client, path)
    first, second = ui["versions"]
    for version in (first, second):
        with transaction(ui["url"], immediate=True) as session:
            registry.promote(session, cs.MODEL, version, actor="t", reason="setup")
    ask = client.post(f"{path}/rollback", data={"csrf": csrf, "reason": "bad"},
                      headers=BROWSER)
    assert ask.status_code == 200 and first in ask.get_data(as_text=True)
    done = client.post(f"{path}/rollback", data={"csrf": csrf, "reason": "bad",
                                                 "confirm": "yes", "target_version": ""})
    assert done.status_code == 303
    with transaction(ui["url"]) as session:
        assert registry.get_production(session, cs.MODEL)["version"] == first


def test_bad_input_is_a_4xx_naming_the_field(ui: dict) -> None:
    headers = {"Authorization": f"Bearer {ui['tokens']['viewer']}"}
    client = ui["app"].test_client()
    r = client.get(f"/ui/models/{cs.MODEL}?after=abc", headers=headers)
    assert r.status_code == 422 and r.get_json()["errors"][0]["field"] == "after"
    assert client.get("/ui/jobs?status=nope", headers=headers).status_code == 422
    assert client.get("/ui/models/nope_nope", headers=headers).status_code == 404
    assert client.get("/ui/jobs/not-a-job", headers=headers).status_code == 404
    assert client.get("/ui/searches/not-a-search", headers=headers).status_code == 404
    page = client.get("/ui/models/nope_nope", headers={**headers, **BROWSER})
    assert page.status_code == 404 and "<h1>404" in page.get_data(as_text=True)


def test_the_console_entry_is_in_the_openapi_document(ui: dict) -> None:
    doc = ui["app"].test_client().get("/openapi.json").get_json()
    op = doc["paths"]["/ui/"]["get"]
    assert "text/html" in op["responses"]["200"]["content"]
    assert "Requires role `viewer`" in op["description"]
