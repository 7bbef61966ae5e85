"""GET /metrics, scraped and parsed as Prometheus text: every family the operators'
dashboards need, with values that follow what happened — jobs by status and trigger,
queue depths, promotions and rollbacks, drift scores of each model's latest check, HTTP
request latency by endpoint — on SQLite and PostgreSQL. (Job and step duration
histograms from real runs: tests/test_ops_processes.py and tests/test_jobs_e2e.py.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.core.timeutil import utcnow
from app.db import transaction
from app.models.continuous import DriftReport
from tests.support.pipeline import SPAN_DAYS, seed_market


def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted label items: value}} from GET /metrics (no token needed)."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def _drift(model_id: str, version: str, *, minutes_ago: int, drifted: bool,
           status: str = "ok", share: float = 0.0, prediction_psi: float | None = None,
           psis: tuple[float, ...] = ()) -> DriftReport:
    return DriftReport(
        model_id=model_id, version=version, checked_at=utcnow() - timedelta(minutes=minutes_ago),
        status=status, drifted=drifted, rows=500, features_total=len(psis),
        features_drifted=sum(p > 0.2 for p in psis), share_drifted=share,
        prediction_psi=prediction_psi, psi_threshold=0.2, feature_share_threshold=0.3,
        ks_threshold=0.1,
        features={"features": [{"name": f"f{i}", "psi": p} for i, p in enumerate(psis)],
                  "reasons": []},
        error="ValueError: no data" if status == "error" else None)


def test_metrics_follow_jobs_promotions_rollbacks_drift_and_requests(settings, client, auth):
    before = scrape(client)
    assert value(before, "clm_promotions_total") == 0.0
    assert value(before, "clm_rollbacks_total") == 0.0
    assert value(before, "clm_database_up") == 1.0
    assert {dict(k)["queue"] for k in before["clm_queue_depth"]} == {
        "data", "train", "evaluate", "default"}

    # Two registered versions, promoted in turn, then a rollback.
    versions = []
    for sharpe in (1.5, 1.8):
        r = client.post("/clm/models", headers=auth("operator"), json={
            "model_type": "xgboost", "symbol": "BTCUSDT", "timeframe": "1h",
            "metrics": {"sharpe": sharpe, "win_rate": 0.55, "profit_factor": 1.4,
                        "max_drawdown": 0.1, "trades": 80, "total_return": 0.2}})
        assert r.status_code == 201, r.get_json()
        versions.append(r.get_json()["version"])
    for version in versions:
        r = client.post("/clm/promote", headers=auth("admin"), json={
            "model_id": "xgboost_btcusdt_1h", "version": version, "promoted_by": "ops",
            "reason": "metrics test"})
        assert r.status_code == 200, r.get_json()
    r = client.post("/clm/rollback", headers=auth("admin"), json={
        "model_id": "xgboost_btcusdt_1h", "rollback_by": "ops", "reason": "metrics test"})
    assert r.status_code == 200, r.get_json()

    # A queued job (no worker runs here) and its message waiting in the data queue.
    seed_market(settings, bars=1500)
    r = client.post("/clm/train", headers=auth("operator"), json={
        "model_type": "lightgbm", "symbol": "PLANTED", "timeframe": "1h",
        "dataset_span_days": SPAN_DAYS // 2, "trigger_reason": "drift_detected"})
    assert r.status_code == 202, r.get_json()

    # Drift checks: model A drifted on its latest check (an older calm one is history),
    # model B's latest check could not run.
    with transaction(settings.database_url) as session:
        session.add_all([
            _drift("xgboost_btcusdt_1h", versions[0], minutes_ago=90, drifted=False,
                   share=0.1, prediction_psi=0.05, psis=(0.05, 0.1, 0.3)),
            _drift("xgboost_btcusdt_1h", versions[0], minutes_ago=5, drifted=True,
                   share=0.5, prediction_psi=0.27, psis=(0.25, 0.4, 0.1, 0.35)),
            _drift("lightgbm_ethusdt_1h", "v1", minutes_ago=3, drifted=False,
                   status="error"),
        ])

    after = scrape(client)
    assert value(after, "clm_promotions_total") == 2.0
    assert value(after, "clm_rollbacks_total") == 1.0
    assert value(after, "clm_model_versions", status="production") == 1.0
    assert value(after, "clm_training_jobs", status="queued",
                 trigger_reason="drift_detected") == 1.0
    assert value(after, "clm_queue_depth", queue="data") == 1.0
    a = {"model_id": "xgboost_btcusdt_1h", "version": versions[0]}
    assert value(after, "clm_drift_feature_share", **a) == 0.5
    assert value(after, "clm_drift_max_feature_psi", **a) == 0.4
    assert value(after, "clm_drift_prediction_psi", **a) == 0.27
    assert value(after, "clm_drift_detected", **a) == 1.0
    stamp = value(after, "clm_drift_last_check_timestamp_seconds", **a, status="ok")
    assert stamp is not None and abs(stamp - (utcnow() - timedelta(minutes=5)).timestamp()) < 60
    b = {"model_id": "lightgbm_ethusdt_1h", "version": "v1"}
    assert value(after, "clm_drift_detected", **b) is None  # no score from a failed check
    assert value(after, "clm_drift_last_check_timestamp_seconds", **b, status="error")
    assert value(after, "clm_drift_checks_total", status="ok", drifted="true") == 1.0
    assert value(after, "clm_drift_checks_total", status="ok", drifted="false") == 1.0
    assert value(after, "clm_drift_checks_total", status="error", drifted="false") == 1.0

    # Request latency by endpoint (the route pattern, not the raw URL), method and status.
    # The histogram lives for the process (other tests' requests too): compare deltas.
    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    count = "clm_http_request_duration_seconds_count"
    assert delta(count, endpoint="/clm/models", method="POST", status="201") == 2.0
    assert delta(count, endpoint="/clm/promote", method="POST", status="200") == 2.0
    assert delta(count, endpoint="/clm/train", method="POST", status="202") == 1.0
    assert delta("clm_http_request_duration_seconds_bucket", endpoint="/clm/train",
                 method="POST", status="202", le="+Inf") == 1.0
    client.get("/clm/jobs/not-a-job", headers=auth("viewer"))
    before, after = after, scrape(client)
    assert delta(count, endpoint="/clm/jobs/<job_id>", method="GET", status="404") == 1.0
