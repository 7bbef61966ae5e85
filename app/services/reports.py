"""A version's diagnostics report: what the console and GET …/report show.

Owns `version_report`. The figures themselves are computed once, by the training job's
evaluate step on the out-of-sample folds (app.ml.diagnostics), and stored with the version
under `evaluation["diagnostics"]`; this service only reads them back and gives them the
contract's shape, so a report never recomputes anything and never touches the artifacts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.services.registry import get_version

__all__ = ["REPORT_KEYS", "version_report"]

# The contract's keys (API_CONTRACT.md); always present, empty when nothing was computed.
REPORT_KEYS = ("attributions", "calibration", "by_regime", "by_period", "trades")


def _empty() -> dict[str, Any]:
    return {"attributions": {}, "calibration": {"bins": [], "brier": None, "ece": None},
            "by_regime": [], "by_period": [], "trades": {"count": 0}, "equity": []}


def version_report(session: Session, model_id: str, version: str) -> dict[str, Any]:
    """The diagnostics of one version (NotFound, from the registry, when it is unknown).

    Shape (every key always present)::

        {"model_id": str, "version": str, "status": str,
         "available": bool,            # False: the version has no diagnostics (registered
         "reason": str | None,         #  outside a training job, or trained before them)
         "attributions": {feature: mean |SHAP| over the OOS bars, largest first},
         "attribution_detail": {"method": "xgboost_pred_contribs" | "lightgbm_pred_contrib"
                                          | "shap_permutation",
                                "per_fold": [{"fold": int, "values": {feature: mean_abs}}],
                                "stability": {feature: {"mean", "std", "cv"}},
                                "rank_correlation": float | None},  # mean Spearman between folds
         "calibration": {"bins": [{"lower", "upper", "count", "mean_predicted",
                                   "observed_rate"}],          # 10 equal-width bins
                         "brier": float, "ece": float,
                         "calibrated": bool,                   # CLM_CALIBRATE=1 at training
                         "raw": {"brier", "ece"} | None},      # before calibration, when on
         "by_regime": [{"regime", "bars", "sharpe", "total_return", "mean_return",
                        "accuracy", "exposure"}],
         "period": "month" | "quarter",
         "by_period": [{"period": "2024-01" | "2024Q1", …same metrics…}],
         "trades": {"count", "holding_bars": {"mean", "min", "p25", "median", "p75", "max"},
                    "returns": {"mean", "std", "min", "p25", "median", "p75", "max",
                                "win_rate"},
                    "histogram": {"edges": [...], "counts": [...]}},
         "oos_bars": int,
         "equity": [[iso_timestamp, equity]]}  # the concatenated OOS folds' backtest equity
                                               # (starts from 1.0), at most 500 points: first,
                                               # last, the deepest drawdown's peak and trough,
                                               # evenly spaced ones between; [] when none
    """
    row = get_version(session, model_id, version)
    diagnostics = (row.get("evaluation") or {}).get("diagnostics")
    out: dict[str, Any] = {"model_id": row["model_id"], "version": row["version"],
                           "status": row["status"]}
    if not isinstance(diagnostics, dict):
        reason = ("registered outside a training job" if not row.get("job_id")
                  else "trained before diagnostics were computed")
        return {**out, "available": False, "reason": reason, **_empty()}
    report = {**_empty(), **diagnostics}
    return {**out, "available": True, "reason": None, **report}
