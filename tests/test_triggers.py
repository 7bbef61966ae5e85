"""The scheduler tick and trigger arbitration, with a frozen clock (`now` passed in) on
SQLite and PostgreSQL: periodic due / not due per model type, the tracked set, cooldown,
coalescing of simultaneous triggers into one job, priority, a second scheduler doing no
harm, and the real Celery tick task."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.db import transaction
from app.flows.checks import run_tick
from app.flows.training import arbitrate
from app.ml.data.synthetic import generate_ohlcv
from app.services.triggers import record_request
from tests.support.continuous import seed_market, start


@pytest.fixture(autouse=True)
def _no_relay_kick():
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


def _market(settings, symbol: str = "BTCUSDT", bars: int = 1500) -> None:
    seed_market(settings, generate_ohlcv("random_walk", bars, "1h", seed=5,
                                         start=start(bars)), symbol)


def _production(settings, model_type: str, symbol: str = "BTCUSDT") -> dict[str, Any]:
    """An externally registered version put in production (metrics only, no artifact)."""
    from app.services import registry

    metrics = {"sharpe": 1.1, "win_rate": 0.55, "profit_factor": 1.4, "max_drawdown": 0.1,
               "trades": 60, "total_return": 0.1, "promotion_score": 60.0}
    with transaction(settings.database_url, immediate=True) as session:
        v = registry.register_version(session, model_type=model_type, symbol=symbol,
                                      timeframe="1h", metrics=metrics, actor="test")
        registry.promote(session, v["model_id"], v["version"], actor="test", reason="test")
    return v


def _created_at(settings, model_id: str) -> datetime:
    from app.core.timeutil import ensure_utc
    from app.models.registry import ModelVersion

    with transaction(settings.database_url) as session:
        return ensure_utc(session.scalar(select(ModelVersion.created_at)
                                         .where(ModelVersion.model_id == model_id)))


def tick(settings, now: datetime):
    with transaction(settings.database_url, immediate=True) as session:
        return run_tick(session, settings, now=now)


def decisions(settings, **filters: Any) -> list[dict[str, Any]]:
    from app.services.triggers import list_decisions

    with transaction(settings.database_url) as session:
        return [d.to_dict() for d in list_decisions(session, limit=500, **filters)][::-1]


def finish_job(settings, job_id: str, at: datetime) -> None:
    """End a job the way the pipeline does when it fails (app.services.jobs.fail_job)."""
    from app.services import jobs

    with transaction(settings.database_url, immediate=True) as session:
        assert jobs.fail_job(session, job_id, "ended by the test", now=at)


# -- periodic ---------------------------------------------------------------------------
def test_periodic_due_and_not_due_per_model_type(settings):
    _market(settings)
    ids = {t: _production(settings, t)["model_id"] for t in
           ("xgboost", "lightgbm", "nhits", "rl_v2")}
    t0 = max(_created_at(settings, m) for m in ids.values())

    result = tick(settings, t0 + timedelta(hours=23))
    assert (result.tracked, result.due, result.job_ids) == (4, 0, [])

    # RL: 24 h — the RL model is retrained by the tick like the others.
    result = tick(settings, t0 + timedelta(hours=25))
    assert result.due == 1 and len(result.job_ids) == 1
    [rl] = decisions(settings, model_id=ids["rl_v2"])
    assert (rl["reason"], rl["outcome"]) == ("periodic", "triggered")
    assert rl["details"]["interval_hours"] == 24.0

    # XGBoost / LightGBM: 168 h. NHITS (336 h) is still not due.
    result = tick(settings, t0 + timedelta(hours=169))
    triggered = {d["model_id"] for d in decisions(settings, outcome="triggered")
                 if d["model_id"] != ids["rl_v2"]}
    assert triggered == {ids["xgboost"], ids["lightgbm"]}
    assert decisions(settings, model_id=ids["nhits"]) == []

    # NHITS: 336 h, and the deep model is retrained by the tick too.
    assert tick(settings, t0 + timedelta(hours=337)).due >= 1
    [nh] = decisions(settings, model_id=ids["nhits"])
    assert nh["details"]["interval_hours"] == 336.0 and nh["outcome"] == "triggered"


def test_intervals_are_configurable_per_type_and_per_model(db_url, make_settings):
    settings = make_settings(db_url, CLM_RETRAIN_INTERVAL_HOURS='{"xgboost": 12}',
                             CLM_TRIGGER_COOLDOWN_HOURS="1")
    from app.core.timeutil import utcnow
    from app.services.triggers import track_model

    _market(settings)
    xgb = _production(settings, "xgboost")["model_id"]
    t0 = _created_at(settings, xgb)
    assert tick(settings, t0 + timedelta(hours=11)).due == 0
    assert len(tick(settings, t0 + timedelta(hours=13)).job_ids) == 1

    _market(settings, "ETHUSDT")
    with transaction(settings.database_url, immediate=True) as session:
        item, created = track_model(session, settings, model_type="lightgbm",
                                    symbol="ethusdt", timeframe="1h", interval_hours=2.0,
                                    now=utcnow())
    assert created and item["interval_hours"] == 2.0 and item["source"] == "explicit"
    # Tracked explicitly and never trained: due at once, then every 2 h after that job.
    first = tick(settings, t0)
    assert [d["model_id"] for d in decisions(settings, outcome="triggered")][-1] == \
        "lightgbm_ethusdt_1h"
    finish_job(settings, first.job_ids[0], t0)
    # The job was created at real time (≈ t0): 1 h later nothing is due; 3 h later the
    # 2 h interval has passed (and the 1 h cooldown after it ended).
    assert tick(settings, t0 + timedelta(hours=1)).job_ids == []
    assert len(tick(settings, t0 + timedelta(hours=3)).job_ids) == 1


def test_a_second_scheduler_running_at_the_same_time_does_no_harm(settings):
    _market(settings)
    model_id = _production(settings, "xgboost")["model_id"]
    now = _created_at(settings, model_id) + timedelta(hours=200)
    results: list[Any] = []
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            results.append(tick(settings, now))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(len(r.job_ids) for r in results) == [0, 1]
    assert len(decisions(settings, model_id=model_id)) == 1  # one key per due slot


# -- arbitration ------------------------------------------------------------------------
def _request(settings, model_id: str, reason: str, key: str, now: datetime, **kw: Any):
    with transaction(settings.database_url, immediate=True) as session:
        return record_request(session, settings, model_id=model_id, reason=reason,
                                dedupe_key=key, source="test", now=now, **kw)


def _arbitrate(settings, now: datetime, model_ids: list[str] | None = None) -> list[str]:
    with transaction(settings.database_url, immediate=True) as session:
        return arbitrate(session, settings, now=now, model_ids=model_ids)


def test_simultaneous_triggers_coalesce_into_one_job_by_priority(settings, client, auth):
    _market(settings)
    model_id = _production(settings, "xgboost")["model_id"]
    now = _created_at(settings, model_id) + timedelta(hours=200)  # periodic is due too
    _request(settings, model_id, "drift_detected", "d1", now)
    _request(settings, model_id, "regime_change", "r1", now, regime="volatile_flat")
    _request(settings, model_id, "performance_degraded", "p1", now)

    result = tick(settings, now)
    assert len(result.job_ids) == 1
    job_id = result.job_ids[0]
    outcome = {d["reason"]: (d["outcome"], d["job_id"]) for d in decisions(settings)}
    assert outcome == {
        "performance_degraded": ("triggered", job_id),
        "drift_detected": ("coalesced", job_id),
        "regime_change": ("coalesced", job_id),
        "periodic": ("coalesced", job_id),
    }
    job = client.get(f"/clm/jobs/{job_id}", headers=auth("viewer")).get_json()
    assert job["trigger_reason"] == "performance_degraded"

    # Arriving while that job runs: recorded and coalesced into it, not dropped.
    _request(settings, model_id, "drift_detected", "d2", now + timedelta(minutes=5))
    assert _arbitrate(settings, now + timedelta(minutes=5)) == []
    late = decisions(settings, reason="drift_detected")[-1]
    assert (late["outcome"], late["job_id"]) == ("coalesced", job_id)
    assert "already active" in late["detail"]

    # Everything is visible through the API, filterable.
    served = client.get(f"/clm/triggers?model_id={model_id}&outcome=coalesced",
                        headers=auth("viewer")).get_json()["items"]
    assert len(served) == 4 and {d["job_id"] for d in served} == {job_id}
    page1 = client.get("/clm/triggers?limit=2", headers=auth("viewer")).get_json()
    page2 = client.get(f"/clm/triggers?limit=2&cursor={page1['next_cursor']}",
                       headers=auth("viewer")).get_json()
    assert len(page1["items"]) == 2 and len(page2["items"]) == 2
    assert {d["id"] for d in page1["items"]}.isdisjoint({d["id"] for d in page2["items"]})
    assert client.get("/clm/triggers?outcome=nope", headers=auth("viewer")).status_code == 422


def test_manual_outranks_automatic_triggers(settings):
    _market(settings)
    model_id = _production(settings, "xgboost")["model_id"]
    now = _created_at(settings, model_id) + timedelta(hours=1)
    _request(settings, model_id, "performance_degraded", "p1", now)
    _request(settings, model_id, "manual", "m1", now, params={"n_estimators": 20},
             dataset_span_days=60)
    [job_id] = _arbitrate(settings, now)
    by_reason = {d["reason"]: d for d in decisions(settings)}
    assert by_reason["manual"]["outcome"] == "triggered"
    assert by_reason["performance_degraded"]["outcome"] == "coalesced"
    from app.services import jobs

    with transaction(settings.database_url) as session:
        job = jobs.get_job(session, job_id)
    assert job["trigger_reason"] == "manual"


def test_cooldown_after_training_suppresses_automatic_triggers(settings):
    _market(settings)
    model_id = _production(settings, "xgboost")["model_id"]
    t = _created_at(settings, model_id) + timedelta(hours=2)
    _request(settings, model_id, "manual", "m0", t, dataset_span_days=60)
    [first] = _arbitrate(settings, t)
    finish_job(settings, first, t)  # a training just ended

    _request(settings, model_id, "drift_detected", "d1", t + timedelta(hours=1))
    assert _arbitrate(settings, t + timedelta(hours=1)) == []
    [d1] = decisions(settings, reason="drift_detected")
    assert d1["outcome"] == "suppressed"
    assert d1["cooldown_until"] == (t + timedelta(hours=6)).isoformat().replace("+00:00", "Z")

    # A person is never suppressed by the cooldown.
    _request(settings, model_id, "manual", "m1", t + timedelta(hours=2), dataset_span_days=60)
    [second] = _arbitrate(settings, t + timedelta(hours=2))
    finish_job(settings, second, t + timedelta(hours=2))

    # After the cooldown of the last training, automatic triggers start jobs again.
    _request(settings, model_id, "drift_detected", "d2", t + timedelta(hours=7))
    assert _arbitrate(settings, t + timedelta(hours=7)) == []  # 5 h after the 2nd one
    _request(settings, model_id, "drift_detected", "d3", t + timedelta(hours=8, minutes=1))
    assert len(_arbitrate(settings, t + timedelta(hours=8, minutes=1))) == 1
    assert [d["outcome"] for d in decisions(settings, reason="drift_detected")] == [
        "suppressed", "suppressed", "triggered"]


def test_duplicate_requests_are_one_decision(settings):
    _market(settings)
    model_id = _production(settings, "xgboost")["model_id"]
    now = _created_at(settings, model_id)
    a = _request(settings, model_id, "drift_detected", "same", now)
    b = _request(settings, model_id, "drift_detected", "same", now + timedelta(hours=1))
    assert a.id == b.id
    assert len(decisions(settings)) == 1


# -- tracked models ---------------------------------------------------------------------
def test_tracked_api_lists_explicit_and_production_models(settings, client, auth):
    _market(settings)
    prod = _production(settings, "xgboost")["model_id"]
    body = {"model_type": "lightgbm", "symbol": "btcusdt", "timeframe": "1h",
            "interval_hours": 48, "drift_psi_threshold": 0.3, "min_trades": 30}
    assert client.post("/clm/tracked", json=body, headers=auth("viewer")).status_code == 403
    created = client.post("/clm/tracked", json=body, headers=auth("operator"))
    assert created.status_code == 201, created.get_json()
    item = created.get_json()
    assert item["model_id"] == "lightgbm_btcusdt_1h" and item["interval_hours"] == 48
    assert item["thresholds"]["drift_psi_threshold"] == 0.3
    assert item["thresholds"]["min_trades"] == 30
    assert client.post("/clm/tracked", json=body, headers=auth("operator")).status_code == 200

    listed = client.get("/clm/tracked", headers=auth("viewer")).get_json()["items"]
    assert {(i["model_id"], i["source"]) for i in listed} == {
        (prod, "production"), ("lightgbm_btcusdt_1h", "explicit")}
    only = client.get("/clm/tracked?source=production", headers=auth("viewer")).get_json()
    assert [i["model_id"] for i in only["items"]] == [prod]

    bad = client.post("/clm/tracked", json={**body, "interval_hours": -1},
                      headers=auth("operator"))
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "interval_hours"
    assert client.delete("/clm/tracked/xgboost_nothing_1h",
                         headers=auth("operator")).status_code == 404
    assert client.delete("/clm/tracked/not-a-model", headers=auth("operator")).status_code == 404

    # Untracking a production model keeps it out of the tick until tracked again.
    gone = client.delete(f"/clm/tracked/{prod}", headers=auth("operator"))
    assert gone.status_code == 200 and gone.get_json()["tracked"] is False
    listed = client.get("/clm/tracked", headers=auth("viewer")).get_json()["items"]
    assert [i["model_id"] for i in listed] == ["lightgbm_btcusdt_1h"]
    result = tick(settings, _created_at(settings, prod) + timedelta(hours=500))
    assert result.tracked == 1
    assert all(d["model_id"] != prod for d in decisions(settings))


def test_track_and_untrack_from_the_cli(settings):
    import json

    from click.testing import CliRunner

    from app.cli import cli

    _market(settings)
    runner = CliRunner()
    out = runner.invoke(cli, ["track", "xgboost", "BTCUSDT", "1h", "--interval-hours", "72",
                              "--min-trades", "10"])
    assert out.exit_code == 0, out.output
    tracked = json.loads(out.output)
    assert tracked["model_id"] == "xgboost_btcusdt_1h" and tracked["interval_hours"] == 72
    assert tracked["created"] is True
    out = runner.invoke(cli, ["untrack", "xgboost_btcusdt_1h"])
    assert out.exit_code == 0 and json.loads(out.output)["tracked"] is False
    out = runner.invoke(cli, ["untrack", "xgboost", "BTCUSDT", "1h"])
    assert out.exit_code == 2 and "not tracked" in out.output
    out = runner.invoke(cli, ["track", "xgboost", "BTC USDT", "1h"])
    assert out.exit_code == 2 and "symbol" in out.output



@pytest.mark.parametrize(
    ("params", "field"),
    [({"bogus_param": 1}, "params.bogus_param"), ({"n_estimators": "abc"}, "params.n_estimators"),
     ({"max_depth": 10**9}, "params.max_depth")],
)
def test_tracking_refuses_params_its_trainer_rejects(settings, client, auth, params, field):
    """Params a retrain would refuse are refused when tracking (422 naming them, as
    POST /clm/train does), not stored to fail at every later tick; the CLI too."""
    from click.testing import CliRunner

    from app.cli import cli

    body = {"model_type": "xgboost", "symbol": "BTCUSDT", "timeframe": "1h", "params": params}
    bad = client.post("/clm/tracked", json=body, headers=auth("operator"))
    assert bad.status_code == 422, bad.get_json()
    assert bad.mimetype == "application/problem+json"
    assert [e["field"] for e in bad.get_json()["errors"]] == [field]
    assert client.get("/clm/tracked", headers=auth("viewer")).get_json()["items"] == []
    out = CliRunner().invoke(cli, ["track", "xgboost", "BTCUSDT", "1h", "--params",
                                   json.dumps(params)])
    assert out.exit_code == 2 and field in out.output, out.output
    good = client.post("/clm/tracked", json={**body, "params": {"max_depth": 3}},
                       headers=auth("operator"))
    assert good.status_code == 201 and good.get_json()["params"] == {"max_depth": 3}


# -- the real tasks ---------------------------------------------------------------------
def test_the_celery_tick_task_starts_due_jobs_once(settings):
    from app.core.timeutil import utcnow
    from app.services.triggers import track_model
    from workers.schedule import beat_schedule
    from workers.tasks_continuous import scheduler_tick

    _market(settings)
    with transaction(settings.database_url, immediate=True) as session:
        track_model(session, settings, model_type="xgboost", symbol="BTCUSDT",
                    timeframe="1h", now=utcnow())
    first = scheduler_tick.apply().get()
    second = scheduler_tick.apply().get()
    assert len(first["job_ids"]) == 1 and second["job_ids"] == []
    [decision] = decisions(settings)
    assert decision["outcome"] == "triggered" and decision["job_id"] == first["job_ids"][0]

    # Beat holds a small fixed set of entries, never one per model.
    entries = beat_schedule(settings)
    tasks = {e["task"] for e in entries.values()}
    assert {"clm.continuous.tick", "clm.continuous.drift_check",
            "clm.continuous.performance_check", "clm.events.relay"} <= tasks
    assert len(entries) <= 7  # + clm-feeds-poll (issue 12)
    assert entries["clm-scheduler-tick"]["schedule"] == settings.scheduler_tick_s


def test_status_and_openapi_show_the_scheduler(settings, client, auth):
    _market(settings)
    _production(settings, "xgboost")
    status = client.get("/clm/status", headers=auth("viewer")).get_json()
    assert status["scheduler"]["tracked_models"] == 1
    assert status["scheduler"]["outbox"]["unpublished"] == 1  # model.promoted
    doc = client.get("/openapi.json").get_json()
    for path, methods in {"/clm/triggers": {"get"}, "/clm/tracked": {"get", "post"},
                          "/clm/tracked/{model_id}": {"delete"}, "/clm/drift": {"get"},
                          "/clm/performance": {"get", "post"},
                          "/clm/regimes/champions": {"get"}, "/clm/events": {"get"}}.items():
        assert methods <= set(doc["paths"][path]), path
    assert doc["paths"]["/clm/tracked"]["post"]["description"].startswith(
        "Requires role `operator`")
