"""A version's diagnostics (issue 15): calibration statistics and the causal calibration,
native and generic (shap) attributions, the per-regime / per-period / trade breakdowns,
and the report a training job stores and GET …/report serves."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from app.analysis.calibration import (
    apply_platt,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_platt,
    reliability,
)
from app.analysis.equity_curve import drawdown_extremes, thin_indices
from app.ml.attributions import fold_attributions, native_contributions
from app.ml.data.synthetic import generate_ohlcv
from app.ml.diagnostics import calibrate_folds, version_diagnostics
from app.ml.evaluation import EvaluationConfig, make_folds, prepare_dataset, train_fold
from app.ml.oos import oos_metrics
from app.ml.trainers import get_trainer

SMALL = {"n_estimators": 20, "max_depth": 3}


# -- calibration statistics ---------------------------------------------------------------
def test_reliability_brier_and_ece_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 1.0])
    y = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    bins = reliability(p, y)
    assert len(bins) == 10 and [b["count"] for b in bins] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 3]
    assert bins[0]["observed_rate"] == 0.5 and bins[1]["mean_predicted"] is None
    assert bins[9]["mean_predicted"] == pytest.approx((0.95 + 0.95 + 1.0) / 3)  # 1.0: last bin
    assert brier_score(p, y) == pytest.approx(np.mean((p - y) ** 2))
    expected = (2 / 6) * abs(0.5 - 0.05) + (1 / 6) * 0.55 + (3 / 6) * abs(1 - 2.9 / 3)
    assert expected_calibration_error(p, y) == pytest.approx(expected)


def test_platt_scaling_repairs_overconfident_probabilities():
    rng = np.random.default_rng(3)
    true = rng.uniform(0.2, 0.8, 20_000)
    y = (rng.uniform(size=true.size) < true).astype(float)
    logit = np.log(true / (1 - true))
    overconfident = 1 / (1 + np.exp(-3.0 * logit))  # right ranking, far too sure
    before = expected_calibration_error(overconfident, y)
    platt = fit_platt(overconfident, y)
    after = expected_calibration_error(apply_platt(platt, overconfident), y)
    assert platt.a == pytest.approx(1 / 3, rel=0.1)
    assert before > 0.1 and after < 0.02
    assert fit_platt([0.5] * 10, [1.0] * 10).a == 1.0  # too few / one label: identity


# -- walk-forward fixtures ----------------------------------------------------------------
@pytest.fixture(scope="module")
def walk_forward():
    frame = generate_ohlcv("planted", 2500, seed=11)
    cfg = EvaluationConfig(n_folds=3)
    dataset = prepare_dataset(frame, cfg, None)
    folds = make_folds(dataset.n_rows, cfg)
    out = {}
    for model_type in ("xgboost", "lightgbm"):
        trainer = get_trainer(model_type)
        params = trainer.validate_params(SMALL)
        preds = [train_fold(dataset, f, trainer, params, seed=0, n_threads=1) for f in folds]
        out[model_type] = (trainer, preds)
    return dataset, folds, cfg, out


def test_causal_calibration_never_sees_the_bars_it_judges(walk_forward):
    dataset, folds, cfg, models = walk_forward
    _, preds = models["xgboost"]
    calibrated, info = calibrate_folds(dataset, preds, cfg)
    assert [m["fold"] for m in info["per_fold"]] == [0, 1, 2]
    assert info["per_fold"][0]["n"] == 0  # nothing before the first fold: identity
    np.testing.assert_allclose(calibrated[0].proba, preds[0].proba, atol=1e-9)
    assert info["per_fold"][1]["n"] > 0 and info["per_fold"][1]["a"] != 1.0

    # Scrambling the labels of the last fold's bars changes nothing that was judged.
    last = folds[-1]
    y = dataset.y.copy()
    y[last.test_start:last.test_end] = 1.0 - y[last.test_start:last.test_end]
    scrambled = dataclasses.replace(dataset, y=y)
    again, _ = calibrate_folds(scrambled, preds, cfg)
    for a, b in zip(calibrated, again, strict=True):
        np.testing.assert_array_equal(a.proba, b.proba)
    # ... while the first fold's labels do move the later folds' maps.
    first = folds[0]
    y = dataset.y.copy()
    y[first.test_start:first.test_end] = 1.0 - y[first.test_start:first.test_end]
    moved, _ = calibrate_folds(dataclasses.replace(dataset, y=y), preds, cfg)
    assert not np.allclose(moved[1].proba, calibrated[1].proba)
    # A fold's map is fitted only on bars whose labels were known before it began.
    rows_0 = len(preds[0].timestamps)
    assert info["per_fold"][1]["n"] == rows_0 - dataset.label_horizon


@pytest.mark.parametrize("model_type", ["xgboost", "lightgbm"])
def test_native_contributions_add_up_to_the_margin(walk_forward, model_type):
    dataset, folds, _, models = walk_forward
    trainer, preds = models[model_type]
    fold = folds[1]
    X = dataset.frame_X(fold.test_start, fold.test_end)
    method, values = native_contributions(preds[1].model, X)
    assert method.startswith(model_type) and values.shape == X.shape
    proba = trainer.predict_proba(preds[1].model, X)
    margin = np.log(proba / (1 - proba))
    bias = margin - values.sum(axis=1)  # the dropped bias column: one constant
    assert np.ptp(bias) < 1e-4

    att = fold_attributions(trainer, preds[1].model, X,
                            dataset.frame_X(fold.train_start, fold.train_end))
    assert att["method"] == method and att["rows"] == 64
    assert set(att["values"]) == set(dataset.feature_names)
    assert all(v >= 0 for v in att["values"].values()) and max(att["values"].values()) > 0


class _Logistic:
    """A model type with no native contributions: P(up) = σ(X·w)."""

    model_type = "logistic_test"

    def predict_proba(self, model, X, *, n_threads=1):
        return 1 / (1 + np.exp(-(np.asarray(X, dtype=float) @ model)))


def test_generic_shap_path_ranks_features_of_any_predict_function():
    pytest.importorskip("shap")
    rng = np.random.default_rng(0)
    columns = ["strong", "weak", "unused", "negative"]
    X_test = pd.DataFrame(rng.normal(size=(40, 4)), columns=columns)
    X_train = pd.DataFrame(rng.normal(size=(200, 4)), columns=columns)
    weights = np.array([2.0, 0.3, 0.0, -1.0])
    att = fold_attributions(_Logistic(), weights, X_test, X_train)
    v = att["values"]
    assert att["method"] == "shap_permutation"
    assert v["strong"] > v["negative"] > v["weak"] > v["unused"]
    assert v["unused"] == pytest.approx(0.0, abs=1e-9)


# -- the report's OOS equity curve --------------------------------------------------------
def _max_drawdown(values) -> float:
    """DESIGN.md's max_drawdown, written out: the running peak starts at 1.0."""
    peak, worst = 1.0, 0.0
    for v in values:
        peak = max(peak, v)
        worst = max(worst, 1.0 - v / peak)
    return worst


