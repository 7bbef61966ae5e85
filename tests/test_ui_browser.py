"""Issue 15: the web console in a real browser (Debian's headless Chromium, Playwright).

One app on PostgreSQL behind a loopback server for the whole module; registry state from
tests/support/console_state.py. Each page renders and its figures equal the JSON API's,
charts are present and not empty, a viewer sees no promote button, an admin's promote
(with its reason, through the confirmation page, by keyboard) changes production and
shows in the audit. Every page is screenshotted to tests/support/browser.screenshot_dir()
(var/test-artifacts/ui/ unless CLM_UI_SCREENSHOTS says otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.core.config import load_settings
from tests.support import console_state as cs
from tests.support.browser import chromium, chromium_or_skip, screenshot_dir, serve

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def console(postgres_dbs: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    chromium_or_skip()
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    url = postgres_dbs.migrated()
    root = tmp_path_factory.mktemp("ui-browser")
    settings = load_settings({
        "CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var"),
        "CLM_DATA_DIR": str(root / "var" / "data"),
        "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0"})
    with transaction(url) as session:
        tokens = {r: create_token(session, role=r, name=f"ui-{r}") for r in ("viewer", "admin")}
    old = cs.register(url, cs.MODEL, 1.1)
    prod = cs.register(url, cs.MODEL, 1.6, with_report=True)
    newest = cs.register(url, cs.MODEL, 1.3)
    cs.register(url, cs.OTHER, 0.9)
    cs.register(url, cs.OTHER, 1.2)
    search_id = cs.add_search(url, cs.MODEL)
    cs.add_live_record(url, cs.MODEL, prod)
    job_id = cs.add_job(settings)
    cs.add_drift_report(url, cs.MODEL, prod)
    app = create_app(settings)
    with serve(app) as base, chromium() as browser:
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {tokens['admin']}"
        r = api.post(f"{base}/clm/promote", json={"model_id": cs.MODEL, "version": prod,
                                                   "promoted_by": "setup", "reason": "best"})
        assert r.status_code == 200, r.text
        yield {"base": base, "browser": browser, "tokens": tokens, "api": api,
               "versions": {"old": old, "prod": prod, "newest": newest},
               "search_id": search_id, "job_id": job_id}
    postgres_dbs.drop(url)


def _page(console: dict, role: str) -> Any:
    """A fresh browser context signed in through /ui/login with the role's token, typed
    and submitted with the keyboard."""
    context = console["browser"].new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(f"{console['base']}/ui/")  # → the sign-in page (no cookie yet)
    assert page.url.startswith(f"{console['base']}/ui/login")
    assert page.get_by_label("API token").is_visible()
    page.get_by_label("API token").fill(console["tokens"][role])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console['base']}/ui/")
    return page


def _shot(page: Any, name: str) -> None:
    path = screenshot_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def _api(console: dict, path: str) -> Any:
    r = console["api"].get(f"{console['base']}{path}")
    assert r.status_code == 200, r.text
    return r.json()


def _assert_accessible(page: Any) -> None:
    """Every chart is an image with a title and a description; every form control has a
    label; every button and link can take the keyboard focus."""
    charts = page.locator("svg.chart")
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.get_attribute("role") == "img"
        assert chart.locator("title").first.text_content().strip()
        assert chart.locator("desc").first.text_content().strip()
    unlabeled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')].filter(e => !e.labels.length
        && !e.getAttribute('aria-label')).map(e => e.name)""")
    assert unlabeled == []
    unreachable = page.evaluate("""() => [...document.querySelectorAll('a[href], button')]
        .filter(e => !e.disabled && e.tabIndex < 0).map(e => e.outerHTML)""")
    assert unreachable == []


def _nonempty_lines(page: Any, css: str) -> int:
    return page.evaluate(f"""() => [...document.querySelectorAll('{css} polyline')]
        .map(p => p.getAttribute('points').trim().split(' ').length)
        .reduce((a, b) => Math.max(a, b), 0)""")


def _chart(page: Any, caption: str) -> dict[str, Any]:
    """The chart in the figure captioned `caption`: the most points of its lines, and its
    description (which names each line's first, last, lowest and highest value)."""
    return page.evaluate("""(caption) => {
        const fig = [...document.querySelectorAll('figure')]
            .find(f => f.querySelector('figcaption').textContent.trim() === caption);
        return {points: [...fig.querySelectorAll('svg polyline')]
                    .map(p => p.getAttribute('points').trim().split(' ').length)
                    .reduce((a, b) => Math.max(a, b), 0),
                desc: fig.querySelector('svg desc').textContent};
    }""", caption)


