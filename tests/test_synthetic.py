"""Synthetic OHLCV generators: contract shape, determinism, and the structure they plant."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from app.ml.data.synthetic import KINDS, REGIMES, generate_ohlcv, generate_regime_series


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("timeframe", ["1h", "15m", "1d"])
def test_frames_follow_the_market_data_contract(kind, timeframe):
    f = generate_ohlcv(kind, 800, timeframe=timeframe, seed=3)
    assert list(f.columns) == ["open", "high", "low", "close", "volume"]
    assert (f.dtypes == np.float64).all()
    assert isinstance(f.index, pd.DatetimeIndex) and str(f.index.tz) == "UTC"
    assert f.index.name == "timestamp"
    assert f.index[0] == pd.Timestamp("2024-01-01", tz="UTC")
    step = {"1h": 3600, "15m": 900, "1d": 86400}[timeframe]
    assert (np.diff(f.index.asi8) == step * 10 ** (9 if f.index.unit == "ns" else 6)).all()
    body_lo = np.minimum(f["open"], f["close"])
    body_hi = np.maximum(f["open"], f["close"])
    assert (f["low"] <= body_lo).all() and (body_hi <= f["high"]).all()
    assert (f["volume"] > 0).all() and np.isfinite(f.to_numpy()).all()
    assert (f["open"].iloc[1:].to_numpy() == f["close"].iloc[:-1].to_numpy()).all()


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_frame_other_seed_other_frame(kind):
    a = generate_ohlcv(kind, 500, seed=11)
    pd.testing.assert_frame_equal(a, generate_ohlcv(kind, 500, seed=11), check_exact=True)
    assert not np.allclose(a["close"], generate_ohlcv(kind, 500, seed=12)["close"])


def test_start_is_respected_and_must_be_aware():
    start = datetime(2023, 6, 1, 12, tzinfo=UTC)
    f = generate_ohlcv("random_walk", 10, start=start)
    assert f.index[0] == pd.Timestamp(start)
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_ohlcv("random_walk", 10, start=datetime(2023, 6, 1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown synthetic kind 'sine'"):
        generate_ohlcv("sine", 10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['drift_ratio'\]"):
        generate_ohlcv("random_walk", 10, drift_ratio=1.0)
    with pytest.raises(ValueError, match="n_bars"):
        generate_ohlcv("planted", 0)
    with pytest.raises(ValueError, match="unknown timeframe"):
        generate_ohlcv("planted", 10, timeframe="2h")
    with pytest.raises(ValueError, match="vol must be > 0"):
        generate_ohlcv("planted", 10, vol=0.0)


def _lag1_autocorr_of_sums(close: pd.Series, k: int) -> float:
    """Autocorrelation of consecutive non-overlapping k-bar log returns."""
    r = np.diff(np.log(close.to_numpy()))
    sums = r[: len(r) // k * k].reshape(-1, k).sum(axis=1)
    return float(np.corrcoef(sums[:-1], sums[1:])[0, 1])


def test_planted_trends_persist_and_random_walk_does_not():
    planted = generate_ohlcv("planted", 6000, seed=0)
    walk = generate_ohlcv("random_walk", 6000, seed=0)
    # Drift blocks of 72-192 bars: 12-bar moves predict the next 12-bar move.
    assert _lag1_autocorr_of_sums(planted["close"], 12) > 0.3
    assert abs(_lag1_autocorr_of_sums(walk["close"], 12)) < 0.15


def test_regime_series_labels_match_the_generated_dynamics():
    frame, regimes = generate_regime_series(8000, seed=5)
    assert regimes.index.equals(frame.index) and regimes.name == "regime"
    assert set(regimes.unique()) <= set(REGIMES) and regimes.nunique() >= 3
    r = pd.Series(np.diff(np.log(frame["close"].to_numpy()), prepend=np.nan), index=frame.index)
    by = r.groupby(regimes).agg(["mean", "std"])
    assert by.loc["volatile_up", "std"] > 2 * by.loc["calm_up", "std"]
    assert by.loc["volatile_down", "std"] > 2 * by.loc["calm_down", "std"]
    assert by.loc["calm_up", "mean"] > 0 > by.loc["calm_down", "mean"]
    # Every block boundary is a genuine change of regime.
    changes = (regimes != regimes.shift()).sum() - 1
    assert changes >= 8000 // 400 - 1


def test_regime_series_with_fixed_blocks():
    frame, regimes = generate_regime_series(
        300, blocks=[("calm_up", 200), ("volatile_down", 100)], seed=1
    )
    assert (regimes.iloc[:200] == "calm_up").all() and (regimes.iloc[200:] == "volatile_down").all()
    assert generate_ohlcv("regime_switch", 300, blocks=[("calm_up", 200), ("volatile_down", 100)],
                          seed=1).equals(frame)
    with pytest.raises(ValueError, match="blocks cover 250 bars but n_bars is 300"):
        generate_regime_series(300, blocks=[("calm_up", 250)])
    with pytest.raises(ValueError, match="unknown regime 'sideways'"):
        generate_regime_series(300, blocks=[("sideways", 300)])
