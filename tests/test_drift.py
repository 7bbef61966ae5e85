"""Drift: PSI/KS figures against hand computations, no drift on the training
distribution, drift (report + drift_detected trigger + API) on a shifted one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.analysis.drift import (
    build_reference,
    compare_to_reference,
    distribution_summary,
    effective_size,
    ks_on_grid,
    psi,
    psi_noise,
)
from app.ml.data.synthetic import generate_ohlcv
from app.ml.features import build_features
from tests.support.continuous import make_production, seed_market, start


@pytest.fixture(autouse=True)
def _no_relay_kick():
    # These tests do not run workers: nothing should be sent to a broker after commits.
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


# -- the statistics against hand computations -------------------------------------------
def test_reference_bins_are_quantile_edges_with_proportions():
    summary = distribution_summary(np.arange(1000, dtype=float), bins=4)
    # Quantiles of 0..999 at 25/50/75 % (linear interpolation): 249.75, 499.5, 749.25.
    assert summary["edges"] == pytest.approx([249.75, 499.5, 749.25])
    assert summary["proportions"] == pytest.approx([0.25, 0.25, 0.25, 0.25])
    assert summary["n"] == 1000
    assert len(summary["quantiles"]) == len(summary["cdf"]) == 101


def test_psi_matches_hand_computation():
    ref = build_reference(pd.DataFrame({"x": np.arange(1000, dtype=float)}), bins=4)
    # 40 / 30 / 20 / 10 current values in the four reference bins.
    current = np.concatenate([np.full(40, 10.0), np.full(30, 300.0), np.full(20, 600.0),
                              np.full(10, 900.0)])
    result = compare_to_reference(ref, pd.DataFrame({"x": current}), min_rows=1)
    # By hand: Σ (c − r) ln(c / r) with r = 0.25:
    #   0.15·ln(1.6) + 0.05·ln(1.2) − 0.05·ln(0.8) − 0.15·ln(0.4)
    # = 0.15·0.4700036 + 0.05·0.1823216 + 0.05·0.2231436 + 0.15·0.9162907 = 0.2282175
    assert result.features[0].psi == pytest.approx(0.2282175, abs=1e-6)
    # KS: the largest gap is at x = 10, where the current CDF jumps to 0.40 while the
    # reference CDF is 11/1000: D = 0.389 (the grid estimate is within 0.01 of it).
    assert result.features[0].ks == pytest.approx(0.389, abs=0.011)


def test_psi_floors_empty_bins_at_epsilon():
    # Everything in the first of four equal bins; the three empty ones count as 1e-4:
    # 0.75·ln(4) + 3·(1e-4 − 0.25)·ln(1e-4 / 0.25) = 1.0397208 + 5.8656873 = 6.9054081
    assert psi([0.25] * 4, [1.0, 0.0, 0.0, 0.0]) == pytest.approx(6.9054081, abs=1e-6)
    assert psi([0.25] * 4, [0.25] * 4) == 0.0


def test_ks_is_an_effect_size_on_the_reference_grid():
    summary = distribution_summary(np.linspace(0.0, 1.0, 10_001))
    # Uniform on [0, 0.5] against uniform on [0, 1]: D = 0.5 at x = 0.5.
    assert ks_on_grid(summary, np.linspace(0.0, 0.5, 5_001)) == pytest.approx(0.5, abs=0.011)
    assert ks_on_grid(summary, np.linspace(0.0, 1.0, 7_001)) == pytest.approx(0.0, abs=0.011)


@pytest.mark.parametrize("kind", ["normal", "ties", "on_grid", "shifted"])
def test_fast_binning_equals_binary_search(kind):
    from app.analysis.drift import grid_slots

    rng = np.random.default_rng(1)
    reference = rng.standard_t(3, 20_000)
    grid = np.unique(np.quantile(reference, np.linspace(0, 1, 101)))
    values = {
        "normal": rng.standard_t(3, 200_000),
        "ties": np.round(rng.normal(0, 2, 200_000)),  # integers, many equal to edges
        "on_grid": rng.choice(grid, 200_000),  # exactly the grid points
        "shifted": rng.normal(50, 1, 200_000),  # all above the grid
    }[kind]
    assert np.array_equal(grid_slots(grid, values), np.searchsorted(grid, values))


def test_noise_floor_uses_effective_sample_size():
    # AR(1) with ρ = 0.9: n·(1 − ρ)/(1 + ρ) = 1000·0.1/1.9.
    assert effective_size(1000, 0.9) == pytest.approx(52.631579, rel=1e-6)
    # 95 % point of χ² with 9 degrees of freedom: 16.919.
    assert psi_noise(10, 1000.0, 100.0) == pytest.approx(16.919 * (1 / 1000 + 1 / 100),
                                                         rel=0.01)


# -- judging drift on market data -------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_data_from_the_training_distribution_does_not_drift(seed):
    frame = generate_ohlcv("random_walk", 2000, "1h", seed=seed)
    feats = build_features(frame).dropna()
    reference = build_reference(feats.iloc[:1500])
    result = compare_to_reference(reference, feats.iloc[-400:])
    assert result.sufficient
    assert not result.drifted, result.reasons
    assert result.features_drifted == 0


def _shifted(vol: float, seed: int = 3) -> pd.DataFrame:
    calm = generate_ohlcv("random_walk", 1500, "1h", seed=seed)
    nxt = (calm.index[-1] + pd.Timedelta(hours=1)).to_pydatetime()
    wild = generate_ohlcv("random_walk", 500, "1h", seed=seed + 1, vol=vol, start=nxt,
                          price0=float(calm["close"].iloc[-1]))
    return pd.concat([calm, wild])


def test_shifted_distribution_drifts_and_names_the_features():
    feats = build_features(_shifted(vol=0.015)).dropna()  # 3× the training volatility
    result = compare_to_reference(build_reference(feats.iloc[:1400]), feats.iloc[-400:])
    assert result.drifted
    drifted = {f.name for f in result.features if f.drifted}
    assert {"hl_range", "vol_12", "range_24"} <= drifted
    assert result.share_drifted >= 0.3
    hl = next(f for f in result.features if f.name == "hl_range")
    assert hl.psi > 1.0 and hl.ks_large and hl.psi_excess > 0.2


def test_too_few_rows_decide_nothing():
    feats = build_features(_shifted(vol=0.015)).dropna()
    result = compare_to_reference(build_reference(feats.iloc[:1400]), feats.iloc[-50:])
    assert not result.sufficient and not result.drifted


# -- the service: report, trigger, API --------------------------------------------------
def _production_on(settings, frame: pd.DataFrame, n_train: int, **kw):
    seed_market(settings, frame)
    return make_production(settings, frame.iloc[:n_train], **kw)


def _aligned(frame: pd.DataFrame, n_hours: int) -> pd.DataFrame:
    """The same bars re-stamped so the last one is the latest full hour."""
    out = frame.copy()
    out.index = pd.date_range(start=start(n_hours - 1), periods=len(frame), freq="1h",
                              name="timestamp")
    return out


def test_drift_check_on_unchanged_market_reports_no_drift(settings):
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.services.checks.drift import run_drift_check

    frame = _aligned(generate_ohlcv("random_walk", 1900, "1h", seed=11), 1900)
    version = _production_on(settings, frame, 1500)
    with transaction(settings.database_url, immediate=True) as session:
        report = run_drift_check(session, settings, model_id=version["model_id"], now=utcnow())
    assert report["status"] == "ok" and report["drifted"] is False
    assert report["rows"] == 400 and report["decision_id"] is None
    assert report["reference_source"] == "lineage"
    assert report["prediction_psi"] is not None


def test_drift_check_on_shifted_market_reports_and_triggers(settings, client, auth):
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.flows.training import arbitrate
    from app.services.checks.drift import run_drift_check

    frame = _aligned(_shifted(vol=0.015), 2000)
    version = _production_on(settings, frame, 1500)
    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        report = run_drift_check(session, settings, model_id=version["model_id"], now=now)
        jobs = arbitrate(session, settings, now=now)
    assert report["drifted"] is True and report["decision_id"] is not None
    assert any("features" in r for r in report["reasons"])
    assert len(jobs) == 1

    body = client.get("/clm/drift", headers=auth("viewer")).get_json()
    assert [r["id"] for r in body["items"]] == [report["id"]]
    served = body["items"][0]
    hl = next(f for f in served["features"] if f["name"] == "hl_range")
    assert hl["drifted"] is True and hl["psi"] > 1.0
    assert client.get(f"/clm/drift/{report['id']}", headers=auth("viewer")).status_code == 200
    assert client.get("/clm/drift/999999", headers=auth("viewer")).status_code == 404

    decisions = client.get("/clm/triggers?reason=drift_detected",
                           headers=auth("viewer")).get_json()["items"]
    assert len(decisions) == 1
    assert decisions[0]["outcome"] == "triggered" and decisions[0]["job_id"] == jobs[0]
    job = client.get(f"/clm/jobs/{jobs[0]}", headers=auth("viewer")).get_json()
    assert job["trigger_reason"] == "drift_detected"

    # The same window checked again is the same decision (one per version and window).
    with transaction(settings.database_url, immediate=True) as session:
        again = run_drift_check(session, settings, model_id=version["model_id"], now=now)
    assert again["decision_id"] == report["decision_id"]


def test_drift_reference_is_rebuilt_for_a_version_without_one(settings):
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.services.checks.drift import run_drift_check

    frame = _aligned(_shifted(vol=0.015), 2000)
    version = _production_on(settings, frame, 1500, with_reference=False)
    with transaction(settings.database_url, immediate=True) as session:
        report = run_drift_check(session, settings, model_id=version["model_id"], now=utcnow())
    assert report["reference_source"] == "rebuilt"
    assert report["drifted"] is True


def test_drift_list_filters_and_rejects_a_bad_cursor(settings, client, auth):
    assert client.get("/clm/drift?drifted=true", headers=auth("viewer")).get_json() == {
        "items": [], "next_cursor": None}
    bad = client.get("/clm/drift?cursor=garbage", headers=auth("viewer"))
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert client.get("/clm/drift").status_code == 401


# -- the beat tasks ---------------------------------------------------------------------
def test_beat_tasks_check_every_production_model(settings):
    """drift_check and performance_check as beat runs them: every production model,
    reports written, triggers arbitrated; an externally registered one is skipped."""
    from app.db import transaction
    from app.ml.artifacts import ArtifactStore
    from app.ml.backtest import run_backtest
    from app.ml.evaluation import probabilities_to_positions
    from app.ml.trainers import get_trainer, load_model
    from app.models.continuous import DriftReport, PerformanceReport
    from app.services import registry
    from workers.tasks_continuous import drift_check, performance_check

    frame = _aligned(_shifted(vol=0.015), 2000)
    version = _production_on(settings, frame, 1500)
    metrics = {"sharpe": 1.0, "win_rate": 0.5, "profit_factor": 1.2, "max_drawdown": 0.1,
               "trades": 10, "total_return": 0.1}
    with transaction(settings.database_url, immediate=True) as session:
        ext = registry.register_version(session, model_type="lightgbm", symbol="ETHUSDT",
                                        timeframe="1h", metrics=metrics, actor="t")
        registry.promote(session, ext["model_id"], ext["version"], actor="t", reason="t")

    drift = drift_check.apply().get()
    assert (drift["checked"], drift["errors"]) == (2, 0)
    assert drift["requested"] == [version["model_id"]] and len(drift["job_ids"]) == 1
    paper = performance_check.apply().get()
    assert (paper["checked"], paper["errors"]) == (2, 0)

    with transaction(settings.database_url) as session:
        assert [r.model_id for r in session.query(DriftReport)] == [version["model_id"]]
        [report] = session.query(PerformanceReport).all()
    assert report.source == "paper" and report.version == version["version"]
    assert report.period_start > frame.index[1499].to_pydatetime()  # after training only
    assert report.metrics["bars"] == 500

    # The same figures by hand: the stored model on the bars after its training.
    store = ArtifactStore(settings.artifact_root)
    trainer = get_trainer("xgboost")
    model = load_model(store, trainer, version["artifact"]["uri"],
                       version["artifact"]["sha256"])
    feats = build_features(frame).loc[frame.index[1500]:]
    proba = trainer.predict_proba(model, feats.astype(np.float32), n_threads=1)
    expected = run_backtest(frame["close"].loc[feats.index].to_numpy(),
                            probabilities_to_positions(proba, settings.long_threshold,
                                                       settings.short_threshold),
                            fee_bps=settings.fee_bps, timestamps=feats.index).metrics
    assert report.trades == expected["trades"] > 0
    assert report.sharpe == pytest.approx(expected["sharpe"])
    if report.degraded:  # Sharpe < 0.5 over >= 20 trades: folded into the drift job
        with transaction(settings.database_url) as session:
            from app.models.continuous import TriggerDecision

            decision = session.get(TriggerDecision, report.decision_id)
        assert decision.reason == "performance_degraded"
        assert decision.outcome in ("coalesced", "triggered")
