"""Instruments: calendars (closed sessions are not gaps; bars per year for Sharpe), costs
through the evaluation path, the API and CLI refusals, and pandas' default CSV."""

from __future__ import annotations

import json
import math
import subprocess

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest

from app.analysis.calendars import bars_per_year, is_open, normalize_calendar
from app.db import transaction
from app.flows.pipeline.stages import eval_config
from app.ml.data.importer import find_gaps, load_ohlcv
from app.ml.data.store import MarketDataStore
from app.ml.evaluation import FoldPrediction, evaluate_predictions
from app.services.instruments import market_terms, set_instrument
from tests.backtest_reference import reference_backtest
from tests.test_cli_data_backtest import CLM, cli_env

HOUR = pd.Timedelta(hours=1)


def ohlcv(index: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(index))))
    return pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99,
                         "close": close, "volume": 1.0},
                        index=index.rename("timestamp").as_unit("ns"))


def fx_week_index() -> pd.DatetimeIndex:
    """Hourly bars of two FX weeks (Sun 22:00 → Fri 21:00 UTC), minus a Wednesday
    outage of 3 bars."""
    full = pd.date_range("2024-01-07 22:00", "2024-01-19 21:00", freq="1h", tz="UTC")
    trading = full[is_open("fx", full, 3600)]
    outage = pd.date_range("2024-01-10 12:00", periods=3, freq="1h", tz="UTC")
    return trading.difference(outage)


def xnys_daily_index(start: str = "2023-01-01", end: str = "2024-12-31") -> pd.DatetimeIndex:
    sessions = xcals.get_calendar("XNYS", start=start, end=end).sessions
    return pd.DatetimeIndex(sessions).tz_localize("UTC")


# -- calendars (pure) -------------------------------------------------------------------
def test_fx_week_has_no_weekend_gaps_but_a_midweek_outage_is_one():
    index = fx_week_index()
    # The weekend in the middle is closed from Fri 22:00 to Sun 22:00.
    assert pd.Timestamp("2024-01-12 21:00", tz="UTC") in index
    assert pd.Timestamp("2024-01-12 22:00", tz="UTC") not in index
    gaps, missing = find_gaps(index, "1h", calendar="fx")
    assert missing == 3 and len(gaps) == 1
    assert gaps[0].after == pd.Timestamp("2024-01-10 11:00", tz="UTC")
    # As a 24/7 market the weekend would be 48 missing bars.
    gaps247, missing247 = find_gaps(index, "1h")
    assert (len(gaps247), missing247) == (2, 3 + 48)


def test_fx_daily_bars_monday_to_friday_have_no_gaps():
    days = pd.date_range("2024-01-01", "2024-03-31", freq="B", tz="UTC")
    assert find_gaps(days, "1d", calendar="fx") == ([], 0)
    assert find_gaps(days, "1d")[1] > 0


def test_xnys_nights_weekends_and_holidays_are_not_gaps(tmp_path):
    daily = xnys_daily_index()
    store = MarketDataStore(tmp_path)
    store.merge("SPY", "1d", ohlcv(daily))
    assert store.gap_counts("SPY", "1d", "XNYS") == (0, 0)
    assert store.gap_counts("SPY", "1d")[1] > 200  # weekends and holidays as a 24/7 market
    # Hourly bars from the open (14:30 UTC in winter): the nights are closed too; a
    # missing session hour in the afternoon is a gap.
    hours = pd.date_range("2024-01-02 14:30", "2024-01-05 20:30", freq="1h", tz="UTC")
    hours = hours[is_open("XNYS", hours, 3600)]
    assert len(hours) == 4 * 7
    drop = pd.Timestamp("2024-01-03 17:30", tz="UTC")
    gaps, missing = find_gaps(hours.difference([drop]), "1h", calendar="XNYS")
    assert missing == 1 and gaps[0].after == drop - HOUR


def test_bars_per_year_follow_the_calendar():
    sessions = xcals.get_calendar("XNYS", start="2015-01-01", end="2024-12-31").sessions
    years = ((sessions[-1] - sessions[0]).days + 1) / 365.25
    assert bars_per_year("XNYS", 86400) == pytest.approx(len(sessions) / years)
    assert 250 < bars_per_year("XNYS", 86400) < 254
    # 6.5 h sessions: 7 one-hour bars start in each (early closes: 4)
    assert 7 * 245 < bars_per_year("XNYS", 3600) < 7 * 253
    assert bars_per_year("fx", 86400) == 260
    assert bars_per_year("fx", 3600) == 260 * 24
    assert bars_per_year("24/7", 3600) is None  # from the bar spacing, as before
    assert normalize_calendar("nyse") == "XNYS" and normalize_calendar("FX") == "fx"
    with pytest.raises(ValueError, match="unknown calendar"):
        normalize_calendar("MOON")


