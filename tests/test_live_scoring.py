"""Live scoring and serving: production and shadow versions scored on new bars of a planted
series within one scheduler tick, equal to `run_backtest` on the same positions and bars,
incremental == full recompute; GET …/live, /serving (ETag, 304), …/artifact (sha256), 404s
as problem+json, Prometheus series."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from app.ml.backtest import run_backtest
from app.ml.data.synthetic import generate_ohlcv
from tests.support.continuous import SMALL_XGB, make_production, seed_market, start

N_BARS, N_TRAIN, N_FIRST = 760, 600, 700


@pytest.fixture(autouse=True)
def _no_relay_kick():
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


def _planted() -> pd.DataFrame:
    frame = generate_ohlcv("planted", N_BARS, "1h", seed=5)
    frame.index = pd.date_range(start=start(N_BARS - 1), periods=N_BARS, freq="1h",
                                name="timestamp")
    return frame


def _two_versions(settings, frame):
    """A production version and a shadow one, both trained on the first N_TRAIN bars."""
    from app.db import transaction
    from app.services import registry

    prod = make_production(settings, frame.iloc[:N_TRAIN])
    shadow = make_production(settings, frame.iloc[:N_TRAIN], status_only=True,
                             params={**SMALL_XGB, "n_estimators": 10})
    with transaction(settings.database_url, immediate=True) as session:
        registry.set_status(session, shadow["model_id"], shadow["version"], "shadow",
                            actor="test", reason="shadow for live scoring")
    return prod, shadow


def _record(client, auth, v):
    r = client.get(f"/clm/models/{v['model_id']}/versions/{v['version']}/live",
                   headers=auth("viewer"))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _check_against_backtest(settings, frame, v, body):
    """The stored positions, run through `run_backtest` over the same bars, give the
    record's metrics and equity."""
    from app.db import transaction
    from app.services.live_scores import live_positions

    with transaction(settings.database_url) as session:
        pts = live_positions(session, v["model_id"], v["version"])
    close = frame["close"].reindex(pts.index)
    assert not close.isna().any()
    full = run_backtest(close.to_numpy(), pts["position"].to_numpy(), fee_bps=settings.fee_bps,
                        slippage_bps=settings.slippage_bps, timestamps=pts.index)
    for key, value in full.metrics.items():
        assert body["metrics"][key] == (pytest.approx(value, rel=1e-9, abs=1e-12)
                                        if value is not None else None), key
    assert [e for _, e in body["equity"]] == full.equity.tolist()
    return pts


