"""app.core.domain (enums, timeframes, ids, symbols) and app.ml.scoring (promotion score)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from app.core.domain import (
    TIMEFRAMES,
    JobStatus,
    ModelStatus,
    ModelType,
    Timeframe,
    TriggerReason,
    make_model_id,
    normalize_symbol,
    timeframe_seconds,
)
from app.ml.scoring import promotion_score, ramp


def test_timeframes_and_seconds() -> None:
    assert TIMEFRAMES == {
        "1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400, "1d": 86400,
    }
    assert [t.value for t in Timeframe] == list(TIMEFRAMES)
    assert timeframe_seconds("4h") == 14400
    assert timeframe_seconds(Timeframe.D1) == 86400
    with pytest.raises(ValueError, match="1m, 5m, 15m, 30m, 1h, 4h, 1d"):
        timeframe_seconds("2h")


def test_enum_values_match_the_contract() -> None:
    assert [m.value for m in ModelType] == [
        "xgboost", "lightgbm", "nhits", "patchtst", "rl_v2", "rl_v3", "other",
    ]
    assert [s.value for s in ModelStatus] == [
        "training", "shadow", "candidate", "production", "retired", "failed",
    ]
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed"]
    assert [t.value for t in TriggerReason] == [
        "periodic", "drift_detected", "performance_degraded", "regime_change", "manual",
    ]
    # StrEnum: members compare and format as their plain values
    assert ModelType.XGBOOST == "xgboost"
    assert f"{JobStatus.QUEUED}" == "queued"
    assert ModelType("rl_v3") is ModelType.RL_V3


def test_make_model_id() -> None:
    assert make_model_id("xgboost", "BTCUSDT", "1h") == "xgboost_btcusdt_1h"
    assert make_model_id(ModelType.LIGHTGBM, "eth-usd", "4h") == "lightgbm_eth-usd_4h"
    with pytest.raises(ValueError):
        make_model_id("catboost", "BTCUSDT", "1h")
    with pytest.raises(ValueError, match="timeframe"):
        make_model_id("xgboost", "BTCUSDT", "2h")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("btcusdt", "BTCUSDT"), (" eth-usd ", "ETH-USD"), ("brk.b", "BRK.B"), ("a_1", "A_1")],
)
def test_normalize_symbol_accepts(raw: str, expected: str) -> None:
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize("raw", ["", "btc usdt", "btc/usdt", "x" * 31, "ü", "../etc"])
def test_normalize_symbol_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="invalid symbol"):
        normalize_symbol(raw)


def test_domain_imports_nothing_heavy() -> None:
    code = (
        "import sys, app.core.domain, app.ml.scoring; "
        "heavy = [m for m in ('numpy', 'pandas', 'sqlalchemy', 'flask', 'celery') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_ramp() -> None:
    assert ramp(-1, 0, 3) == 0.0
    assert ramp(1.5, 0, 3) == 0.5
    assert ramp(9, 0, 3) == 1.0
    assert ramp(float("nan"), 0, 3) == 0.0
    assert ramp(None, 0, 3) == 0.0


def test_promotion_score_formula() -> None:
    m = {"sharpe": 1.5, "win_rate": 0.55, "profit_factor": 2.0, "trades": 80}
    # 100 × (0.5·0.5 + 0.3·0.5 + 0.2·0.5)
    assert promotion_score(m) == pytest.approx(50.0)
    best = {"sharpe": 5, "win_rate": 0.9, "profit_factor": 10, "trades": 9}
    assert promotion_score(best) == pytest.approx(100.0)
    worst = {"sharpe": -2, "win_rate": 0.1, "profit_factor": 0.5, "trades": 9}
    assert promotion_score(worst) == 0.0


def test_promotion_score_edge_values() -> None:
    # no losing trade: profit factor counts fully when there were trades
    assert promotion_score({"sharpe": 0, "win_rate": 0.4, "profit_factor": None, "trades": 3}) == (
        pytest.approx(20.0)
    )
    # ... and not at all without trades
    assert promotion_score({"sharpe": 0, "win_rate": 0, "profit_factor": None, "trades": 0}) == 0.0
    nan_sharpe = {"sharpe": math.nan, "win_rate": 0.7, "profit_factor": 3.0, "trades": 5}
    assert promotion_score(nan_sharpe) == pytest.approx(50.0)
    assert promotion_score({"sharpe": None, "win_rate": None, "profit_factor": 1.0}) == 0.0
    inf_pf = {"sharpe": 0, "win_rate": 0, "profit_factor": math.inf, "trades": 1}
    assert promotion_score(inf_pf) == pytest.approx(20.0)
