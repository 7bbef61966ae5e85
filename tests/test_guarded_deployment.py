"""Guarded deployment on live records (issue 13): the paired champion/challenger test and
PSR (against Bailey & López de Prado's worked example and an independent bootstrap), the
Thompson allocation (moves toward the better arm, floor, cap, step, sum 1, serving ETag),
the shadow exit rule on planted vs random-walk continuations (real model, real ticks),
the auto-rollback guard (rolls back when the previous version holds up, not when both
degrade, no flapping under noise) and the allocation routes (403, 422)."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from app.analysis.bandit import NormalInverseGamma, constrain_weights, thompson_probabilities
from app.analysis.challenger import paired_sharpe_test
from app.analysis.overfitting import (
    expected_max_sharpe,
    minimum_track_record_length,
    probabilistic_sharpe_ratio,
)
from app.ml.data.synthetic import generate_ohlcv
from tests.support.continuous import make_production, seed_market, start

PPY = 8760.0


@pytest.fixture(autouse=True)
def _no_relay_kick():
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


# -- statistics ----------------------------------------------------------------------------
def test_psr_matches_the_deflated_sharpe_papers_worked_example():
    # Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example:
    # annualised SR 2.5 over 1,250 daily returns (250 a year), skew -3, kurtosis 10, the
    # best of N = 100 trials whose annualised SR variance is 0.5 -> SR0 = 0.1132 per day,
    # DSR = PSR(SR0) = 0.9004.
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    psr = probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, skew=-3, kurtosis=10)
    assert psr == pytest.approx(0.9004, abs=5e-5)
    # minTRL is the track length at which PSR reaches the confidence level
    n = minimum_track_record_length(0.1, 0.02, 0.9, skew=-0.5, kurtosis=5)
    assert probabilistic_sharpe_ratio(0.1, 0.02, round(n) + 1, -0.5, 5) == pytest.approx(
        0.9, abs=5e-3)
    assert math.isinf(minimum_track_record_length(0.0, 0.1, 0.9))


def _returns(kind: str, n: int, seed: int) -> np.ndarray:
    """Per-bar returns of a long position on a synthetic series."""
    close = generate_ohlcv(kind, n + 1, "1h", seed=seed)["close"].to_numpy()
    return close[1:] / close[:-1] - 1.0


def _independent_interval(a, b, block, reps, confidence, seed):
    """A stationary bootstrap written here (geometric blocks, wrap-around), not arch's."""
    rng = np.random.default_rng(seed)
    n = a.size
    out = np.empty(reps)
    for r in range(reps):
        idx = np.empty(n, dtype=np.int64)
        idx[0] = rng.integers(n)
        for i in range(1, n):
            idx[i] = rng.integers(n) if rng.random() < 1.0 / block else (idx[i - 1] + 1) % n
        sa, sb = a[idx], b[idx]
        out[r] = (sa.mean() / sa.std(ddof=1) - sb.mean() / sb.std(ddof=1)) * math.sqrt(PPY)
    tail = (1 - confidence) / 2
    return np.quantile(out, [tail, 1 - tail])


def test_paired_test_same_edge_straddles_zero_better_challenger_is_preferred():
    rng = np.random.default_rng(3)
    champion = _returns("planted", 1500, seed=11)
    same = champion + rng.normal(0.0, 0.002, champion.size)  # same edge, its own noise
    test = paired_sharpe_test(same, champion, periods_per_year=PPY, confidence=0.9)
    lo, hi = test.interval
    assert lo < 0.0 < hi and test.verdict == "inconclusive" and not test.preferred
    assert test.bars == champion.size and test.psr is not None and 0 < test.psr < 1
    better = champion + 0.002 + rng.normal(0.0, 0.002, champion.size)
    up = paired_sharpe_test(better, champion, periods_per_year=PPY, confidence=0.9)
    assert up.verdict == "better" and up.preferred and up.interval[0] > 0
    assert up.psr > 0.99
    down = paired_sharpe_test(champion, better, periods_per_year=PPY, confidence=0.9)
    assert down.verdict == "worse"
    # the interval agrees with an independent bootstrap of the same block length
    ref = _independent_interval(same, champion, test.block_length, 400, 0.9, seed=1)
    width = hi - lo
    assert abs(ref[0] - lo) < 0.25 * width and abs(ref[1] - hi) < 0.25 * width
    short = paired_sharpe_test(better[:20], champion[:20], periods_per_year=PPY)
    assert short.verdict == "inconclusive" and short.interval is None