def test_production_and_shadow_scored_each_tick_equal_backtest_and_full_recompute(
        settings, client, auth):
    from app.db import transaction
    from app.flows.checks import tick
    from app.models.live import LiveScore

    frame = _planted()
    seed_market(settings, frame.iloc[:N_FIRST])
    versions = _two_versions(settings, frame)
    # before any tick: an empty record, not a 404
    empty = _record(client, auth, versions[0])
    assert empty["bars"] == 0 and empty["metrics"] is None and empty["equity"] == []

    report = tick(settings)
    assert report["live"]["created"] == 2 and report["live"]["scored"] == 2
    first = {v["version"]: _record(client, auth, v) for v in versions}
    for v in versions:
        body = first[v["version"]]
        assert body["bars"] == N_FIRST - N_TRAIN  # every bar after the training data
        assert pd.Timestamp(body["since"]) == frame.index[N_TRAIN]
        _check_against_backtest(settings, frame.iloc[:N_FIRST], v, body)

    # new bars continue the series, a few per tick: each tick grows both records
    n = N_FIRST
    for step in (1, 1, 3, 55):
        seed_market(settings, frame.iloc[n:n + step])
        n += step
        out = tick(settings)["live"]
        assert out["scored"] == 2 and out["bars"] == 2 * step
        assert out["feature_builds"] == 1  # one feature window shared by both versions
        for v in versions:
            body = _record(client, auth, v)
            assert body["bars"] == n - N_TRAIN
            assert pd.Timestamp(body["last_bar"]) == frame.index[n - 1]
    assert tick(settings)["live"]["scored"] == 0  # nothing new: nothing scored

    incremental = {}
    for v in versions:
        body = _record(client, auth, v)
        incremental[v["version"]] = (body, _check_against_backtest(settings, frame, v, body))
    assert sum(body["trades"] for body, _ in incremental.values()) > 0

    # full recompute: forget the records, score every bar after training in one run
    with transaction(settings.database_url, immediate=True) as session:
        for row in session.query(LiveScore).all():
            session.delete(row)
    assert tick(settings)["live"]["bars"] == 2 * (N_BARS - N_TRAIN)
    for v in versions:
        body = _record(client, auth, v)
        before, pts_before = incremental[v["version"]]
        pts = _check_against_backtest(settings, frame, v, body)
        assert pts["position"].tolist() == pts_before["position"].tolist()
        assert body["equity"] == before["equity"]
        for key, value in before["metrics"].items():
            assert body["metrics"][key] == (pytest.approx(value, rel=1e-9)
                                            if value is not None else None)

    text = client.get("/metrics").get_data(as_text=True)
    for v in versions:
        status = "production" if v is versions[0] else "shadow"
        assert (f'clm_live_sharpe{{model_id="{v["model_id"]}",status="{status}",'
                f'version="{v["version"]}"}}') in text
        assert f'clm_live_max_drawdown{{model_id="{v["model_id"]}"' in text

    bad = client.get(f"/clm/models/{versions[0]['model_id']}/versions/v0nope/live",
                     headers=auth("viewer"))
    assert bad.status_code == 404 and bad.mimetype == "application/problem+json"


@pytest.mark.parametrize(("model_type", "params"), [
    ("nhits", {"max_steps": 20, "hidden_size": 8, "lookback": 16}),
    ("patchtst", {"max_steps": 20, "hidden_size": 8, "lookback": 16, "encoder_layers": 1}),
    ("rl_v2", {"total_timesteps": 512, "n_steps": 32, "lookback": 8}),
    ("rl_v3", {"total_timesteps": 256, "learning_starts": 64, "lookback": 8}),
])
def test_deep_and_rl_versions_are_scored_live_like_the_others(settings, client, auth,
                                                              model_type, params):
    """The lag window rides in the version's lineage: live scoring builds it from the
    bars before each new one, and the record equals `run_backtest` on its positions."""
    from app.flows.checks import tick

    frame = _planted()
    seed_market(settings, frame.iloc[:N_FIRST])
    v = make_production(settings, frame.iloc[:N_TRAIN], model_type=model_type, params=params)
    assert tick(settings)["live"]["scored"] == 1
    seed_market(settings, frame.iloc[N_FIRST:N_FIRST + 5])
    out = tick(settings)["live"]
    assert (out["scored"], out["bars"], out["errors"]) == (1, 5, 0)
    body = _record(client, auth, v)
    assert body["bars"] == N_FIRST + 5 - N_TRAIN
    _check_against_backtest(settings, frame.iloc[:N_FIRST + 5], v, body)


def test_serving_follows_the_champion_of_the_regime_the_market_is_in(settings, client, auth):
    """With regime champions, /serving names the champion of the regime the market is in
    now (the regime check's rule on the last bars); a champion of another regime changes
    the regime map (and so the tag) but not the version to run."""
    from app.db import transaction
    from app.services import serving
    from app.services.checks.regime import consider_regime_champion

    frame = _planted()
    seed_market(settings, frame.iloc[:N_FIRST])
    prod, shadow = _two_versions(settings, frame)
    url = f"/clm/models/{prod['model_id']}/serving"
    with transaction(settings.database_url) as session:
        now = serving.current_regime(session, settings, prod["model_id"])
    assert now is not None  # the planted series has a clear regime in its last bars
    other = "a-regime-not-now"
    with transaction(settings.database_url, immediate=True) as session:
        assert consider_regime_champion(session, model_id=prod["model_id"], regime=other,
                                        version=shadow["version"], metrics={"sharpe": 2.0},
                                        passed=True)
    body = client.get(url, headers=auth("viewer")).get_json()
    assert body["version"] == prod["version"] and body["current_regime"] == now
    assert body["regimes"][other]["version"] == shadow["version"]
    before = client.get(url, headers=auth("viewer")).headers["ETag"]
    with transaction(settings.database_url, immediate=True) as session:
        assert consider_regime_champion(session, model_id=prod["model_id"], regime=now,
                                        version=shadow["version"], metrics={"sharpe": 2.0},
                                        passed=True)
    r = client.get(url, headers={**auth("viewer"), "If-None-Match": before})
    assert r.status_code == 200 and r.headers["ETag"] != before
    body = r.get_json()
    assert (body["version"], body["regime"], body["current_regime"]) == (
        shadow["version"], now, now)
    assert body["allocation"] == {shadow["version"]: 1.0}
    assert body["artifact"]["sha256"] == shadow["artifact"]["sha256"]