def _assert_curve_matches(curve, metrics) -> None:
    values = [e for _, e in curve]
    assert 2 <= len(curve) <= 500
    assert values[-1] == pytest.approx(1 + metrics["total_return"], abs=1e-12)
    assert _max_drawdown(values) == pytest.approx(metrics["max_drawdown"], abs=1e-12)
    stamps = pd.DatetimeIndex([t for t, _ in curve])
    assert stamps.tz is not None and stamps.is_monotonic_increasing and stamps.is_unique
    assert all(t.endswith("Z") for t, _ in curve)


def test_thinned_curve_keeps_its_end_and_its_deepest_drawdown():
    rng = np.random.default_rng(7)
    # A long random walk whose deepest fall sits between two evenly spaced samples.
    equity = np.cumprod(1 + rng.normal(0, 0.004, 20_000))
    equity[12_345] = equity[12_344] * 0.5
    keep = thin_indices(equity, 500)
    assert len(keep) <= 500 and keep[0] == 0 and keep[-1] == len(equity) - 1
    assert list(keep) == sorted(set(keep))
    assert 12_345 in keep
    assert _max_drawdown(equity[keep]) == pytest.approx(_max_drawdown(equity), abs=1e-12)
    peak, trough, depth = drawdown_extremes(equity)
    assert trough == 12_345 and peak in keep and depth == pytest.approx(_max_drawdown(equity))
    assert list(thin_indices(equity[:300], 500)) == list(range(300))  # short: all of it
    # A curve that only falls from the 1.0 before its first bar.
    assert drawdown_extremes([0.99, 0.95, 0.97]) == (0, 1, pytest.approx(0.05))


