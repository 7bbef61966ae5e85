"""Feature set fs-1: causality (no look-ahead), warm-up, labels and window validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.ml.data.synthetic import generate_ohlcv
from app.ml.features import (
    DEFAULT_WINDOWS,
    FEATURE_SET_VERSION,
    build_features,
    feature_names,
    make_labels,
    normalize_windows,
    warmup_bars,
)

CUSTOM_WINDOWS = {
    "returns": [2, 5, 30],
    "volatility": [7],
    "rsi": [5, 21],
    "macd": [5, 35, 7],
    "volume_z": 10,
    "range": [3],
    "zscore": [60],
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_ohlcv("regime_switch", 600, seed=7)


def _perturb_after(frame: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """Every bar after t replaced by something else (prices and volume), bars ≤ t intact."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    n_after = len(frame) - t - 1
    scale = np.exp(rng.normal(0.0, 0.2, size=(n_after, 1)))
    cols = ["open", "high", "low", "close"]
    out.iloc[t + 1:, [out.columns.get_loc(c) for c in cols]] = (
        frame[cols].to_numpy()[t + 1:] * scale
    )
    out.iloc[t + 1:, out.columns.get_loc("volume")] = rng.uniform(1.0, 1e6, size=n_after)
    return out


@pytest.mark.parametrize("windows", [None, CUSTOM_WINDOWS])
@pytest.mark.parametrize("t", [0, 5, 47, 48, 120, 333, 598])
def test_perturbing_the_future_leaves_features_at_t_unchanged(frame, windows, t):
    base = build_features(frame, windows)
    perturbed_frame = _perturb_after(frame, t, seed=t)
    perturbed = build_features(perturbed_frame, windows)
    # Bit-for-bit equality (NaN == NaN) for every row up to and including t.
    pd.testing.assert_frame_equal(base.iloc[: t + 1], perturbed.iloc[: t + 1], check_exact=True)
    # The perturbation is real: later features change (else the check above proves nothing).
    later = base.iloc[t + 1:].to_numpy()
    later_p = perturbed.iloc[t + 1:].to_numpy()
    assert not np.allclose(later[np.isfinite(later)], later_p[np.isfinite(later)])


def test_features_on_a_truncated_history_equal_the_full_run(frame):
    full = build_features(frame)
    for t in (60, 250, 599):
        pd.testing.assert_frame_equal(build_features(frame.iloc[: t + 1]), full.iloc[: t + 1],
                                      check_exact=True)


@pytest.mark.parametrize("windows", [None, CUSTOM_WINDOWS])
def test_columns_warmup_and_dtype(frame, windows):
    feats = build_features(frame, windows)
    assert list(feats.columns) == feature_names(windows)
    assert (feats.dtypes == np.float64).all()
    assert feats.index.equals(frame.index)
    wu = warmup_bars(windows)
    assert feats.iloc[wu - 1].isna().any(), "warm-up ends too early"
    assert not feats.iloc[wu:].isna().any().any(), "NaN after the warm-up"
    assert np.isfinite(feats.iloc[wu:].to_numpy()).all()


def test_default_feature_set_is_versioned_and_documented():
    names = feature_names()
    assert FEATURE_SET_VERSION == "fs-1"
    assert len(names) == len(set(names))
    assert {"ret_1", "ret_24", "vol_12", "rsi_14", "macd_12_26", "volume_z_24", "range_24",
            "zscore_24", "hl_range"} <= set(names)
    for name in ("ret_k", "vol_w", "rsi_w", "macd_f_s", "volume_z_w", "range_w", "zscore_w"):
        assert name in build_features.__doc__


def test_feature_values_match_their_definitions(frame):
    feats = build_features(frame)
    c = frame["close"]
    t = 200
    assert feats["ret_3"].iloc[t] == pytest.approx(np.log(c.iloc[t] / c.iloc[t - 3]), rel=1e-12)
    r = np.diff(np.log(c.to_numpy()))
    assert feats["vol_12"].iloc[t] == pytest.approx(np.std(r[t - 12:t], ddof=1), rel=1e-9)
    window = c.iloc[t - 23:t + 1]
    assert feats["zscore_24"].iloc[t] == pytest.approx(
        (c.iloc[t] - window.mean()) / window.std(ddof=1), rel=1e-9)
    assert feats["rsi_14"].min() >= 0.0 and feats["rsi_14"].max() <= 100.0
    hl = np.log(frame["high"] / frame["low"])
    assert feats["range_24"].iloc[t] == pytest.approx(hl.iloc[t - 23:t + 1].mean(), rel=1e-9)


def test_flat_volume_and_flat_prices_do_not_produce_inf():
    n = 200
    idx = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC", name="timestamp")
    flat = pd.DataFrame({"open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0,
                         "volume": 5.0}, index=idx)
    feats = build_features(flat).iloc[warmup_bars():]
    assert np.isfinite(feats.to_numpy()).all()
    assert (feats["volume_z_24"] == 0.0).all() and (feats["zscore_24"] == 0.0).all()
    assert (feats["rsi_14"] == 50.0).all() and (feats["close_loc"] == 0.5).all()


@pytest.mark.parametrize("horizon", [1, 3])
def test_labels_are_the_sign_of_the_next_h_bar_return(frame, horizon):
    y = make_labels(frame, horizon)
    c = frame["close"].to_numpy()
    assert y.iloc[-horizon:].isna().all()
    assert not y.iloc[:-horizon].isna().any()
    expected = (c[horizon:] > c[:-horizon]).astype(float)
    np.testing.assert_array_equal(y.to_numpy()[:-horizon], expected)
    assert y.index.equals(frame.index)


def test_labels_are_zero_on_ties_and_look_forward():
    idx = pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC", name="timestamp")
    f = pd.DataFrame({"close": [1.0, 1.0, 2.0, 1.5, 1.5]}, index=idx)
    np.testing.assert_array_equal(make_labels(f).to_numpy()[:-1], [0.0, 1.0, 0.0, 0.0])
    # The label at t is the one deliberately forward-looking quantity.
    g = f.copy()
    g.iloc[2, 0] = 0.5
    assert make_labels(g).iloc[1] != make_labels(f).iloc[1]


def test_bad_windows_and_frames_are_refused_with_a_clear_message(frame):
    with pytest.raises(ValueError, match="unknown feature window family 'momentum'"):
        build_features(frame, {"momentum": [3]})
    with pytest.raises(ValueError, match="volatility"):
        normalize_windows({"volatility": [1]})
    with pytest.raises(ValueError, match="macd"):
        normalize_windows({"macd": [26, 12, 9]})
    with pytest.raises(ValueError, match="returns"):
        normalize_windows({"returns": []})
    with pytest.raises(ValueError, match="returns"):
        normalize_windows({"returns": [1.5]})
    with pytest.raises(ValueError, match="missing column"):
        build_features(frame.drop(columns=["volume"]))
    bad = frame.copy()
    bad.iloc[10, bad.columns.get_loc("close")] = -1.0
    with pytest.raises(ValueError, match="'close' must be > 0; row 10"):
        build_features(bad)
    with pytest.raises(ValueError, match="horizon"):
        make_labels(frame, 0)


def test_normalize_windows_fills_defaults_and_sorts():
    w = normalize_windows({"returns": [12, 3, 3]})
    assert w["returns"] == (3, 12)
    assert w["volatility"] == DEFAULT_WINDOWS["volatility"]
    assert w["macd"] == (12, 26, 9)
