"""Out-of-sample metrics of a strategy: the one builder.

Owns `strategy_oos` — the walk-forward out-of-sample probabilities of a model, turned into
positions under a strategy's trading rules (app.ml.evolution.strategy) and backtested with
the configured fees (app.ml.backtest) — and `oos_metrics`, the training pipeline's entry
point (plain thresholds through app.ml.evaluation.evaluate_predictions when the strategy
has no rules).

Both consumers use it: the training pipeline (app.flows.pipeline, evaluating a job) and
the strategy search (app.ml.evolution.evaluate, every trial and the hold-out check). A
job trained on a search's candidate is therefore judged by the very numbers the search
computed for the same bars, seed and folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.ml.backtest import BacktestResult, run_backtest
from app.ml.evaluation import (
    Dataset,
    EvaluationConfig,
    FoldPrediction,
    concat_predictions,
    evaluate_predictions,
    probabilities_to_positions,
)
from app.ml.evolution.space import TradingRules
from app.ml.evolution.strategy import positions_from_probabilities, turnover
from app.ml.scoring import promotion_score

__all__ = ["StrategyOOS", "oos_metrics", "oos_returns", "strategy_oos"]


@dataclass(frozen=True)
class StrategyOOS:
    """A strategy's out-of-sample backtest: its metrics, the backtest itself (per-bar
    returns, trades) and the series it ran on (`rows`: the dataset rows of `stamps`)."""

    metrics: dict[str, Any]
    backtest: BacktestResult
    stamps: pd.DatetimeIndex
    proba: np.ndarray
    rows: np.ndarray


def strategy_oos(dataset: Dataset, predictions: Sequence[FoldPrediction],
                 cfg: EvaluationConfig, rules: TradingRules) -> StrategyOOS:
    """Backtest the concatenated out-of-sample predictions (time order, folds disjoint)
    under `rules`, with `cfg`'s fees and annualisation.

    Metrics: the backtest's contract metrics (sharpe, win_rate, profit_factor,
    max_drawdown, trades, total_return), promotion_score, oos_bars, exposure (share of
    bars in a position) and turnover.
    """
    stamps, proba = concat_predictions(predictions)
    rows = dataset.timestamps.get_indexer(stamps)
    if (rows < 0).any():
        missing = stamps[int(np.flatnonzero(rows < 0)[0])]
        raise ValueError(f"prediction timestamp {missing} has no close in the dataset")
    close = dataset.close[rows]
    positions = positions_from_probabilities(proba, close, rules)
    result = run_backtest(close, positions, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps,
                          periods_per_year=cfg.periods_per_year, timestamps=stamps)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["promotion_score"] = promotion_score(metrics)
    metrics["oos_bars"] = len(stamps)
    metrics["exposure"] = float(np.mean(positions != 0.0))
    metrics["turnover"] = turnover(positions)
    return StrategyOOS(metrics, result, stamps, proba, rows)


def oos_metrics(dataset: Dataset, predictions: Sequence[FoldPrediction],
                cfg: EvaluationConfig, rules: TradingRules | None = None) -> dict[str, Any]:
    """Backtest metrics of a job's concatenated out-of-sample predictions.

    Without trading rules: `app.ml.evaluation.evaluate_predictions` (P > long → +1,
    P < short → −1). With rules (a strategy search's candidate): `strategy_oos`, as the
    search computed them. Same keys either way (plus turnover), and accuracy (share of
    bars whose P(up) > 0.5 matched the label).
    """
    if rules is None:
        return evaluate_predictions(dataset, predictions, cfg)
    oos = strategy_oos(dataset, predictions, cfg, rules)
    metrics = dict(oos.metrics)
    metrics["accuracy"] = float(np.mean((oos.proba > 0.5) == (dataset.y[oos.rows] == 1.0)))
    return metrics


def oos_returns(dataset: Dataset, predictions: Sequence[FoldPrediction],
                cfg: EvaluationConfig, rules: TradingRules | None = None
                ) -> tuple[pd.Series, float]:
    """Per-bar net returns of the same out-of-sample backtest `oos_metrics` judges (indexed
    by the bar each return ends on), and the periods per year its Sharpe used: what the
    paired champion/challenger test compares bar by bar."""
    stamps, proba = concat_predictions(predictions)
    if rules is not None:
        oos = strategy_oos(dataset, predictions, cfg, rules)
        result = oos.backtest
    else:
        rows = dataset.timestamps.get_indexer(stamps)
        if (rows < 0).any():
            missing = stamps[int(np.flatnonzero(rows < 0)[0])]
            raise ValueError(f"prediction timestamp {missing} has no close in the dataset")
        positions = probabilities_to_positions(proba, cfg.long_threshold, cfg.short_threshold)
        result = run_backtest(dataset.close[rows], positions, fee_bps=cfg.fee_bps,
                              slippage_bps=cfg.slippage_bps,
                              periods_per_year=cfg.periods_per_year, timestamps=stamps)
    return (pd.Series(result.returns, index=stamps[1:], name="ret"),
            float(result.periods_per_year))
