"""One strategy evaluated out of sample: walk-forward with the pipeline's own pieces.

Owns `EvalSettings`, `evaluate_strategy` (a trial) and `evaluate_holdout` (the final
check of a chosen candidate on bars no trial saw), plus `regime_series`.

A trial never sees the hold-out: it is cut off the frame before features and labels are
built, so even the last labels of the search part cannot peek into it. Inside the search
part, app.ml.evaluation builds the dataset and the expanding, purged folds and trains each
fold (app.ml.trainers); the concatenated OOS probabilities become positions under the
strategy's trading rules and are backtested with the configured fees by app.ml.oos, the
one out-of-sample builder the training pipeline uses too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from app.analysis.overfitting import return_moments
from app.analysis.regime import regime_labels
from app.core.timeutil import isoformat
from app.ml.backtest import BacktestResult
from app.ml.evaluation import (
    EvaluationConfig,
    Fold,
    FoldPrediction,
    make_folds,
    prepare_dataset,
    train_fold,
)
from app.ml.evolution.space import StrategySpace, decode
from app.ml.oos import StrategyOOS, strategy_oos
from app.ml.trainers import Trainer, get_trainer

__all__ = ["EvalSettings", "TrialResult", "evaluate_holdout", "evaluate_strategy",
           "regime_series"]


@dataclass(frozen=True)
class EvalSettings:
    """Walk-forward and hold-out set-up of a search (stored on the search row)."""

    n_folds: int = 3
    test_fraction: float = 0.5
    min_train_rows: int = 300
    min_test_rows: int = 50
    fee_bps: float = 5.0
    slippage_bps: float = 0.0
    periods_per_year: float | None = None
    holdout_fraction: float = 0.2
    holdout_min_bars: int = 100
    collapse_ratio: float = 0.5
    seed: int = 0
    n_threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EvalSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def evaluation_config(self, label_horizon: int) -> EvaluationConfig:
        return EvaluationConfig(
            n_folds=self.n_folds, label_horizon=label_horizon, fee_bps=self.fee_bps,
            slippage_bps=self.slippage_bps, test_fraction=self.test_fraction,
            min_train_rows=self.min_train_rows, min_test_rows=self.min_test_rows,
            periods_per_year=self.periods_per_year,
        )


_trainers: dict[tuple[str, str], Trainer] = {}


def _trainer(model_type: str, model_params: Mapping[str, Any]) -> Trainer:
    """The trainer of `model_type` (a plug-in's: by its "trainer" parameter), resolved
    once per process: trainers are stateless, and resolving one costs milliseconds."""
    key = (model_type, str(model_params.get("trainer", "")))
    trainer = _trainers.get(key)
    if trainer is None:
        trainer = _trainers[key] = get_trainer(model_type, model_params)
    return trainer


@dataclass
class TrialResult:
    metrics: dict[str, Any]
    regime_metrics: dict[str, dict[str, Any]]
    seconds: float


def regime_series(frame: pd.DataFrame) -> pd.Series:
    """Causal regime label per bar (app.analysis.regime.regime_labels, the one labeller;
    "unknown" during its warm-up)."""
    labels = regime_labels(frame).reindex(frame.index)
    return labels.astype(object).where(labels.notna(), "unknown").astype(str)


def _regime_metrics(
    bt: BacktestResult, labels: np.ndarray, ppy: float
) -> dict[str, dict[str, Any]]:
    """Metrics of the OOS strategy restricted to each regime's bars.

    The return from bar t to t+1 is earned by the position decided at t, so it belongs
    to the regime known at t. Drawdown compounds only that regime's bar returns; trades
    are attributed to the regime at their entry bar.
    """
    out: dict[str, dict[str, Any]] = {}
    returns = bt.returns
    bar_labels = labels[:-1]
    for name in sorted(set(labels.tolist())):
        mask = bar_labels == name
        r = returns[mask]
        r = r[np.isfinite(r)]
        entries = bt.trade_entries
        in_regime = labels[entries] == name if entries.size else np.zeros(0, dtype=bool)
        tr = bt.trade_returns[in_regime]
        sharpe = 0.0
        if r.size >= 2 and r.std(ddof=1) > 0:
            sharpe = float(r.mean() / r.std(ddof=1) * np.sqrt(ppy))
        equity = np.cumprod(1.0 + r) if r.size else np.ones(1)
        peak = np.maximum(np.maximum.accumulate(equity), 1.0)
        losses = tr[tr < 0]
        out[name] = {
            "bars": int(mask.sum()),
            "sharpe": sharpe,
            "max_drawdown": float(max(0.0, 1.0 - (equity / peak).min())),
            "total_return": float(equity[-1] - 1.0),
            "trades": int(tr.size),
            "win_rate": float((tr > 0).mean()) if tr.size else 0.0,
            "profit_factor": float(tr[tr > 0].sum() / -losses.sum()) if losses.size else None,
        }
    return out


def _search_metrics(oos: StrategyOOS) -> dict[str, Any]:
    """The OOS metrics (app.ml.oos, the pipeline's builder) plus what the search adds: the
    per-bar return moments (overfitting checks) and the out-of-sample span."""
    metrics = dict(oos.metrics)
    moments = return_moments(oos.backtest.returns)
    metrics["sharpe_per_bar"] = moments["sharpe"]
    metrics["returns_skew"] = moments["skew"]
    metrics["returns_kurtosis"] = moments["kurtosis"]
    metrics["returns_n"] = moments["n"]
    metrics["oos_start"] = isoformat(oos.stamps[0].to_pydatetime())
    metrics["oos_end"] = isoformat(oos.stamps[-1].to_pydatetime())
    return metrics


def evaluate_strategy(
    frame: pd.DataFrame,
    space: StrategySpace,
    params: Mapping[str, Any],
    cfg: EvalSettings,
    *,
    holdout_start: int,
    regimes: pd.Series | None = None,
    heartbeat: Callable[[], None] | None = None,
    heartbeat_every_s: float = 0.0,
) -> TrialResult:
    """Walk-forward OOS evaluation of one parameter set on frame[:holdout_start].

    `heartbeat` is called after a fold (the trial task extends its lease there) once at
    least `heartbeat_every_s` seconds passed since the start or the previous call; the
    default 0 calls it after every fold. A caller whose lease outlives several folds
    passes a fraction of it (e.g. a third) and saves a database commit per fold.
    Raises InsufficientData / ValueError when the parameters leave too little data.
    """
    t0 = time.perf_counter()
    strategy = decode(space, params)
    search_frame = frame.iloc[:holdout_start]
    ecfg = cfg.evaluation_config(strategy.label_horizon)
    dataset = prepare_dataset(search_frame, ecfg, strategy.windows)
    folds = make_folds(dataset.n_rows, ecfg)
    trainer = _trainer(space.model_type, strategy.model_params)
    model_params = trainer.validate_params(strategy.model_params)
    predictions: list[FoldPrediction] = []
    beat = t0
    for fold in folds:
        predictions.append(train_fold(dataset, fold, trainer, model_params, seed=cfg.seed,
                                      n_threads=cfg.n_threads))
        if heartbeat is not None and time.perf_counter() - beat >= heartbeat_every_s:
            heartbeat()
            beat = time.perf_counter()
    oos = strategy_oos(dataset, predictions, ecfg, strategy.rules)
    metrics = _search_metrics(oos)
    labels_all = regimes if regimes is not None else regime_series(search_frame)
    labels = labels_all.reindex(oos.stamps).fillna("unknown").astype(str).to_numpy()
    regime_metrics = _regime_metrics(oos.backtest, labels, oos.backtest.periods_per_year)
    return TrialResult(metrics, regime_metrics, time.perf_counter() - t0)


def evaluate_holdout(
    frame: pd.DataFrame,
    space: StrategySpace,
    params: Mapping[str, Any],
    cfg: EvalSettings,
    *,
    holdout_start: int,
) -> dict[str, Any]:
    """Train on every search bar (purged) and trade the held-out bars once.

    This is the check no trial could have fitted: the hold-out bars were cut off before
    any trial built features or labels.
    """
    strategy = decode(space, params)
    ecfg = cfg.evaluation_config(strategy.label_horizon)
    dataset = prepare_dataset(frame, ecfg, strategy.windows)
    first_holdout = frame.index[holdout_start]
    hs = int(dataset.timestamps.searchsorted(first_holdout, side="left"))
    train_end = hs - ecfg.purge_rows
    if train_end < ecfg.min_train_rows or dataset.n_rows - hs < 2:
        raise ValueError(f"hold-out check needs >= {ecfg.min_train_rows} training rows and "
                         f"2 hold-out rows; got {train_end} and {dataset.n_rows - hs}")
    trainer = _trainer(space.model_type, strategy.model_params)
    fold = Fold(index=0, train_start=0, train_end=train_end, test_start=hs,
                test_end=dataset.n_rows)
    pred = train_fold(dataset, fold, trainer, trainer.validate_params(strategy.model_params),
                      seed=cfg.seed, n_threads=cfg.n_threads)
    return _search_metrics(strategy_oos(dataset, [pred], ecfg, strategy.rules))