def test_overview_numbers_equal_the_api(console: dict) -> None:
    page = _page(console, "viewer")
    versions = _api(console, "/clm/models?limit=500")["items"]
    status = _api(console, "/clm/status")
    for model_id in (cs.MODEL, cs.OTHER):
        row = page.locator(f"tr[data-model-id='{model_id}']")
        mine = [v for v in versions if v["model_id"] == model_id]
        for s in ("candidate", "production", "retired"):
            expected = sum(1 for v in mine if v["status"] == s)
            assert row.locator(f"td.count[data-status='{s}']").text_content() == str(expected)
        production = [v for v in mine if v["status"] == "production"]
        shown = row.locator("td.production").text_content().strip()
        assert shown == (production[0]["version"] if production else "none")
    prod_row = page.locator(f"tr[data-model-id='{cs.MODEL}']")
    live = _api(console, f"/clm/models/{cs.MODEL}/versions/{console['versions']['prod']}/live")
    assert prod_row.locator("td.live-sharpe").text_content() == f"{live['metrics']['sharpe']:.3f}"
    assert prod_row.locator("td.sharpe").text_content() == "1.600"
    for s, n in status["versions"].items():
        assert page.locator(f"#totals .card[data-status='{s}'] .v").text_content() == str(n)
    _assert_accessible(page)
    _shot(page, "overview")
    page.context.close()


def test_model_page_as_viewer(console: dict) -> None:
    page = _page(console, "viewer")
    prod = console["versions"]["prod"]
    page.get_by_role("link", name=cs.MODEL).click()
    page.wait_for_url(f"**/ui/models/{cs.MODEL}")
    assert page.locator("#production-version").text_content() == prod
    version = _api(console, f"/clm/models/{cs.MODEL}/versions/{prod}")
    oos = page.locator("#metrics tr[data-source='oos']")
    sharpe = version["metrics"]["sharpe"]
    assert oos.locator("[data-metric='sharpe']").text_content() == f"{sharpe:.3f}"
    assert oos.locator("[data-metric='trades']").text_content() == str(version["metrics"]["trades"])
    live = _api(console, f"/clm/models/{cs.MODEL}/versions/{prod}/live")
    live_row = page.locator("#metrics tr[data-source='live']")
    live_sharpe = live["metrics"]["sharpe"]
    assert live_row.locator("[data-metric='sharpe']").text_content() == f"{live_sharpe:.3f}"
    # Live equity and drawdown: one point per scored bar.
    assert _chart(page, "Live equity")["points"] == len(live["equity"])
    assert _chart(page, "Live drawdown")["points"] == len(live["equity"])
    report = _api(console, f"/clm/models/{cs.MODEL}/versions/{prod}/report")
    # Out-of-sample equity and drawdown: one point per point of the report's curve, ending
    # at 1 + total_return and falling as deep as the version's max_drawdown.
    assert report["equity"] and page.get_by_text("no out-of-sample equity curve").count() == 0
    oos_equity = _chart(page, "Out-of-sample equity")
    oos_drawdown = _chart(page, "Out-of-sample drawdown")
    assert oos_equity["points"] == oos_drawdown["points"] == len(report["equity"])
    assert f"to {1 + version['metrics']['total_return']:.3g} " in oos_equity["desc"]
    assert f"(min {-version['metrics']['max_drawdown']:.3g}," in oos_drawdown["desc"]
    assert page.locator("svg.bars rect.bar").count() == len(report["attributions"])
    assert page.locator("svg.scatter circle.point").count() == len(report["calibration"]["bins"])
    assert f"Brier {report['calibration']['brier']:.4f}" in page.locator(
        "#calibration-scores").text_content()
    for row in report["by_regime"]:
        cell = page.locator(f"#by-regime tr[data-regime='{row['regime']}'] [data-metric='sharpe']")
        assert cell.text_content() == f"{row['sharpe']:.3f}"
    listed = _api(console, f"/clm/models?model_id={cs.MODEL}")["items"]
    assert page.locator("#versions tbody tr").count() == len(listed)
    allocation = _api(console, f"/clm/models/{cs.MODEL}/allocation")
    shown = page.locator("#allocation [data-version]")
    assert shown.count() == len(allocation["weights"]) >= 1
    for v, w in allocation["weights"].items():
        assert page.locator(f"#allocation [data-version='{v}']").text_content() == f"{v}: {w:.2f}"
    # A viewer is shown no way to change production.
    assert page.locator("#promote-button").count() == 0
    assert page.get_by_role("button", name="Promote…").count() == 0
    assert page.locator("form[action$='/promote'], form[action$='/rollback']").count() == 0
    _assert_accessible(page)
    _shot(page, "model-viewer")
    page.context.close()