# -- market terms through the evaluation path ----------------------------------------
@pytest.fixture
def sqlite_settings(sqlite_url, make_settings):
    return make_settings(sqlite_url)


def test_daily_xnys_sharpe_uses_its_sessions_per_year(sqlite_settings):
    settings = sqlite_settings
    with transaction(settings.database_url) as session:
        default = market_terms(session, settings, "SPY", "1d")
        set_instrument(session, settings, "spy", calendar="XNYS", fee_bps=0, slippage_bps=0)
    assert (default.calendar, default.periods_per_year) == ("24/7", None)
    with transaction(settings.database_url) as session:
        terms = market_terms(session, settings, "SPY", "1d")
    cfg = eval_config(settings, None, terms)  # what a training job's prepare step builds
    index = xnys_daily_index("2024-01-01", "2024-12-31")
    close = ohlcv(index, seed=3)["close"]
    long_all = FoldPrediction(0, index, np.full(len(index), 0.9))  # long on every bar
    metrics = evaluate_predictions(close, [long_all], cfg)
    # By hand: always long without costs, so per-bar returns are the close's.
    r = close.pct_change().to_numpy()[1:]
    sessions = xcals.get_calendar("XNYS", start="2015-01-01", end="2024-12-31").sessions
    ppy = len(sessions) / (((sessions[-1] - sessions[0]).days + 1) / 365.25)
    expected = r.mean() / r.std(ddof=1) * math.sqrt(ppy)
    assert metrics["sharpe"] == pytest.approx(expected, rel=1e-9)
    assert cfg.periods_per_year == pytest.approx(ppy)
    # Annualised like a 24/7 market it would be sqrt(365 / 251.6) ≈ 1.2 times larger.
    assert metrics["sharpe"] * math.sqrt(365 / ppy) == pytest.approx(
        r.mean() / r.std(ddof=1) * math.sqrt(365), rel=1e-9)


