"""A version's diagnostics, from the walk-forward's out-of-sample folds.

Owns `calibrate_folds` (CLM_CALIBRATE=1: each fold's probabilities mapped by a Platt
scaling fitted only on the earlier folds' out-of-sample bars whose labels were known
before the fold starts — never on bars it is then judged on) and `version_diagnostics`
(the report app.services.reports serves: attributions aggregated over folds, calibration,
OOS metrics per regime and per calendar period, the trade distribution, the OOS equity
curve thinned to at most MAX_EQUITY_POINTS points by app.analysis.equity_curve).

The training pipeline's evaluate step calls both (app.flows.pipeline.evaluate); the
per-fold attributions come from the fold work items (app.ml.attributions), where each
fold's model is still in memory — fold models are not kept, and refitting them here would
double the job's cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.analysis.breakdown import (
    attribution_stability,
    group_metrics,
    period_labels,
    trade_distribution,
)
from app.analysis.calibration import apply_platt, calibration_summary, fit_platt
from app.analysis.equity_curve import thin_indices
from app.analysis.regime import regime_labels
from app.core.timeutil import isoformat
from app.ml.backtest import run_backtest
from app.ml.evaluation import (
    Dataset,
    EvaluationConfig,
    FoldPrediction,
    concat_predictions,
    ordered_predictions,
    probabilities_to_positions,
)
from app.ml.evolution.space import TradingRules
from app.ml.evolution.strategy import positions_from_probabilities

__all__ = ["MAX_EQUITY_POINTS", "calibrate_folds", "version_diagnostics"]

# The report's OOS equity curve is for a chart (~800 px wide): more points show nothing more
# and only make every report (and console page) heavier.
MAX_EQUITY_POINTS = 500


def _rows(dataset: Dataset, stamps: pd.DatetimeIndex) -> np.ndarray:
    rows = dataset.timestamps.get_indexer(stamps)
    if (rows < 0).any():
        raise ValueError(f"prediction timestamp {stamps[int(np.flatnonzero(rows < 0)[0])]} "
                         "is not in the dataset")
    return rows


def calibrate_folds(dataset: Dataset, predictions: Sequence[FoldPrediction],
                    cfg: EvaluationConfig) -> tuple[list[FoldPrediction], dict[str, Any]]:
    """Causally calibrated copies of the fold predictions, and what was fitted.

    Fold k's map is fitted on the out-of-sample bars of folds < k whose label (which looks
    `label_horizon` rows ahead) was known before fold k's first row; the first fold keeps
    its raw probabilities (nothing earlier to learn from). The map for live bars, fitted
    on every out-of-sample bar, is returned as "serving" (stored with the report; live
    scoring does not apply it yet).
    """
    ordered = ordered_predictions(predictions)
    seen_rows: list[np.ndarray] = []
    seen_proba: list[np.ndarray] = []
    out, maps = [], []
    for pred in ordered:
        rows = _rows(dataset, pred.timestamps)
        if seen_rows:
            r, p = np.concatenate(seen_rows), np.concatenate(seen_proba)
            known = r + dataset.label_horizon < rows[0]
            platt = fit_platt(p[known], dataset.y[r[known]])
        else:
            platt = fit_platt([], [])
        out.append(dataclasses.replace(pred, proba=apply_platt(platt, pred.proba)))
        maps.append({"fold": pred.fold, **platt.to_dict()})
        seen_rows.append(rows)
        seen_proba.append(np.asarray(pred.proba, dtype=np.float64))
    r_all, p_all = np.concatenate(seen_rows), np.concatenate(seen_proba)
    serving = fit_platt(p_all, dataset.y[r_all])
    return out, {"method": "platt", "per_fold": maps, "serving": serving.to_dict()}


def _positions(proba: np.ndarray, close: np.ndarray, cfg: EvaluationConfig,
               rules: TradingRules | None) -> np.ndarray:
    if rules is None:
        return probabilities_to_positions(proba, cfg.long_threshold, cfg.short_threshold)
    return positions_from_probabilities(proba, close, rules)


def _bar_hours(stamps: pd.DatetimeIndex) -> float | None:
    if len(stamps) < 2:
        return None
    spacing = np.diff(stamps.asi8)
    return float(np.median(spacing)) / 3.6e12


def version_diagnostics(dataset: Dataset, predictions: Sequence[FoldPrediction],
                        cfg: EvaluationConfig, rules: TradingRules | None, *,
                        fold_attributions: Sequence[Mapping[str, Any]] = (),
                        raw_predictions: Sequence[FoldPrediction] | None = None,
                        calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's figures (shape: app.services.reports.version_report).

    `predictions`: the probabilities the metrics were computed on (calibrated when
    `calibration` says so, with `raw_predictions` the models' own). `fold_attributions`:
    one {"fold", "method", "rows", "values"} per fold from app.ml.attributions.
    """
    stamps, proba = concat_predictions(predictions)
    rows = _rows(dataset, stamps)
    close, labels = dataset.close[rows], dataset.y[rows]
    positions = _positions(proba, close, cfg, rules)
    # The evaluation's own backtest (app.ml.oos.oos_metrics): the same positions builder,
    # closes, fees and bars, so its equity ends at 1 + the metrics' total_return.
    bt = run_backtest(close, positions, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps,
                      periods_per_year=cfg.periods_per_year, timestamps=stamps)
    # The return earned over bar i is the position decided at bar i's close, realized at
    # bar i+1's: grouped under bar i (its regime, its period); the last bar earns none.
    bar_returns = np.append(bt.equity[1:] / bt.equity[:-1] - 1.0, 0.0)
    hits = (proba > 0.5) == (labels == 1.0)

    frame = pd.DataFrame({"close": dataset.close}, index=dataset.timestamps)
    regimes = regime_labels(frame).to_numpy(dtype=object)[rows]
    period, periods = period_labels(stamps)

    calib = calibration_summary(proba, labels)
    calib["calibrated"] = calibration is not None
    calib["raw"] = None
    if calibration is not None and raw_predictions is not None:
        _, raw = concat_predictions(raw_predictions)
        raw_summary = calibration_summary(raw, labels)
        calib["raw"] = {"brier": raw_summary["brier"], "ece": raw_summary["ece"]}
        calib["map"] = dict(calibration)

    per_fold = sorted(fold_attributions, key=lambda a: int(a.get("fold", 0)))
    stability = attribution_stability([a["values"] for a in per_fold])
    methods = sorted({str(a.get("method")) for a in per_fold})
    return {
        "attributions": stability["mean"],
        "attribution_detail": {
            "method": methods[0] if len(methods) == 1 else methods,
            "per_fold": [{"fold": int(a["fold"]), "rows": a.get("rows"),
                          "values": a["values"]} for a in per_fold],
            "stability": stability["stability"],
            "rank_correlation": stability["rank_correlation"],
        },
        "calibration": calib,
        "by_regime": group_metrics(regimes, bar_returns, positions, hits,
                                   bt.periods_per_year, "regime"),
        "period": period,
        "by_period": group_metrics(periods, bar_returns, positions, hits,
                                   bt.periods_per_year, "period"),
        "trades": trade_distribution(bt.trade_returns, bt.trade_entries, bt.trade_exits,
                                     bar_hours=_bar_hours(stamps)),
        "oos_bars": len(stamps),
        "equity": [[isoformat(stamps[i]), float(bt.equity[i])]
                   for i in thin_indices(bt.equity, MAX_EQUITY_POINTS)],
    }
