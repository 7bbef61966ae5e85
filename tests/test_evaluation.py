"""Walk-forward evaluation and the gate: no leakage, planted edge passes, noise never does."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from app.core.config import DEFAULT_GATE, load_settings
from app.ml.artifacts import ArtifactStore
from app.ml.data.synthetic import generate_ohlcv
from app.ml.evaluation import (
    Dataset,
    EvaluationConfig,
    Fold,
    FoldPrediction,
    InsufficientData,
    LeakageError,
    apply_gate,
    champion_from_lineage,
    compare_champion,
    dataset_from_frame,
    dataset_to_frame,
    evaluate_predictions,
    final_fit,
    make_folds,
    prepare_dataset,
    probabilities_to_positions,
    run_walk_forward,
    train_fold,
    walk_forward_predictions,
)
from app.ml.trainers import get_trainer

CONTRACT_KEYS = {"sharpe", "win_rate", "profit_factor", "max_drawdown", "trades", "total_return",
                 "promotion_score"}
PLANTED_BARS = 5000
FAST = {"n_estimators": 30}


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    return generate_ohlcv("planted", PLANTED_BARS, seed=1)


@pytest.fixture(scope="module")
def planted_reports(planted):
    return {
        mt: run_walk_forward(planted, mt, {}, EvaluationConfig(), seed=1, n_threads=1,
                             gate=DEFAULT_GATE, symbol="SYN", timeframe="1h")
        for mt in ("xgboost", "lightgbm")
    }


# -- folds ------------------------------------------------------------------------------
@pytest.mark.parametrize("n_rows", [1200, 2001, 5000])
@pytest.mark.parametrize("n_folds", [2, 3, 5])
@pytest.mark.parametrize(("horizon", "purge"), [(1, None), (3, None), (4, 10)])
def test_folds_never_leak_and_tile_the_end(n_rows, n_folds, horizon, purge):
    cfg = EvaluationConfig(n_folds=n_folds, label_horizon=horizon, purge=purge,
                           min_train_rows=200)
    folds = make_folds(n_rows, cfg)
    assert len(folds) == n_folds
    for f in folds:
        assert f.train_start == 0
        # The label of the last training row looks `horizon` rows ahead: still before test.
        assert (f.train_end - 1) + horizon < f.test_start
        assert f.test_start - f.train_end == (purge if purge is not None else horizon)
        assert f.test_rows >= cfg.min_test_rows
    for a, b in itertools.pairwise(folds):
        assert a.test_end == b.test_start and a.train_end < b.train_end  # expanding, contiguous
    assert folds[-1].test_end == n_rows
    assert folds[0].test_start == n_rows - round(n_rows * cfg.test_fraction)


def test_too_little_data_is_refused_with_numbers():
    with pytest.raises(InsufficientData, match=r"800 usable rows.*min_train_rows=500"):
        make_folds(800, EvaluationConfig(min_train_rows=500))
    with pytest.raises(InsufficientData, match="test slices"):
        make_folds(1200, EvaluationConfig(n_folds=20, min_train_rows=100))
    # The minimum the message states is enough.
    for cfg in (EvaluationConfig(min_train_rows=500), EvaluationConfig(n_folds=20),
                EvaluationConfig(min_train_rows=137, test_fraction=0.35)):
        with pytest.raises(InsufficientData, match=r"need at least \d+ usable rows") as err:
            make_folds(100, cfg)
        need = int(re.search(r"need at least (\d+)", str(err.value)).group(1))
        assert len(make_folds(need, cfg)) == cfg.n_folds
    with pytest.raises(InsufficientData):
        run_walk_forward(generate_ohlcv("planted", 300, seed=0), "xgboost", FAST)


def test_purge_shorter_than_the_horizon_is_refused():
    with pytest.raises(ValueError, match=r"purge \(2\) must be >= label_horizon \(5\)"):
        EvaluationConfig(label_horizon=5, purge=2)
    with pytest.raises(ValueError, match="short_threshold"):
        EvaluationConfig(long_threshold=0.4, short_threshold=0.6)
    with pytest.raises(ValueError, match="n_folds"):
        EvaluationConfig(n_folds=1)


def test_train_fold_refuses_a_leaking_fold(planted):
    ds = prepare_dataset(planted, EvaluationConfig(label_horizon=3))
    leaky = Fold(index=0, train_start=0, train_end=3000, test_start=3002, test_end=3500)
    with pytest.raises(LeakageError, match="reaches the test slice"):
        train_fold(ds, leaky, get_trainer("xgboost"), FAST, seed=0, n_threads=1)


def test_a_fold_model_never_sees_rows_after_its_training_slice(planted):
    cfg = EvaluationConfig(label_horizon=2)
    ds = prepare_dataset(planted, cfg)
    fold = make_folds(ds.n_rows, cfg)[1]
    trainer = get_trainer("lightgbm")
    before = train_fold(ds, fold, trainer, FAST, seed=3, n_threads=1)
    # Scramble every label from the purge gap on, and the features of the purge gap.
    rng = np.random.default_rng(0)
    y = ds.y.copy()
    y[fold.train_end:] = rng.integers(0, 2, size=ds.n_rows - fold.train_end)
    X = ds.X.copy()
    X[fold.train_end:fold.test_start] = rng.normal(size=X[fold.train_end:fold.test_start].shape)
    scrambled = Dataset(X=X, y=y, close=ds.close, timestamps=ds.timestamps,
                        feature_names=ds.feature_names, label_horizon=ds.label_horizon,
                        windows=ds.windows)
    after = train_fold(scrambled, fold, trainer, FAST, seed=3, n_threads=1)
    np.testing.assert_array_equal(before.proba, after.proba)
    assert before.timestamps.equals(ds.timestamps[fold.test_start:fold.test_end])
    assert before.train_rows == fold.train_end


# -- round trips for the distributed pipeline -------------------------------------------
def test_dataset_and_fold_predictions_round_trip_through_artifacts(planted, tmp_path):
    cfg = EvaluationConfig()
    ds = prepare_dataset(planted, cfg, {"returns": [1, 4, 16]})
    store = ArtifactStore(tmp_path)
    ref = store.put_frame(dataset_to_frame(ds))
    back = dataset_from_frame(store.get_frame(ref.uri, ref.sha256))
    np.testing.assert_array_equal(back.X, ds.X)
    np.testing.assert_array_equal(back.y, ds.y)
    np.testing.assert_array_equal(back.close, ds.close)
    assert back.timestamps.equals(ds.timestamps) and back.windows == ds.windows
    assert back.feature_names == ds.feature_names and back.label_horizon == ds.label_horizon

    trainer = get_trainer("xgboost")
    folds = make_folds(ds.n_rows, cfg)
    local = walk_forward_predictions(ds, folds, trainer, FAST, seed=0, n_threads=1)
    stored = []
    for fold in folds:  # what a worker per fold does: load, train, store
        worker_ds = dataset_from_frame(store.get_frame(ref.uri))
        fold_again = Fold.from_dict(fold.to_dict())
        pref = store.put_frame(train_fold(worker_ds, fold_again, trainer, FAST, seed=0,
                                          n_threads=1).to_frame())
        stored.append(FoldPrediction.from_frame(store.get_frame(pref.uri, pref.sha256)))
    for a, b in zip(local, stored, strict=True):
        np.testing.assert_array_equal(a.proba, b.proba)
        assert a.timestamps.equals(b.timestamps) and a.fold == b.fold
        assert b.model_type == "xgboost" and b.train_rows == a.train_rows
    assert evaluate_predictions(back, stored, cfg) == evaluate_predictions(ds, local, cfg)
    # Order of fan-in does not matter; a close Series works as well as the Dataset.
    close = pd.Series(ds.close, index=ds.timestamps)
    m = evaluate_predictions(close, stored[::-1], cfg)
    assert m["sharpe"] == evaluate_predictions(ds, local, cfg)["sharpe"]
    with pytest.raises(ValueError, match="overlap"):
        evaluate_predictions(ds, [stored[0], stored[0]], cfg)
    cfg_again = EvaluationConfig.from_dict(cfg.to_dict())
    assert cfg_again == cfg


def test_probabilities_to_positions():
    p = np.array([0.0, 0.3, 0.45, 0.5, 0.55, 0.56, 1.0])
    np.testing.assert_array_equal(probabilities_to_positions(p, 0.55, 0.45),
                                  [-1, -1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(probabilities_to_positions(p, 0.5, 0.5), [-1, -1, -1, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="index 1"):
        probabilities_to_positions([0.5, np.nan])


# -- the gate on real evaluations -------------------------------------------------------
@pytest.mark.parametrize("model_type", ["xgboost", "lightgbm"])
def test_planted_structure_passes_the_seed_gate(planted_reports, model_type):
    report = planted_reports[model_type]
    m = report.metrics
    assert set(m) >= CONTRACT_KEYS
    assert report.gate is not None and report.gate.passed, report.gate.failed_criteria
    assert report.gate.failed_criteria == []
    assert m["sharpe"] >= 1.0 and m["win_rate"] >= 0.52 and m["trades"] >= 50
    assert m["max_drawdown"] <= 0.15 and m["accuracy"] > 0.55
    assert 0 < m["promotion_score"] <= 100
    assert len(report.folds) == 3 and m["oos_bars"] == sum(f.test_rows for f in report.folds)
    json_ready = report.to_dict()
    assert json_ready["passed"] is True and len(json_ready["timings"]["folds"]) == 3
    lineage = report.lineage
    assert lineage["dataset"]["rows"] == PLANTED_BARS and len(lineage["dataset"]["hash"]) == 64
    assert lineage["dataset"]["symbol"] == "SYN" and lineage["features"]["version"] == "fs-1"
    assert lineage["model"]["params"] == report.params and lineage["model"]["seed"] == 1
    assert lineage["libraries"]["xgboost"] and lineage["libraries"]["lightgbm"]
    assert lineage["folds"] == [f.to_dict() for f in report.folds]
    rev = lineage["code_revision"]
    assert rev is None or re.fullmatch(r"[0-9a-f]{40}", rev)


@pytest.mark.parametrize("model_type", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("seed", [2, 3])
def test_planted_passes_across_seeds(model_type, seed):
    frame = generate_ohlcv("planted", 4000, seed=seed)
    report = run_walk_forward(frame, model_type, {}, EvaluationConfig(), seed=seed,
                              gate=DEFAULT_GATE)
    assert report.gate.passed, report.gate.failed_criteria


@pytest.mark.parametrize(("model_type", "seed"),
                         [("xgboost", 0), ("xgboost", 1), ("xgboost", 2), ("lightgbm", 3),
                          ("lightgbm", 4)])
def test_random_walk_never_passes(model_type, seed):
    frame = generate_ohlcv("random_walk", 4000, seed=seed)
    report = run_walk_forward(frame, model_type, {}, EvaluationConfig(), seed=seed,
                              gate=DEFAULT_GATE)
    assert not report.gate.passed
    assert report.metrics["sharpe"] <= 0.5
    assert abs(report.metrics["accuracy"] - 0.5) < 0.04  # no edge to find


def test_random_walk_gross_of_fees_shows_no_edge():
    sharpes = []
    for seed in (10, 11, 12):
        frame = generate_ohlcv("random_walk", 4000, seed=seed)
        report = run_walk_forward(frame, "xgboost", FAST, EvaluationConfig(fee_bps=0.0),
                                  seed=seed)
        sharpes.append(report.metrics["sharpe"])
    # ~2000 hourly OOS bars: one annualised Sharpe has a standard error of about 2.
    assert np.mean(sharpes) < 2.0, sharpes


def test_the_random_walk_check_would_catch_look_ahead():
    """Leak the next bar's direction into the features: the same check then 'passes'."""
    frame = generate_ohlcv("random_walk", 4000, seed=0)
    cfg = EvaluationConfig()
    ds = prepare_dataset(frame, cfg)
    leaky = Dataset(X=np.column_stack([ds.X, ds.y.astype(np.float32)]), y=ds.y, close=ds.close,
                    timestamps=ds.timestamps, feature_names=[*ds.feature_names, "future"],
                    label_horizon=ds.label_horizon, windows=ds.windows)
    preds = walk_forward_predictions(leaky, make_folds(leaky.n_rows, cfg), get_trainer("xgboost"),
                                     FAST, seed=0, n_threads=1)
    metrics = evaluate_predictions(leaky, preds, cfg)
    assert metrics["sharpe"] > 20 and apply_gate(metrics, DEFAULT_GATE).passed


