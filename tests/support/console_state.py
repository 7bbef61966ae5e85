"""Registry state for the console tests and benchmark, built cheaply: versions registered
through the registry service (one with stored diagnostics, as the evaluate step writes
them), a production version, a live record, a finished strategy search with its front.

The diagnostics, live points and search rows are written as the pipeline, the live
scorer and the search would write them; the tests then compare what the console shows
with what the JSON API answers for the same rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.timeutil import isoformat, utcnow
from app.db import transaction
from app.models.evolution import (
    CandidateStatus,
    SearchGeneration,
    SearchStatus,
    StrategyCandidate,
    StrategySearch,
)
from app.models.live import LiveScore, LiveScorePoint
from app.services import registry

MODEL = "xgboost_btcusdt_1h"
OTHER = "lightgbm_ethusdt_1h"


def metrics(sharpe: float, **more: Any) -> dict[str, Any]:
    return {"sharpe": sharpe, "win_rate": 0.55, "profit_factor": 1.45, "max_drawdown": 0.08,
            "trades": 64, "total_return": 0.21, **more}


def oos_equity(bars: int = 480) -> list[list[Any]]:
    """A thinned OOS equity curve as the evaluate step stores it, agreeing with `metrics`:
    up 15 %, down 8 % from that peak (max_drawdown 0.08), up to 1.21 (total_return 0.21)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    top, bottom, end = 1.15, 1.15 * (1 - 0.08), 1.21
    rise, fall = bars // 2, bars // 6
    values = ([1.0 + (top - 1.0) * i / rise for i in range(rise)]
              + [top + (bottom - top) * i / fall for i in range(fall + 1)])
    rest = bars - len(values)
    values += [bottom + (end - bottom) * (i + 1) / rest for i in range(rest)]
    return [[isoformat(start + timedelta(hours=i)), v] for i, v in enumerate(values)]


def diagnostics() -> dict[str, Any]:
    bins = []
    for i in range(10):
        lower, upper = i / 10, (i + 1) / 10
        mid = (lower + upper) / 2
        bins.append({"lower": lower, "upper": upper, "count": 20 + i,
                     "mean_predicted": mid, "observed_rate": min(1.0, mid * 0.9 + 0.04)})
    regimes = [{"regime": r, "bars": b, "sharpe": s, "total_return": t, "mean_return": t / b,
                "accuracy": 0.54, "exposure": 0.6}
               for r, b, s, t in (("bull", 300, 1.9, 0.14), ("bear", 200, -0.4, -0.02),
                                  ("sideways", 100, 0.7, 0.01))]
    return {"attributions": {"ret_1": 0.031, "rsi_14": 0.022, "vol_24": 0.012, "ret_24": 0.004},
            "calibration": {"bins": bins, "brier": 0.2431, "ece": 0.0312, "calibrated": False,
                            "raw": None},
            "by_regime": regimes, "period": "month",
            "by_period": [{**r, "period": p}
                          for p, r in zip(("2024-01", "2024-02"), regimes[:2], strict=True)],
            "trades": {"count": 64, "holding_bars": {"mean": 5.2, "median": 4.0},
                       "returns": {"mean": 0.003, "median": 0.002, "win_rate": 0.55}},
            "equity": oos_equity()}


def register(url: str, model_id: str, sharpe: float, *, with_report: bool = False) -> str:
    model_type, symbol, timeframe = model_id.split("_")
    with transaction(url, immediate=True) as session:
        row = registry.register_version(
            session, model_type=model_type, symbol=symbol.upper(), timeframe=timeframe,
            metrics=metrics(sharpe), actor="test",
            evaluation={"diagnostics": diagnostics()} if with_report else None)
    return str(row["version"])


def add_live_record(url: str, model_id: str, version: str, bars: int = 120) -> None:
    start = utcnow() - timedelta(hours=bars)
    equity = [1.0 + 0.0008 * i + 0.01 * math.sin(i / 6) for i in range(bars)]
    with transaction(url) as session:
        rec = LiveScore(model_id=model_id, version=version, symbol="BTCUSDT", timeframe="1h",
                        setup={}, since=start, last_bar=start + timedelta(hours=bars - 1),
                        bars=bars, trades=9, sharpe=1.23, max_drawdown=0.02,
                        total_return=equity[-1] - 1, final_equity=equity[-1],
                        metrics={"sharpe": 1.23, "win_rate": 0.56, "profit_factor": 1.5,
                                 "max_drawdown": 0.02, "trades": 9,
                                 "total_return": equity[-1] - 1})
        session.add(rec)
        session.flush()
        session.add_all(LiveScorePoint(score_id=rec.id, ts=start + timedelta(hours=i),
                                       position=1.0, equity=e) for i, e in enumerate(equity))


def add_search(url: str, model_id: str) -> str:
    search_id = "5e1ec7ed-0000-4000-8000-000000000001"
    objectives = ["sharpe", "max_drawdown"]
    with transaction(url) as session:
        session.add(StrategySearch(
            id=search_id, model_id=model_id, model_type="xgboost", symbol="BTCUSDT",
            timeframe="1h", dataset_span_days=30, objectives=objectives, population=6,
            generations=3, space={}, study_name=f"ui-{search_id}", status=SearchStatus.SUCCEEDED,
            current_generation=2, trials_total=18, trials_evaluated=18,
            finished_at=utcnow()))
        session.flush()
        for gen, hv in enumerate((0.21, 0.34, 0.41)):
            session.add(SearchGeneration(search_id=search_id, generation=gen, size=6,
                                         evaluated=6, hypervolume=hv,
                                         completed_at=utcnow()))
            for i in range(6):
                sharpe, drawdown = 0.2 + 0.3 * gen + 0.1 * i, 0.05 + 0.02 * i
                session.add(StrategyCandidate(
                    search_id=search_id, model_id=model_id, model_type="xgboost",
                    generation=gen, trial_number=gen * 6 + i, optuna_trial_id=gen * 6 + i,
                    params={"max_depth": 2 + i}, status=CandidateStatus.EVALUATED,
                    objectives={"sharpe": sharpe, "max_drawdown": drawdown},
                    pareto=gen == 2 and i in (0, 3, 5)))
    return search_id


def add_job(settings: Any) -> str:
    """A manual training request as POST /clm/train records it (its trigger decision and
    a queued job that nothing runs: its steps stay pending), on stored data."""
    from app.flows.training import request_training
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    MarketDataStore(settings.data_dir).merge("PLANTED", "1h",
                                             generate_ohlcv("planted", 2000, seed=1))
    with transaction(settings.database_url) as session:
        outcome = request_training(session, settings, model_type="xgboost",
                                   symbol="PLANTED", timeframe="1h", dataset_span_days=30,
                                   params={"n_estimators": 10}, source="test")
    assert outcome.job is not None
    return str(outcome.job["job_id"])


def add_drift_report(url: str, model_id: str, version: str) -> None:
    """A drift check's report as the periodic check stores it (two features, one drifted)."""
    from app.models.continuous import DriftReport

    features = {"ret_1": {"psi": 0.31, "ks": 0.21, "drifted": True},
                "rsi_14": {"psi": 0.04, "ks": 0.05, "drifted": False}}
    with transaction(url) as session:
        session.add(DriftReport(
            model_id=model_id, version=version, status="ok", drifted=True, rows=500,
            features_total=2, features_drifted=1, share_drifted=0.5, prediction_psi=0.2718,
            prediction_ks=0.12, psi_threshold=0.2, feature_share_threshold=0.3,
            ks_threshold=0.1, features=features))