def test_admin_promotes_with_a_reason(console: dict) -> None:
    page = _page(console, "admin")
    target = console["versions"]["newest"]
    page.goto(f"{console['base']}/ui/models/{cs.MODEL}")
    _assert_accessible(page)
    page.get_by_label("Version", exact=True).select_option(target)
    reason = "newest beats production on the last month (UI test)"
    page.get_by_label("Reason (required, kept in the audit log)").first.fill(reason)
    _shot(page, "model-admin")
    page.locator("#promote-button").focus()
    page.keyboard.press("Enter")  # keyboard reachable
    page.wait_for_selector("#confirm-button")
    assert target in page.locator("#confirm-q").text_content()
    # Nothing changed before the confirmation.
    assert _api(console, f"/clm/models/{cs.MODEL}/production")["version"] == console[
        "versions"]["prod"]
    _shot(page, "promote-confirm")
    page.locator("#confirm-button").click()
    page.wait_for_url(f"**/ui/models/{cs.MODEL}?done=promoted")
    assert page.locator("#production-version").text_content() == target
    assert _api(console, f"/clm/models/{cs.MODEL}/production")["version"] == target
    audit = _api(console, f"/clm/audit?model_id={cs.MODEL}&action=version.promoted")["items"]
    assert audit[0]["version"] == target and audit[0]["reason"] == reason
    assert audit[0]["actor"] == "token:ui-admin"
    assert page.locator("#timeline td.reason").first.text_content() == reason
    # The timeline chart: one band per production period (setup's promotion, then ours).
    assert page.locator("svg.timeline rect.band").count() == 2
    _shot(page, "model-after-promote")
    page.get_by_role("link", name="Audit").click()
    page.wait_for_url("**/ui/audit")
    assert page.locator("#audit td.reason").first.text_content() == reason
    _shot(page, "audit")
    page.context.close()


def test_jobs_triggers_and_searches_pages(console: dict) -> None:
    page = _page(console, "viewer")
    for link, name in (("Jobs", "jobs"), ("Triggers & drift", "triggers"),
                       ("Strategy searches", "searches")):
        page.get_by_role("link", name=link).click()
        page.wait_for_url(f"**/ui/{name}")
        assert page.locator("h1").text_content()
        _assert_accessible(page)
        _shot(page, name)
    page.goto(f"{console['base']}/ui/triggers")
    decision = _api(console, "/clm/triggers")["items"][0]
    row = page.locator(f"#decisions tr[data-decision-id='{decision['id']}']")
    assert row.locator(".badge").text_content() == decision["outcome"]
    assert decision["reason"] in row.text_content()
    drift = _api(console, "/clm/drift")["items"][0]
    cell = page.locator(f"#drift tr[data-report-id='{drift['id']}'] "
                        "[data-metric='prediction_psi']")
    assert cell.text_content() == f"{drift['prediction_psi']:.4f}"
    job = _api(console, f"/clm/jobs/{console['job_id']}")
    page.goto(f"{console['base']}/ui/jobs")
    row = page.locator(f"tr[data-job-id='{job['job_id']}']")
    assert row.locator(".pct").text_content() == f"{round(job['progress'] * 100)} %"
    assert row.locator(".badge").first.text_content() == job["status"]
    row.locator("a").click()
    page.wait_for_url(f"**/ui/jobs/{job['job_id']}")
    assert page.locator("#steps tbody tr").count() == len(job["steps"])
    for step in job["steps"]:
        assert page.locator(f"tr[data-step='{step['name']}'] .badge").text_content() == (
            step["status"])
    _assert_accessible(page)
    _shot(page, "job")
    search_id = console["search_id"]
    page.get_by_role("link", name="Strategy searches").click()
    page.locator(f"tr[data-search-id='{search_id}'] a").click()
    page.wait_for_url(f"**/ui/searches/{search_id}")
    search = _api(console, f"/clm/searches/{search_id}")
    front = _api(console, f"/clm/candidates?search_id={search_id}&pareto=true")["items"]
    every = _api(console, f"/clm/candidates?search_id={search_id}&limit=500")["items"]
    assert page.locator("svg.scatter circle.point").count() == len(every)
    assert page.locator("svg.scatter circle.highlight").count() == len(front)
    assert _nonempty_lines(page, "svg.hypervolume") == len(search["generation_stats"])
    for g in search["generation_stats"]:
        cell = page.locator(f"tr[data-generation='{g['generation']}'] [data-metric='hypervolume']")
        assert cell.text_content() == f"{g['hypervolume']:.4f}"
    assert page.locator("#candidates tbody tr").count() == len(front)
    _assert_accessible(page)
    _shot(page, "search")
    page.context.close()