# -- gate mechanics ---------------------------------------------------------------------
def test_gate_lists_every_failed_criterion_with_value_and_threshold():
    metrics = {"sharpe": 0.4, "win_rate": 0.5, "profit_factor": 1.1, "max_drawdown": 0.3,
               "trades": 12, "total_return": -0.1}
    result = apply_gate(metrics, DEFAULT_GATE)
    assert not result.passed
    assert result.failed_criteria == [
        {"name": "sharpe", "value": 0.4, "threshold": 1.0, "op": ">=", "gate_key": "min_sharpe"},
        {"name": "win_rate", "value": 0.5, "threshold": 0.52, "op": ">=",
         "gate_key": "min_win_rate"},
        {"name": "profit_factor", "value": 1.1, "threshold": 1.3, "op": ">=",
         "gate_key": "min_profit_factor"},
        {"name": "max_drawdown", "value": 0.3, "threshold": 0.15, "op": "<=",
         "gate_key": "max_drawdown"},
        {"name": "trades", "value": 12.0, "threshold": 50, "op": ">=", "gate_key": "min_trades"},
    ]
    good = {"sharpe": 1.0, "win_rate": 0.52, "profit_factor": 1.3, "max_drawdown": 0.15,
            "trades": 50, "total_return": 0.2}
    assert apply_gate(good, DEFAULT_GATE).passed  # thresholds are inclusive
    assert 0 <= result.promotion_score < apply_gate(good).promotion_score <= 100