# -- Thompson --------------------------------------------------------------------------------
def test_thompson_moves_toward_the_better_arm_within_floor_cap_and_step():
    rng = np.random.default_rng(0)
    good = _returns("random_walk", 2000, seed=1) + 0.0008
    plain = _returns("random_walk", 2000, seed=2)
    weights = {"prod": 1.0}
    trail = []
    for bars in range(20, 2001, 100):
        post = {k: NormalInverseGamma.prior(0.005).update(r[:bars])
                for k, r in (("prod", plain), ("new", good))}
        probs = thompson_probabilities(post, rng)
        new = constrain_weights(probs, weights, production="prod", floor=0.5, cap=0.3,
                                max_step=0.05)
        assert sum(new.values()) == pytest.approx(1.0)
        assert new["prod"] >= 0.5 - 1e-9 and new["new"] <= 0.3 + 1e-9
        assert all(abs(new[k] - weights.get(k, 0.0)) <= 0.05 + 1e-9 for k in new)
        weights = new
        trail.append(new["new"])
    assert trail[-1] == pytest.approx(0.3) and trail[0] < 0.1  # moved to the cap
    # random targets: always a distribution inside the bounds
    for _ in range(200):
        names = [f"v{i}" for i in range(int(rng.integers(2, 6)))]
        t = dict(zip(names, rng.dirichlet(np.ones(len(names))), strict=True))
        prev = dict(zip(names, rng.dirichlet(np.ones(len(names))), strict=True))
        w = constrain_weights(t, prev, production="v0", floor=0.4, cap=0.2, max_step=0.1)
        assert sum(w.values()) == pytest.approx(1.0) and w["v0"] >= 0.4 - 1e-9
        assert all(0 <= v <= 1 for v in w.values())


# -- live records planted for the guard and the allocation ------------------------------------
def _version(session, symbol, status="candidate"):
    from app.services import registry

    return registry.register_version(
        session, model_type="xgboost", symbol=symbol, timeframe="1h",
        metrics={"sharpe": 1.2, "win_rate": 0.55, "profit_factor": 1.4, "max_drawdown": 0.1,
                 "trades": 60, "total_return": 0.2}, status=status, actor="test",
        reason="test")["version"]