def test_two_fee_levels_change_the_evaluation_as_the_backtest_model_says(sqlite_settings):
    settings = sqlite_settings
    index = pd.date_range("2024-01-01", periods=400, freq="1h", tz="UTC")
    close = ohlcv(index, seed=5)["close"]
    proba = np.where((np.arange(400) // 7) % 2 == 0, 0.9, 0.1)  # flips every 7 bars
    preds = [FoldPrediction(0, index, proba)]
    out = {}
    for fee in (1.0, 20.0):
        with transaction(settings.database_url) as session:
            set_instrument(session, settings, "EURUSD", fee_bps=fee, slippage_bps=0.5)
            terms = market_terms(session, settings, "EURUSD", "1h")
        cfg = eval_config(settings, None, terms)
        assert (cfg.fee_bps, cfg.slippage_bps) == (fee, 0.5)
        out[fee] = evaluate_predictions(close, preds, cfg)
        positions = np.where(proba > 0.55, 1.0, np.where(proba < 0.45, -1.0, 0.0))
        ref = reference_backtest(close.to_numpy(), positions, fee_bps=fee, slippage_bps=0.5,
                                 periods_per_year=8760.0)["metrics"]
        for key in ("total_return", "sharpe", "win_rate", "max_drawdown", "trades"):
            assert out[fee][key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert out[1.0]["trades"] == out[20.0]["trades"] > 50
    assert out[20.0]["total_return"] < out[1.0]["total_return"]
    assert out[20.0]["sharpe"] < out[1.0]["sharpe"]


# -- API and CLI --------------------------------------------------------------------------
def test_instrument_api_defaults_set_and_refusals(client, auth):
    r = client.get("/clm/instruments/EURUSD", headers=auth("viewer"))
    assert r.status_code == 200
    assert r.get_json() == {"symbol": "EURUSD", "calendar": "24/7", "fee_bps": 5.0,
                            "slippage_bps": 0.0, "configured": False, "updated_by": None,
                            "updated_at": None}
    for body, field in [({"calendar": "MOON"}, "calendar"), ({"fee_bps": -1}, "fee_bps"),
                        ({"fee_bps": 1000.5}, "fee_bps"), ({"slippage_bps": -0.1},
                                                           "slippage_bps"),
                        ({"calendar": "fx", "bogus": 1}, "bogus")]:
        r = client.put("/clm/instruments/EURUSD", json=body, headers=auth("admin"))
        assert r.status_code == 422, (body, r.get_json())
        assert r.content_type == "application/problem+json"
        assert [e["field"] for e in r.get_json()["errors"]] == [field], r.get_json()
    assert client.put("/clm/instruments/EURUSD", json={"calendar": "fx"},
                      headers=auth("operator")).status_code == 403
    assert client.put("/clm/instruments/bad%20sym", json={"calendar": "fx"},
                      headers=auth("admin")).status_code == 404
    r = client.put("/clm/instruments/eurusd", json={"calendar": "fx", "fee_bps": 0.4},
                   headers=auth("admin"))
    assert r.status_code == 200, r.get_json()
    item = r.get_json()
    assert (item["symbol"], item["calendar"], item["fee_bps"], item["slippage_bps"],
            item["configured"]) == ("EURUSD", "fx", 0.4, 0.0, True)
    r = client.put("/clm/instruments/SPY", json={"calendar": "nyse"}, headers=auth("admin"))
    assert r.get_json()["calendar"] == "XNYS"
    r = client.get("/clm/instruments?limit=1", headers=auth("viewer"))
    page1 = r.get_json()
    assert [i["symbol"] for i in page1["items"]] == ["EURUSD"] and page1["next_cursor"]
    r = client.get(f"/clm/instruments?limit=1&cursor={page1['next_cursor']}",
                   headers=auth("viewer"))
    assert [i["symbol"] for i in r.get_json()["items"]] == ["SPY"]
    assert r.get_json()["next_cursor"] is None


def run_clm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLM), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_instrument_refusals_and_fx_import_without_weekend_gaps(tmp_path, sqlite_url):
    env = {**cli_env(tmp_path), "CLM_DATABASE_URL": sqlite_url}
    for args, option in [(["--calendar", "MOON"], "--calendar"),
                         (["--fee-bps", "-1"], "--fee-bps"),
                         (["--slippage-bps", "1e4"], "--slippage-bps")]:
        r = run_clm(env, "instrument", "set", "EURUSD", *args)
        assert r.returncode == 2, r.stderr
        assert option in r.stderr, r.stderr
    r = run_clm(env, "instrument", "set", "EURUSD", "--calendar", "fx", "--fee-bps", "0.3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["calendar"] == "fx"
    r = run_clm(env, "instrument", "show", "GBPUSD")
    assert json.loads(r.stdout)["configured"] is False
    r = run_clm(env, "instrument", "list")
    assert [i["symbol"] for i in json.loads(r.stdout)["items"]] == ["EURUSD"]
    # A pandas-written FX file: no weekend gaps, the Wednesday outage reported.
    path = tmp_path / "eurusd.csv"
    ohlcv(fx_week_index()).rename_axis(None).to_csv(path)
    r = run_clm(env, "data", "import", str(path), "--symbol", "EURUSD", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    assert "1 gap(s), 3 missing bar(s)" in r.stdout and "calendar fx" in r.stdout, r.stdout
    r = run_clm(env, "data", "list", "--json")
    item = json.loads(r.stdout)["items"][0]
    assert (item["gaps"], item["missing_bars"], item["calendar"]) == (1, 3, "fx")


# -- pandas' default CSV ------------------------------------------------------------------
def test_pandas_default_csv_round_trips(tmp_path):
    frame = ohlcv(pd.date_range("2024-03-01", periods=48, freq="1h", tz="UTC"))
    path = tmp_path / "pandas.csv"
    frame.rename_axis(None).to_csv(path)
    assert path.read_text().startswith(",open,high,low,close,volume")
    result = load_ohlcv(path, "1h")
    pd.testing.assert_frame_equal(result.frame, frame, check_freq=False)
    assert result.format == "csv (pandas index)"
    # Named index (`timestamp`) as before; an empty header cell elsewhere stays refused.
    frame.to_csv(tmp_path / "named.csv")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "named.csv", "1h").frame, frame,
                                  check_freq=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("open,,high,low,close,volume\n1,2,3,4,5,6\n")
    with pytest.raises(ValueError, match="missing column"):
        load_ohlcv(bad, "1h")
