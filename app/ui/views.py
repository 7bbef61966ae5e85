"""Routes of the web console (/ui/…): parse, read through `app.ui.pages`, render.

Every page needs a viewer (session cookie from /ui/login, or the API's bearer token);
promote and rollback need an admin, exactly as POST /clm/promote and /clm/rollback,
and run the same `app.services.registry` functions. Both are two steps: the form (with
a required reason) leads to a confirmation page; only its confirm button changes
production. No page needs JavaScript.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from app.api.schema import documented
from app.core.config import Settings
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import ensure_utc, utcnow
from app.db import transaction
from app.services import registry
from app.services.registry.history import previous_production
from app.ui import auth, pages
from app.ui.charts import bar_chart, drawdown, empty_chart, line_chart, scatter, timeline

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")
MAX_REASON = 10_000


def _settings() -> Settings:
    return current_app.config["CLM_SETTINGS"]


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    token = g.get("token")
    return render_template(template, me=token, csrf=g.get("csrf"),
                           is_admin=bool(token and token.allows("admin")),
                           **context), status


def _after_key(name: str = "after") -> int | None:
    raw = request.args.get(name, "")
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise InvalidInput(name, "must be a whole number")
    return int(raw) if raw else None


# ---------------------------------------------------------------------------- sign-in


def _safe_next(target: str) -> str:
    # Only a path inside the console: never an open redirect to another host.
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return url_for("ui.overview")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    csrf = auth.login_csrf()
    next_page = _safe_next(request.values.get("next", ""))
    error = None
    status = 200
    if request.method == "POST":
        if not auth.login_csrf_ok():
            error, status = "The form expired; please try again.", 400
        else:
            signed = auth.sign_in(request.form.get("token", "")[:200])
            if signed is not None:
                response = redirect(next_page, code=303)
                auth.set_cookie(response, auth.SESSION_COOKIE, signed[1],
                                auth.SESSION_SECONDS)
                auth.set_cookie(response, auth.LOGIN_CSRF_COOKIE, "", 0)
                return response
            error, status = "That token is unknown or revoked.", 401
    body = render_template("ui/login.html", csrf=csrf, next_page=next_page, error=error,
                           me=None, is_admin=False)
    response = current_app.make_response((body, status))
    auth.set_cookie(response, auth.LOGIN_CSRF_COOKIE, csrf, 3600)
    return response


@bp.post("/logout")
@auth.console_role("viewer")
def logout() -> Response:
    response = redirect(url_for("ui.login"), code=303)
    auth.set_cookie(response, auth.SESSION_COOKIE, "", 0)
    return response


# ---------------------------------------------------------------------------- pages


@bp.get("/")
@documented("The web console (HTML): overview of every model; the session cookie from "
            "/ui/login or a bearer token", role="viewer", tag="console",
            media_type="text/html", responses={200: "The overview page"})
@auth.console_role("viewer")
def overview() -> Any:
    with transaction(_settings().database_url) as session:
        data = pages.overview(session)
    return _render("ui/overview.html", **data)


def _model_charts(selected: dict[str, Any] | None) -> dict[str, Any]:
    if selected is None:
        return {}
    report = selected.get("report") or {}
    charts: dict[str, Any] = {}
    for key, title, labels, equity in (
        ("oos", "Out-of-sample", selected["oos_labels"], selected["oos_equity"]),
        ("live", "Live", selected["live_labels"], selected["live_equity"]),
    ):
        if equity:
            charts[f"{key}_equity"] = line_chart(f"{title} equity", [("equity", equity)],
                                                 labels=labels, css="equity")
            charts[f"{key}_drawdown"] = line_chart(
                f"{title} drawdown", [("drawdown", [-d for d in drawdown(equity)])],
                labels=labels, unit="fraction below the peak", css="drawdown",
                percent=True)
        else:
            why = ("no out-of-sample equity curve stored with this version" if key == "oos"
                   else "no bars scored after its training data yet")
            charts[f"{key}_equity"] = empty_chart(f"{title} equity", why)
            charts[f"{key}_drawdown"] = empty_chart(f"{title} drawdown", why)
    attributions = report.get("attributions") or {}
    charts["attributions"] = bar_chart(
        "Feature attributions (mean |SHAP|)",
        [(name, value) for name, value in attributions.items()], unit="mean |SHAP|"
    ) if attributions else empty_chart("Feature attributions", "no report for this version")
    bins = (report.get("calibration") or {}).get("bins") or []
    points = []
    for b in bins:
        predicted = b.get("mean_predicted")
        observed = b.get("observed_rate")
        if predicted is not None and observed is not None:
            points.append((predicted, observed, bool(b.get("count")),
                           f"bin {b.get('lower')}–{b.get('upper')} ({b.get('count')} bars)"))
    charts["calibration"] = scatter(
        "Calibration (reliability curve)", points, x_name="predicted probability",
        y_name="observed frequency", diagonal=True, connect=True,
    ) if points else empty_chart("Calibration", "no calibration report for this version")
    return charts


def _production_timeline(entries: list[dict[str, Any]]) -> Any:
    """Who was in production from when to when, from the promotions and rollbacks
    (newest first in `entries`); the last period runs to now."""
    ordered = sorted(entries, key=lambda e: e["id"])
    now = utcnow()
    periods = []
    for entry, following in zip(ordered, [*ordered[1:], None], strict=False):
        start = ensure_utc(datetime.fromisoformat(entry["at"]))
        end = ensure_utc(datetime.fromisoformat(following["at"])) if following else now
        verb = "rolled back to" if entry["action"] == "version.rolled_back" else "promoted"
        periods.append((entry["version"], start.timestamp(), end.timestamp(),
                        f"{entry['version']} {verb} at {entry['at'][:19]} by "
                        f"{entry['actor']}: {entry['reason']}"))
    first = ordered[0]["at"][:16].replace("T", " ") if ordered else ""
    return timeline("Production timeline", periods, labels=(first, "now"))


@bp.get("/models/<model_id>")
@auth.console_role("viewer")
def model(model_id: str) -> Any:
    version = request.args.get("version") or None
    with transaction(_settings().database_url) as session:
        data = pages.model_page(session, model_id, version=version, after_key=_after_key())
    charts = _model_charts(data["selected"])
    charts["timeline"] = _production_timeline(data["timeline"])
    return _render("ui/model.html", charts=charts,
                   done=request.args.get("done"), **data)


def _reason() -> str:
    reason = request.form.get("reason", "").strip()
    if not reason:
        raise InvalidInput("reason", "a reason is required")
    if len(reason) > MAX_REASON:
        raise InvalidInput("reason", f"at most {MAX_REASON} characters")
    return reason


@bp.post("/models/<model_id>/promote")
@auth.console_role("admin")
def promote(model_id: str) -> Any:
    version = request.form.get("version", "").strip()
    if not version:
        raise InvalidInput("version", "choose a version to promote")
    reason = _reason()
    if request.form.get("confirm") != "yes":
        with transaction(_settings().database_url) as session:
            target = registry.get_version(session, model_id, version)
            current = registry.get_production(session, model_id)
        return _render("ui/confirm.html", action="promote", model_id=model_id,
                       target=target, current=current, reason=reason)
    with transaction(_settings().database_url, immediate=True) as session:
        registry.promote(session, model_id, version, actor=g.token.actor, reason=reason,
                         token=g.token.name)
    return redirect(url_for("ui.model", model_id=model_id, done="promoted"), code=303)


@bp.post("/models/<model_id>/rollback")
@auth.console_role("admin")
def rollback(model_id: str) -> Any:
    target = request.form.get("target_version", "").strip() or None
    reason = _reason()
    if request.form.get("confirm") != "yes":
        with transaction(_settings().database_url) as session:
            current = registry.get_production(session, model_id)
            if current is None:
                raise NotFound(f"{model_id} has no production version to roll back")
            chosen = target or previous_production(session, model_id, current["version"])
        return _render("ui/confirm.html", action="rollback", model_id=model_id,
                       target={"version": chosen} if chosen else None, current=current,
                       reason=reason, requested_target=target)
    with transaction(_settings().database_url, immediate=True) as session:
        registry.rollback(session, model_id, target, actor=g.token.actor, reason=reason,
                          token=g.token.name)
    return redirect(url_for("ui.model", model_id=model_id, done="rolled back"), code=303)


@bp.get("/jobs")
@auth.console_role("viewer")
def jobs() -> Any:
    status = request.args.get("status") or None
    if status is not None and status not in ("queued", "running", "succeeded", "failed"):
        raise InvalidInput("status", "must be one of queued, running, succeeded, failed")
    with transaction(_settings().database_url) as session:
        data = pages.jobs_page(session, status=status)
    return _render("ui/jobs.html", **data)


@bp.get("/jobs/<job_id>")
@auth.console_role("viewer")
def job(job_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        data = pages.job_page(session, job_id)
    return _render("ui/job.html", **data)


@bp.get("/triggers")
@auth.console_role("viewer")
def triggers() -> Any:
    with transaction(_settings().database_url) as session:
        data = pages.triggers_page(session, _settings())
    return _render("ui/triggers.html", **data)


@bp.get("/searches")
@auth.console_role("viewer")
def searches() -> Any:
    with transaction(_settings().database_url) as session:
        data = pages.searches_page(session)
    return _render("ui/searches.html", **data)


@bp.get("/searches/<search_id>")
@auth.console_role("viewer")
def search(search_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        data = pages.search_page(session, search_id)
    s = data["search"]
    objectives = s["objectives"][:2]
    points = []
    if len(objectives) == 2:
        a, b = objectives
        for c in data["candidates"]:
            values = c.get("objectives") or {}
            if values.get(a) is not None and values.get(b) is not None:
                points.append((values[a], values[b], bool(c.get("pareto")),
                               f"candidate {c['id']} (generation {c.get('generation')})"))
    front = scatter("Candidates and the Pareto front", points, x_name=objectives[0],
                    y_name=objectives[1]) if points else empty_chart(
        "Candidates", "no evaluated candidates yet")
    hv = [g_["hypervolume"] for g_ in s["generation_stats"]]
    hypervolume = line_chart("Hypervolume per generation", [("hypervolume", hv)],
                             labels=[str(g_["generation"]) for g_ in s["generation_stats"]],
                             css="hypervolume")
    return _render("ui/search.html", front=front, hypervolume=hypervolume, **data)


@bp.get("/audit")
@auth.console_role("viewer")
def audit() -> Any:
    model_id = request.args.get("model_id") or None
    with transaction(_settings().database_url) as session:
        entries, next_key = registry.query_audit(
            session, registry.AuditQuery(model_id=model_id), limit=100,
            after_key=_after_key())
    return _render("ui/audit.html", entries=entries, next_key=next_key, model_id=model_id)