def test_serving_etag_changes_exactly_when_production_changes(settings, client, auth):
    from app.db import transaction
    from app.services import registry

    frame = _planted()
    seed_market(settings, frame.iloc[:N_FIRST])
    prod, shadow = _two_versions(settings, frame)
    url = f"/clm/models/{prod['model_id']}/serving"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=auth("viewer"))
    assert r.status_code == 200
    body, etag = r.get_json(), r.headers["ETag"]
    assert body["version"] == prod["version"] and body["status"] == "production"
    assert body["allocation"] == {prod["version"]: 1.0}
    assert body["artifact"]["sha256"] == prod["artifact"]["sha256"]
    assert body["artifact"]["download"].startswith("http")
    # unchanged: 304 with the same tag, every time (also after scoring and other writes)
    for _ in range(2):
        again = client.get(url, headers={**auth("viewer"), "If-None-Match": etag})
        assert again.status_code == 304 and again.headers["ETag"] == etag
    with transaction(settings.database_url, immediate=True) as session:
        registry.update_version(session, shadow["model_id"], shadow["version"],
                                actor="test", notes="not a production change")
    assert client.get(url, headers={**auth("viewer"), "If-None-Match": etag}).status_code == 304

    # the artifact: the bytes hash to the registry's sha256, ETag = sha256
    dl = client.get(body["artifact"]["download"].split("localhost", 1)[-1],
                    headers=auth("viewer"))
    assert dl.status_code == 200
    assert hashlib.sha256(dl.data).hexdigest() == prod["artifact"]["sha256"]
    assert dl.headers["ETag"] == f'"{prod["artifact"]["sha256"]}"'
    assert client.get(body["artifact"]["download"].split("localhost", 1)[-1],
                      headers={**auth("viewer"), "If-None-Match": dl.headers["ETag"]}
                      ).status_code == 304

    # production changes: a new tag, the old one no longer answers 304
    with transaction(settings.database_url, immediate=True) as session:
        registry.promote(session, shadow["model_id"], shadow["version"], actor="test",
                         reason="shadow wins")
    changed = client.get(url, headers={**auth("viewer"), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.get_json()["version"] == shadow["version"]
    assert changed.get_json()["allocation"] == {shadow["version"]: 1.0}

    # 404s, all problem+json
    reg = client.post("/clm/models", headers=auth("operator"), json={
        "model_type": "xgboost", "symbol": "ETHUSDT", "timeframe": "1h",
        "metrics": {"sharpe": 1.0}})
    assert reg.status_code == 201, reg.get_json()
    ext = reg.get_json()
    for path in (f"/clm/models/{ext['model_id']}/versions/{ext['version']}/artifact",
                 f"/clm/models/{prod['model_id']}/versions/v0nope/artifact",
                 f"/clm/models/{ext['model_id']}/serving",  # nothing in production
                 "/clm/models/xgboost_nopeusdt_1h/serving",
                 "/clm/models/not-a-model/serving"):
        r = client.get(path, headers=auth("viewer"))
        assert r.status_code == 404, path
        assert r.mimetype == "application/problem+json"
        assert {"type", "title", "status", "detail"} <= set(r.get_json())