def test_gate_edge_cases():
    base = {"sharpe": 2.0, "win_rate": 0.6, "profit_factor": None, "max_drawdown": 0.05,
            "trades": 60, "total_return": 0.3}
    assert apply_gate(base).passed  # no losing trade: profit factor is infinite
    no_trades = {**base, "trades": 0}
    names = [c["name"] for c in apply_gate(no_trades).failed_criteria]
    assert names == ["profit_factor", "trades"]
    nan = apply_gate({**base, "sharpe": float("nan"), "profit_factor": 2.0})
    assert [c["name"] for c in nan.failed_criteria] == ["sharpe"]
    assert math.isnan(nan.failed_criteria[0]["value"])
    missing = apply_gate({k: v for k, v in base.items() if k != "max_drawdown"})
    assert [c["name"] for c in missing.failed_criteria] == ["max_drawdown"]
    with pytest.raises(ValueError, match="unknown gate key 'min_sortino'"):
        apply_gate(base, {"min_sortino": 1.0})


def test_per_type_gate_override_from_settings(planted_reports):
    settings = load_settings({"CLM_GATE_OVERRIDES": '{"lightgbm": {"min_sharpe": 1000}}',
                              "CLM_GATE_MIN_TRADES": "60"})
    xgb_gate, lgb_gate = settings.gate_for("xgboost"), settings.gate_for("lightgbm")
    assert xgb_gate["min_trades"] == lgb_gate["min_trades"] == 60
    assert apply_gate(planted_reports["xgboost"].metrics, xgb_gate).passed
    failed = apply_gate(planted_reports["lightgbm"].metrics, lgb_gate).failed_criteria
    assert [(c["name"], c["threshold"]) for c in failed] == [("sharpe", 1000.0)]