def _plant(session, model_id, version, stamps, rets, hold=5):
    """Store (or extend) a live record whose per-bar net returns are `rets` on `stamps`,
    with a new trade every `hold` bars (what live scoring would have written)."""
    from sqlalchemy import select

    from app.models.live import LiveScore, LiveScorePoint

    rec = session.scalar(select(LiveScore).where(LiveScore.model_id == model_id,
                                                 LiveScore.version == version))
    if rec is None:
        rec = LiveScore(model_id=model_id, version=version, symbol="X", timeframe="1h",
                        setup={"periods_per_year": PPY}, bars=0, trades=0, state={},
                        final_equity=1.0)
        session.add(rec)
        session.flush()
    equity = float(rec.final_equity or 1.0) * np.cumprod(1.0 + np.asarray(rets))
    pos = [1.0 if ((rec.bars + i) // hold) % 2 == 0 else -1.0 for i in range(len(rets))]
    session.add_all(LiveScorePoint(score_id=rec.id, ts=t.to_pydatetime(), position=p,
                                   equity=float(e))
                    for t, p, e in zip(stamps, pos, equity, strict=True))
    rec.bars += len(rets)
    rec.trades += len(rets) // hold
    rec.since = rec.since or stamps[0].to_pydatetime()
    rec.last_bar = stamps[-1].to_pydatetime()
    rec.final_equity = float(equity[-1])
    session.flush()


def _stamps(n, offset=0):
    first = pd.Timestamp(start(5000)) + pd.Timedelta(hours=offset)
    return pd.date_range(first, periods=n, freq="1h")


def _two_productions(settings, symbol):
    """v1 promoted, then v2 promoted over it (v1 is v2's rollback target)."""
    from app.db import transaction
    from app.services import registry

    with transaction(settings.database_url, immediate=True) as session:
        v1 = _version(session, symbol)
        v2 = _version(session, symbol)
        model_id = f"xgboost_{symbol.lower()}_1h"
        registry.promote(session, model_id, v1, actor="test", reason="first")
        registry.promote(session, model_id, v2, actor="test", reason="second")
    return model_id, v1, v2


def _audit(session, model_id, actor="clm"):
    from sqlalchemy import select

    from app.models.registry import AuditEntry

    return session.scalars(select(AuditEntry).where(AuditEntry.model_id == model_id,
                                                    AuditEntry.actor == actor)
                           .order_by(AuditEntry.id)).all()


def _events(session, type_):
    from sqlalchemy import select

    from app.models.continuous import OutboxEvent

    return session.scalars(select(OutboxEvent).where(OutboxEvent.type == type_)).all()


def test_auto_rollback_when_previous_holds_up_and_not_when_both_degrade(
        settings, client, auth):
    from app.db import transaction
    from app.flows.deployment import guard_deployments
    from app.models.continuous import TriggerDecision
    from app.services import registry

    assert settings.auto_rollback and settings.auto_rollback_sharpe_floor == 0.5  # defaults
    rng = np.random.default_rng(7)
    stamps = _stamps(600)
    good = 0.0006 + rng.normal(0, 0.004, 600)
    bad = -0.0006 + rng.normal(0, 0.004, 600)
    # 1: v2 degrades, v1 holds up on the same bars -> back to v1
    model_id, v1, v2 = _two_productions(settings, "RBA")
    with transaction(settings.database_url, immediate=True) as session:
        _plant(session, model_id, v1, stamps, good)
        _plant(session, model_id, v2, stamps, bad)
    out = guard_deployments(settings, now=stamps[-1].to_pydatetime())
    assert {"model_id": model_id, "version": v2, "action": "rolled_back",
            "production": v1} in out["guard"]
    with transaction(settings.database_url) as session:
        assert registry.get_production(session, model_id)["version"] == v1
        entry = [a for a in _audit(session, model_id) if a.action == "version.rolled_back"]
        assert len(entry) == 1 and entry[0].version == v1
        assert "Sharpe" in entry[0].reason and "previous production" in entry[0].reason
        assert any(e.payload["model_id"] == model_id and e.payload["actor"] == "clm"
                   for e in _events(session, "model.rolled_back"))
    # 2: both degrade -> production stays, model.degraded, a retrain is requested
    model_id, v1, v2 = _two_productions(settings, "RBB")
    with transaction(settings.database_url, immediate=True) as session:
        _plant(session, model_id, v1, stamps, bad[::-1].copy())
        _plant(session, model_id, v2, stamps, bad)
    now = stamps[-1].to_pydatetime()
    out = guard_deployments(settings, now=now)
    assert [g["action"] for g in out["guard"] if g["model_id"] == model_id] == ["degraded"]
    with transaction(settings.database_url) as session:
        assert registry.get_production(session, model_id)["version"] == v2
        degraded = [a for a in _audit(session, model_id) if a.action == "version.degraded"]
        assert len(degraded) == 1 and "degraded too" in degraded[0].reason
        assert any(e.payload["model_id"] == model_id for e in _events(session,
                                                                       "model.degraded"))
        decisions = session.query(TriggerDecision).filter_by(model_id=model_id).all()
        assert [str(d.reason.value) for d in decisions] == ["performance_degraded"]
    # within the cooldown (and latched) nothing more happens
    again = guard_deployments(settings, now=now + timedelta(hours=1))
    assert not [g for g in again["guard"] if g["model_id"] == model_id]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'clm_automatic_decisions_total{action="version.rolled_back"} 1.0' in metrics
    assert 'clm_automatic_decisions_total{action="version.degraded"} 1.0' in metrics


def test_no_flapping_under_a_noisy_series(settings):
    from app.db import transaction
    from app.flows.deployment import guard_deployments

    rng = np.random.default_rng(11)
    model_id, v1, v2 = _two_productions(settings, "NOISE")
    actions = []
    # 40 steps of 24 bars (960 hours); both versions' Sharpe wanders around the floor
    for step in range(40):
        stamps = _stamps(24, offset=24 * step)
        with transaction(settings.database_url, immediate=True) as session:
            for v in (v1, v2):
                _plant(session, model_id, v, stamps, 0.00005 + rng.normal(0, 0.004, 24))
        out = guard_deployments(settings, now=stamps[-1].to_pydatetime())
        actions += [g["action"] for g in out["guard"] if g["model_id"] == model_id]
    # cooldown 24 h and the latch: at most one rollback, never back and forth, and at most
    # one automatic action per cooldown window
    assert actions.count("rolled_back") <= 1
    assert len(actions) <= 960 / settings.auto_rollback_cooldown_hours
    assert 1 <= len(actions) <= 3, actions  # it does act on the breach, once or so


def test_allocation_routes_thompson_weights_and_serving_etag(settings, client, auth):
    from app.db import transaction
    from app.flows.deployment import guard_deployments
    from app.services import registry
    from app.services.allocation import allocation_view

    with transaction(settings.database_url, immediate=True) as session:
        prod = _version(session, "ALLOC")
        cand = _version(session, "ALLOC")
        model_id = "xgboost_alloc_1h"
        registry.promote(session, model_id, prod, actor="test", reason="first")
    url = f"/clm/models/{model_id}/allocation"
    r = client.get(url, headers=auth("viewer"))
    assert r.status_code == 200
    assert r.get_json()["mode"] == "champion" and r.get_json()["weights"] == {prod: 1.0}
    r = client.put(url, headers=auth("viewer"), json={"mode": "thompson"})
    assert r.status_code == 403
    r = client.put(url, headers=auth("admin"), json={"mode": "bandit"})
    assert r.status_code == 422 and r.content_type == "application/problem+json"
    assert [e["field"] for e in r.get_json()["errors"]] == ["mode"]
    assert client.put("/clm/models/xgboost_nothing_1h/allocation", headers=auth("admin"),
                      json={"mode": "thompson"}).status_code == 404
    serving = client.get(f"/clm/models/{model_id}/serving", headers=auth("viewer"))
    etag0 = serving.headers["ETag"]
    r = client.put(url, headers=auth("admin"), json={"mode": "thompson"})
    assert r.status_code == 200 and r.get_json()["mode"] == "thompson"
    rng = np.random.default_rng(5)
    trail = []
    for step in range(6):
        stamps = _stamps(100, offset=100 * step)
        with transaction(settings.database_url, immediate=True) as session:
            _plant(session, model_id, prod, stamps, rng.normal(0, 0.004, 100))
            _plant(session, model_id, cand, stamps, 0.0015 + rng.normal(0, 0.004, 100))
        guard_deployments(settings, now=stamps[-1].to_pydatetime())
        with transaction(settings.database_url) as session:
            view = allocation_view(session, model_id)
        w = view["weights"]
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
        assert w[prod] >= settings.allocation_production_floor - 1e-6
        assert w.get(cand, 0.0) <= settings.allocation_newcomer_cap + 1e-6
        trail.append(w.get(cand, 0.0))
    assert trail == sorted(trail) and trail[-1] == pytest.approx(
        settings.allocation_newcomer_cap)
    body = client.get(url, headers=auth("viewer")).get_json()
    assert body["weights"] == w and body["updated_at"]
    serving = client.get(f"/clm/models/{model_id}/serving", headers=auth("viewer"))
    assert serving.get_json()["allocation"] == w and serving.headers["ETag"] != etag0
    with transaction(settings.database_url) as session:
        changes = [a for a in _audit(session, model_id) if a.action == "allocation.changed"]
        assert changes and "P(best)" in changes[-1].reason
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'clm_allocation_weight{{mode="thompson",model_id="{model_id}",version="{cand}"}}' \
        in metrics


# -- the shadow exit rule on real ticks ------------------------------------------------------
def _series(kind: str, n: int, n_train: int) -> pd.DataFrame:
    frame = generate_ohlcv("planted", n, "1h", seed=5)
    if kind == "random_walk":
        rw = generate_ohlcv("random_walk", n - n_train, "1h", seed=9,
                            price0=float(frame["close"].iloc[n_train - 1]))
        frame = pd.concat([frame.iloc[:n_train], rw.set_axis(frame.index[n_train:])])
    frame.index = pd.date_range(start=start(n - 1), periods=n, freq="1h", name="timestamp")
    return frame


def test_shadow_leaves_shadow_on_a_planted_continuation_and_fails_on_a_random_walk(
        make_settings, db_url):
    from app import create_app
    from app.db import transaction
    from app.flows.checks import tick
    from app.services import registry

    settings = make_settings(db_url, CLM_SHADOW_MIN_TRADES=50, CLM_SHADOW_MIN_DAYS=5,
                             CLM_SHADOW_PATIENCE=1.5)
    client = create_app(settings).test_client()
    n, n_train = 1500, 600
    shadows = {}
    for kind, symbol in (("planted", "PLANT"), ("random_walk", "RWALK")):
        frame = _series(kind, n, n_train)
        v = make_production(settings, frame.iloc[:n_train], symbol=symbol, status_only=True)
        with transaction(settings.database_url, immediate=True) as session:
            registry.set_status(session, v["model_id"], v["version"], "shadow",
                                actor="test", reason="shadow first")
        seed_market(settings, frame.iloc[:n_train + 100], symbol=symbol)
        shadows[kind] = (v, frame)
    first = tick(settings)["deployment"]
    assert first["shadow_exits"] == []  # too few trades yet: both wait in shadow
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "clm_shadow_progress{" in metrics and "clm_shadow_trades{" in metrics
    for v, frame in shadows.values():
        seed_market(settings, frame, symbol=v["symbol"])
    exits = tick(settings)["deployment"]["shadow_exits"]
    got = {e["version"]: e["action"] for e in exits}
    planted, rw = shadows["planted"][0], shadows["random_walk"][0]
    assert got == {planted["version"]: "candidate", rw["version"]: "failed"}
    with transaction(settings.database_url) as session:
        for v, status in ((planted, "candidate"), (rw, "failed")):
            assert registry.get_version(session, v["model_id"], v["version"])["status"] == status
            (entry,) = [a for a in _audit(session, v["model_id"])
                        if a.action == "version.shadow_exited"]
            assert entry.details["status"] == status and "trades over" in entry.reason
            assert entry.details["progress"]["trades"] >= 50
        assert len(_events(session, "model.shadow_exited")) == 2