# -- the report's breakdowns --------------------------------------------------------------
def test_report_breakdowns_agree_with_the_backtest(walk_forward):
    dataset, folds, cfg, models = walk_forward
    trainer, preds = models["lightgbm"]
    atts = []
    for f, p in zip(folds, preds, strict=True):
        a = fold_attributions(trainer, p.model, dataset.frame_X(f.test_start, f.test_end),
                              dataset.frame_X(f.train_start, f.train_end))
        atts.append({"fold": f.index, **a})
    report = version_diagnostics(dataset, preds, cfg, None, fold_attributions=atts)
    metrics = oos_metrics(dataset, preds, cfg)

    assert report["oos_bars"] == metrics["oos_bars"]
    assert report["trades"]["count"] == metrics["trades"]
    assert report["trades"]["returns"]["win_rate"] == pytest.approx(metrics["win_rate"])
    assert report["trades"]["holding_bars"]["min"] >= 1
    assert sum(report["trades"]["histogram"]["counts"]) == metrics["trades"]
    assert report["period"] == "month"
    assert sum(p["bars"] for p in report["by_period"]) == metrics["oos_bars"]
    # The periods' returns compound to the whole run's (up to the first entry fee).
    compounded = math.prod(1 + p["total_return"] for p in report["by_period"])
    assert compounded == pytest.approx(1 + metrics["total_return"], rel=1e-3)
    accuracy = sum(p["accuracy"] * p["bars"] for p in report["by_period"]) / metrics["oos_bars"]
    assert accuracy == pytest.approx(metrics["accuracy"])
    regimes = report["by_regime"]
    assert regimes and all(r["regime"].split("_")[0] in ("calm", "volatile") for r in regimes)
    assert sum(r["bars"] for r in regimes) <= metrics["oos_bars"]

    assert list(report["attributions"]) == list(report["attribution_detail"]["stability"])
    values = list(report["attributions"].values())
    assert values == sorted(values, reverse=True)
    assert len(report["attribution_detail"]["per_fold"]) == 3
    assert -1 <= report["attribution_detail"]["rank_correlation"] <= 1
    calib = report["calibration"]
    assert len(calib["bins"]) == 10 and sum(b["count"] for b in calib["bins"]) == \
        metrics["oos_bars"]
    assert calib == {**calibration_summary(np.concatenate([p.proba for p in preds]),
                                           dataset.y[dataset.n_rows - metrics["oos_bars"]:]),
                     "calibrated": False, "raw": None}
    # The OOS equity curve (the metrics' backtest), thinned: more bars than a chart needs.
    assert metrics["oos_bars"] > 500 and 498 <= len(report["equity"]) <= 500
    _assert_curve_matches(report["equity"], metrics)