def test_config_from_settings():
    settings = load_settings({"CLM_WALK_FORWARD_FOLDS": "4", "CLM_FEE_BPS": "7.5",
                              "CLM_LABEL_HORIZON": "2", "CLM_LONG_THRESHOLD": "0.6"})
    cfg = EvaluationConfig.from_settings(settings, min_train_rows=300)
    assert (cfg.n_folds, cfg.fee_bps, cfg.label_horizon, cfg.long_threshold) == (4, 7.5, 2, 0.6)
    assert cfg.purge_rows == 2 and cfg.min_train_rows == 300
    with pytest.raises(ValueError, match="unknown EvaluationConfig field"):
        EvaluationConfig.from_settings(settings, n_fold=3)


# -- champion vs challenger, final fit --------------------------------------------------
def test_compare_champion_rules():
    assert compare_champion({"sharpe": 1.2}, {"sharpe": 1.2}).passed  # not worse is enough
    worse = compare_champion({"sharpe": 1.1}, {"sharpe": 1.2})
    assert not worse.passed and "1.100 < champion 1.200" in worse.reason
    assert worse.delta == pytest.approx(-0.1)
    assert compare_champion({"sharpe": 1.1}, {"sharpe": 1.2}, margin=-0.2).passed
    assert not compare_champion({"sharpe": 1.3}, {"sharpe": 1.2}, margin=0.5).passed
    assert compare_champion({"sharpe": 0.1}, None).passed
    assert not compare_champion({"sharpe": float("nan")}, {"sharpe": 0.0}).passed
    assert compare_champion({"sharpe": 0.5}, {"sharpe": float("nan")}).passed


