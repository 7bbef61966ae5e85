"""Regimes: labels against the synthetic truth, thresholds, restriction of a dataset, regime
champions, and a series that switches from calm to volatile producing a regime-specific
model through the real pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.analysis.regime import (
    classify_current,
    regime_labels,
    restrict_to_regime,
    summarize_regimes,
    volatility_threshold,
)
from app.ml.data.synthetic import generate_regime_series
from tests.support.continuous import (
    make_production,
    seed_market,
    start,
)
from tests.support.pipeline import run_job_inline


@pytest.fixture(autouse=True)
def _no_relay_kick():
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


def _switching(calm: int, volatile: int, seed: int = 7, **kw):
    return generate_regime_series(calm + volatile, "1h", seed=seed,
                                  blocks=[("calm_up", calm), ("volatile_up", volatile)],
                                  start=start(calm + volatile - 1), **kw)


def test_volatility_state_matches_the_synthetic_truth():
    frame, truth = generate_regime_series(6000, "1h", seed=3)
    labels = regime_labels(frame)
    known = labels.notna() & truth.notna()
    # Skip the 48 bars after each switch: a trailing window needs them to notice it.
    switched = (truth != truth.shift()).astype(int).rolling(48, min_periods=1).max() > 0
    mask = known & ~switched
    predicted = labels[mask].str.startswith("volatile")
    actual = truth[mask].str.startswith("volatile")
    assert (predicted == actual).mean() > 0.95


def test_trend_state_is_flat_unless_the_drift_is_persistent():
    frame, _ = _switching(1500, 1500, drift=0.0006)
    labels = regime_labels(frame).dropna()
    calm, wild = labels.iloc[:1200], labels.iloc[-1200:]
    # Calm: +0.06 %/bar against 0.3 % noise (t ≈ 2.4 here over 240 bars): up or flat,
    # never down.
    assert (calm == "calm_up").mean() > 0.4
    assert set(calm) <= {"calm_up", "calm_flat"}
    # Volatile: the same drift drowns in 1.2 % noise: mostly called flat, not guessed.
    assert (wild == "volatile_flat").mean() > 0.7


def test_threshold_splits_two_states_and_falls_back_on_one():
    frame, _ = _switching(2000, 2000)
    vol = frame["close"].pipe(np.log).diff().rolling(48).std()
    cut = volatility_threshold(vol)
    assert 0.003 < cut < 0.012  # between the calm and volatile volatilities
    calm_only = vol.iloc[100:1900]
    # One state: the cut sits at twice its median volatility.
    assert volatility_threshold(calm_only) == pytest.approx(2 * calm_only.median(), rel=0.05)


def test_labels_at_t_do_not_depend_on_later_bars():
    frame, _ = _switching(1500, 1500)
    summary = summarize_regimes(frame)
    full = regime_labels(frame, vol_threshold=summary["vol_threshold"])
    cut = regime_labels(frame.iloc[:2000], vol_threshold=summary["vol_threshold"])
    pd.testing.assert_series_equal(full.iloc[:2000], cut)


def test_restrict_to_regime_keeps_only_that_regimes_rows():
    from app.ml.evaluation import EvaluationConfig, prepare_dataset

    frame, _ = _switching(1500, 1500)
    dataset = prepare_dataset(frame, EvaluationConfig())
    wild = restrict_to_regime(dataset, frame, "volatile_flat")
    assert type(wild) is type(dataset) and wild.feature_names == dataset.feature_names
    labels = regime_labels(frame).reindex(wild.timestamps)
    assert (labels == "volatile_flat").all()
    assert 500 < wild.n_rows < dataset.n_rows
    assert wild.timestamps.is_monotonic_increasing
    with pytest.raises(ValueError, match="widen dataset_span_days"):
        restrict_to_regime(dataset, frame, "calm_down", min_rows=10)


def test_current_regime_uses_the_versions_threshold():
    frame, _ = _switching(1200, 400)
    trained = summarize_regimes(frame.iloc[:1200])
    assert set(trained["shares"]) <= {"calm_up", "calm_flat"}
    state = classify_current(frame, trained)
    assert state.label is not None and state.label.startswith("volatile")
    assert state.share > 0.5 and state.vol_threshold == trained["vol_threshold"]


def test_regime_champion_is_the_best_gate_passing_version(settings, client, auth):
    from app.db import transaction
    from app.services.checks.regime import consider_regime_champion

    def consider(version: str, sharpe: float, passed: bool = True) -> bool:
        with transaction(settings.database_url, immediate=True) as session:
            return consider_regime_champion(
                session, model_id="xgboost_btcusdt_1h", regime="volatile_flat",
                version=version, metrics={"sharpe": sharpe}, passed=passed)

    assert consider("v1", 1.2) is True
    assert consider("v2", 2.0, passed=False) is False  # failed the gate
    assert consider("v3", 1.0) is False  # does not beat the champion
    assert consider("v4", 1.5) is True
    body = client.get("/clm/regimes/champions?model_id=xgboost_btcusdt_1h",
                      headers=auth("viewer")).get_json()
    assert [(c["regime"], c["version"], c["previous_version"]) for c in body["items"]] == [
        ("volatile_flat", "v4", "v1")]
    assert client.get("/clm/regimes/champions?regime=calm_up",
                      headers=auth("viewer")).get_json()["items"] == []


@pytest.fixture
def loose_gate(sqlite_url, make_settings):
    """Embedded backend with a gate any model passes: this test is about regimes."""
    return make_settings(
        sqlite_url, CLM_GATE_MIN_SHARPE="-100", CLM_GATE_MIN_WIN_RATE="0",
        CLM_GATE_MIN_PROFIT_FACTOR="0", CLM_GATE_MAX_DRAWDOWN="1", CLM_GATE_MIN_TRADES="0",
        CLM_CHAMPION_SHARPE_MARGIN="-100",
    )


def test_switch_from_calm_to_volatile_produces_a_regime_specific_model(loose_gate):
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.flows.training import arbitrate
    from app.models.continuous import RegimeChampion
    from app.services import registry
    from app.services.checks.regime import run_regime_check

    settings = loose_gate
    frame, _ = _switching(1200, 2400)
    seed_market(settings, frame)
    general = make_production(settings, frame.iloc[:1200])  # trained in calm markets only
    assert general["regime"] is None

    now = utcnow()
    with transaction(settings.database_url, immediate=True) as session:
        check = run_regime_check(session, settings, model_id=general["model_id"], now=now)
        job_ids = arbitrate(session, settings, now=now)
    assert check["changed"] is True
    current = check["current"]["label"]
    assert current.startswith("volatile")
    assert len(job_ids) == 1

    job = run_job_inline(settings, job_ids[0])
    assert job["status"] == "succeeded", job.get("error")
    assert job["trigger_reason"] == "regime_change" and job["regime"] == current
    with transaction(settings.database_url) as session:
        version = registry.get_version(session, general["model_id"], job["version"])
        champion = session.query(RegimeChampion).one()
    assert version["regime"] == current
    # Trained on that regime's bars only: every dataset row carries the regime's label
    # (labels fitted on the raw window the job fetched).
    from app.ml.artifacts import ArtifactStore

    store = ArtifactStore(settings.artifact_root)
    kept = version["lineage"]["artifacts"]["dataset"]
    raw = version["lineage"]["artifacts"]["raw"]
    trained_on = store.get_frame(kept["uri"], kept["sha256"]).index
    raw_frame = store.get_frame(raw["uri"], raw["sha256"])
    assert 500 < len(trained_on) < len(raw_frame)
    assert (regime_labels(raw_frame).reindex(trained_on) == current).all()
    # ... and it carries what the drift and regime checks need.
    assert version["lineage"]["drift_reference"]["uri"]
    assert version["lineage"]["training_regime"]["shares"]
    assert version["evaluation"]["passed"] is True
    assert (champion.regime, champion.version) == (current, version["version"])

    # The specialist exists now: the same market asks for no new regime job.
    with transaction(settings.database_url, immediate=True) as session:
        again = run_regime_check(session, settings, model_id=general["model_id"],
                                 now=utcnow())
    assert again["changed"] is True and again["champion"] == version["version"]
    assert again["decision_id"] is None