# -- stored by the training job, served by the API ---------------------------------------
@pytest.mark.timeout(240)
def test_job_stores_report_and_api_serves_it(request, make_settings):
    from tests.support.pipeline import SPAN_DAYS, make_backend, run_job_inline, seed_market

    backend = make_backend(request, make_settings, "embedded", CLM_CALIBRATE=1,
                           CLM_WALK_FORWARD_FOLDS=3)
    seed_market(backend.settings)
    r = backend.client.post("/clm/train", headers=backend.auth("operator"), json={
        "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
        "dataset_span_days": SPAN_DAYS, "params": SMALL})
    assert r.status_code == 202, r.get_json()
    job = run_job_inline(backend.settings, r.get_json()["job_id"])
    assert job["status"] == "succeeded", job.get("error")
    model_id, version = job["model_id"], job["version"]
    evaluate = next(s for s in job["steps"] if s["name"] == "evaluate")
    assert evaluate["detail"]["diagnostics_s"] >= 0

    got = backend.client.get(f"/clm/models/{model_id}/versions/{version}/report",
                             headers=backend.auth("viewer"))
    assert got.status_code == 200
    report = got.get_json()
    assert report["available"] is True and report["version"] == version
    for key in ("attributions", "calibration", "by_regime", "by_period", "trades"):
        assert report[key], key
    stored = backend.client.get(f"/clm/models/{model_id}/versions/{version}",
                                headers=backend.auth("viewer")).get_json()
    features = stored["lineage"]["features"]["names"]
    assert set(report["attributions"]) == set(features)
    assert report["attribution_detail"]["method"] == "xgboost_pred_contribs"
    # CLM_CALIBRATE=1: the gate's metrics were computed on the calibrated probabilities.
    calib = report["calibration"]
    assert calib["calibrated"] is True and calib["raw"]["brier"] is not None
    assert stored["evaluation"]["calibration"]["per_fold"][0]["n"] == 0
    assert report["trades"]["count"] == stored["metrics"]["trades"]
    assert sum(p["bars"] for p in report["by_period"]) == stored["metrics"]["oos_bars"]
    # The stored OOS equity curve ends at the metrics' total return and falls as deep as
    # their max drawdown, thinned when the run has more bars than a chart needs.
    _assert_curve_matches(report["equity"], stored["metrics"])
    bars = stored["metrics"]["oos_bars"]
    assert len(report["equity"]) == bars if bars <= 500 else 498 <= len(report["equity"]) <= 500

    # A version registered outside a job has no report; unknown ids are 404; viewers only.
    reg = backend.client.post("/clm/models", headers=backend.auth("operator"), json={
        "model_type": "xgboost", "symbol": "EXTERNAL", "timeframe": "1h",
        "metrics": {"sharpe": 1.0}})
    assert reg.status_code == 201, reg.get_json()
    ext = reg.get_json()
    bare = backend.client.get(f"/clm/models/{ext['model_id']}/versions/{ext['version']}/report",
                              headers=backend.auth("viewer")).get_json()
    assert bare["available"] is False and bare["attributions"] == {}
    assert bare["reason"] == "registered outside a training job"
    missing = backend.client.get(f"/clm/models/{model_id}/versions/v0/report",
                                 headers=backend.auth("viewer"))
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("application/problem+json")
    assert backend.client.get(f"/clm/models/{model_id}/versions/{version}/report"
                              ).status_code == 401


def test_report_follows_the_strategy_rules_when_the_job_has_them(walk_forward):
    from app.ml.evolution.space import TradingRules

    dataset, _, cfg, models = walk_forward
    _, preds = models["xgboost"]
    rules = TradingRules(entry_threshold=0.6, exit_threshold=0.5, min_hold_bars=3,
                         stop_loss=0.02)
    report = version_diagnostics(dataset, preds, cfg, rules)
    metrics = oos_metrics(dataset, preds, cfg, rules)
    plain = oos_metrics(dataset, preds, cfg)
    assert metrics["trades"] != plain["trades"]  # the rules do change the trades
    assert report["trades"]["count"] == metrics["trades"]
    assert report["trades"]["holding_bars"]["min"] >= 1
    exposure = sum(p["exposure"] * p["bars"] for p in report["by_period"]) / metrics["oos_bars"]
    assert exposure == pytest.approx(metrics["exposure"])
    _assert_curve_matches(report["equity"], metrics)  # the rules' backtest, not thresholds'
    assert report["attributions"] == {}  # none given: empty, not an error
