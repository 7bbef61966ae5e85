"""What each console page shows, gathered from the services the API uses.

One function per page; each takes an open session (the view owns the read-only unit of
work) and returns plain dicts for its template, with the same figures the JSON API
returns for the same things (the browser tests compare them). The two read-only
aggregations the API has no route for (versions per model and status; live Sharpe of
every production version) are single grouped queries here, so the overview costs the
same with 10 versions or 10,000.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelStatus
from app.core.errors import NotFound
from app.models.continuous import DriftReport
from app.models.evolution import StrategySearch
from app.models.live import LiveScore
from app.models.registry import ModelVersion
from app.services import allocation, jobs, registry, triggers
from app.services.evolution.views import get_search, list_candidates, search_dict
from app.services.live_scores import live_record
from app.services.reports import version_report

STATUSES = [s.value for s in ModelStatus]
VERSIONS_PER_PAGE = 50
PRODUCTION_ACTIONS = ("version.promoted", "version.rolled_back")


def overview(session: Session) -> dict[str, Any]:
    """Every model_id: versions by status, its production version, OOS and live Sharpe."""
    models: dict[str, dict[str, Any]] = {}
    for model_id, status, n in session.execute(
        select(ModelVersion.model_id, ModelVersion.status, func.count())
        .group_by(ModelVersion.model_id, ModelVersion.status)
    ):
        entry = models.setdefault(model_id, {"model_id": model_id, "production": None,
                                             "sharpe": None, "live_sharpe": None,
                                             "live_bars": 0,
                                             "counts": dict.fromkeys(STATUSES, 0)})
        entry["counts"][ModelStatus(status).value] = int(n)
    for model_id, version, sharpe in session.execute(
        select(ModelVersion.model_id, ModelVersion.version, ModelVersion.sharpe)
        .where(ModelVersion.status == ModelStatus.PRODUCTION)
    ):
        models[model_id].update(production=version, sharpe=sharpe)
    production = {(m["model_id"], m["production"]) for m in models.values() if m["production"]}
    if production:
        for model_id, version, metrics, bars in session.execute(
            select(LiveScore.model_id, LiveScore.version, LiveScore.metrics, LiveScore.bars)
            .where(LiveScore.model_id.in_({m for m, _ in production}))
        ):
            if (model_id, version) in production and bars:
                models[model_id].update(live_sharpe=(metrics or {}).get("sharpe"),
                                        live_bars=bars)
    totals = registry.status_counts(session)
    return {"models": [models[k] for k in sorted(models)], "totals": totals,
            "jobs": jobs.job_counts(session)}


def _allocation(session: Session, model_id: str) -> dict[str, Any]:
    """The allocation service's view (mode and weights), as GET …/allocation answers."""
    try:
        return allocation.allocation_view(session, model_id)
    except NotFound:
        return {"mode": "champion", "weights": {}}


def _curve(points: list[list[Any]] | None) -> tuple[list[str], list[float]]:
    points = points or []
    return [str(t) for t, _ in points], [float(e) for _, e in points]


def model_page(session: Session, model_id: str, *, version: str | None,
               after_key: int | None) -> dict[str, Any]:
    """A model: its versions (a page), production timeline, the selected version (the
    production one by default) with its OOS report and live record, and allocation."""
    if not registry.model_known(session, model_id):
        raise NotFound(f"model {model_id} not found")
    versions, next_key = registry.query_versions(
        session, registry.VersionQuery(model_id=model_id), limit=VERSIONS_PER_PAGE,
        after_key=after_key)
    production = registry.get_production(session, model_id)
    timeline: list[dict[str, Any]] = []
    for action in PRODUCTION_ACTIONS:
        entries, _ = registry.query_audit(
            session, registry.AuditQuery(model_id=model_id, action=action), limit=100)
        timeline += entries
    timeline.sort(key=lambda e: e["id"], reverse=True)
    chosen = version or (production or {}).get("version") or (
        versions[0]["version"] if versions else None)
    selected = None
    if chosen is not None:
        selected = registry.get_version(session, model_id, chosen, with_history=True)
        live = live_record(session, model_id, chosen)
        report = version_report(session, model_id, chosen)
        # The report's OOS equity (thinned, app.ml.diagnostics); [] for a version without.
        oos_labels, oos_equity = _curve(report.get("equity"))
        live_labels, live_equity = _curve(live.get("equity"))
        selected.update(live=live, report=report, oos_labels=oos_labels,
                        oos_equity=oos_equity, live_labels=live_labels,
                        live_equity=live_equity)
    return {"model_id": model_id, "versions": versions, "next_key": next_key,
            "production": production, "timeline": timeline, "selected": selected,
            "allocation": _allocation(session, model_id),
            "promotable": sorted(registry.PROMOTABLE)}


def jobs_page(session: Session, *, status: str | None, limit: int = 50) -> dict[str, Any]:
    items, _ = jobs.list_jobs(session, status=status, limit=limit)
    items = items[:limit]
    active = any(j["status"] in ("queued", "running") for j in items)
    return {"jobs": items, "active": active, "status": status}


def job_page(session: Session, job_id: str) -> dict[str, Any]:
    return {"job": jobs.get_job(session, job_id)}


def triggers_page(session: Session, settings: Settings, *, limit: int = 50) -> dict[str, Any]:
    decisions = [d.to_dict() for d in triggers.list_decisions(session, limit=limit)][:limit]
    drift = [r.to_dict() for r in session.scalars(
        select(DriftReport).order_by(DriftReport.id.desc()).limit(limit))]
    return {"decisions": decisions, "drift": drift,
            "scheduler": triggers.scheduler_state(session, settings)}


def searches_page(session: Session, *, limit: int = 50) -> dict[str, Any]:
    rows = session.scalars(select(StrategySearch)
                           .order_by(StrategySearch.created_at.desc()).limit(limit))
    return {"searches": [search_dict(r) for r in rows]}


def search_page(session: Session, search_id: str) -> dict[str, Any]:
    search = get_search(session, search_id)
    candidates: list[dict[str, Any]] = []
    after: int | None = None
    while True:  # a search has population × generations candidates: a few hundred
        page, keys = list_candidates(session, search_id=search_id, after_id=after, limit=500)
        candidates += page[:500]
        if len(page) <= 500:
            break
        after = keys[499]
    return {"search": search, "candidates": candidates}