def test_champion_is_retrained_on_the_same_folds(planted):
    weak = {"model_type": "xgboost", "params": {"n_estimators": 1, "learning_rate": 0.01}}
    strong = run_walk_forward(planted, "lightgbm", FAST, seed=1, champion=weak,
                              gate=DEFAULT_GATE)
    assert strong.champion_comparison.passed and strong.passed
    assert strong.champion_metrics["oos_bars"] == strong.metrics["oos_bars"]
    assert strong.champion_metrics["trades"] == 0  # 1 tiny tree: never confident enough

    challenger_weak = run_walk_forward(planted, "xgboost", weak["params"], seed=1,
                                       champion={"model_type": "lightgbm", "params": FAST},
                                       champion_margin=0.0)
    comp = challenger_weak.champion_comparison
    assert not comp.passed and comp.champion_sharpe == pytest.approx(strong.metrics["sharpe"])

    other_windows = run_walk_forward(
        planted, "xgboost", FAST, seed=1,
        champion={"model_type": "xgboost", "params": FAST, "windows": {"returns": [1, 2, 96]}},
    )
    assert other_windows.champion_metrics["oos_bars"] == other_windows.metrics["oos_bars"]


def test_lineage_is_enough_to_re_run_the_evaluation(planted, planted_reports):
    """The production version's lineage, replayed as the champion, reproduces its metrics."""
    production = planted_reports["lightgbm"]
    champion = champion_from_lineage(production.lineage)
    assert champion["model_type"] == "lightgbm" and champion["seed"] == 1
    challenger = run_walk_forward(planted, "xgboost", FAST, seed=1, champion=champion)
    assert challenger.champion_metrics == production.metrics
    with pytest.raises(ValueError, match="lineage"):
        champion_from_lineage({"features": {}})


def test_final_fit_uses_every_row_and_is_deployable(planted, tmp_path):
    cfg = EvaluationConfig()
    report = run_walk_forward(planted, "xgboost", FAST, cfg, seed=2, fit_final=True,
                              keep_dataset=True)
    ds = report.dataset
    trainer = get_trainer("xgboost")
    again = final_fit(ds, trainer, FAST, seed=2, n_threads=1)
    assert trainer.dump(again) == trainer.dump(report.model)
    last_fold_model = trainer.fit(ds.frame_X(0, report.folds[-1].train_end),
                                  ds.y[: report.folds[-1].train_end], FAST, seed=2, n_threads=1)
    assert trainer.dump(last_fold_model) != trainer.dump(report.model)
    store = ArtifactStore(tmp_path)
    ref = store.put_bytes(trainer.dump(report.model), fmt=trainer.artifact_format,
                          suffix=trainer.artifact_suffix)
    assert ref.format == "xgboost-ubj"
    assert report.timings["final_fit_s"] > 0 and report.timings["total_s"] > 0


def test_unknown_model_type_fails_before_any_work(planted):
    from app.ml.trainers import TrainerNotAvailable

    with pytest.raises(TrainerNotAvailable, match="prophet"):
        run_walk_forward(planted, "prophet", {})
    from app.ml.trainers import InvalidParams

    with pytest.raises(InvalidParams, match="max_depth"):
        run_walk_forward(planted, "xgboost", {"max_depth": 99})
