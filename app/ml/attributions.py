"""Feature attributions of a fold's model on its out-of-sample slice.

Owns `fold_attributions` (mean |SHAP| per feature over a fold's test rows) and the two
ways it gets the per-row values:
- native, exact TreeSHAP where the library has it: XGBoost `pred_contribs` and LightGBM
  `pred_contrib` (values in log-odds; the bias column dropped) — the xgboost and
  lightgbm types;
- `shap_attributions`, generic over a predict function (the `shap` package's
  permutation explainer, optional extra `clm[explain]`): every other model type — the
  deep and RL types, which come from another branch and have no tree structure to walk.

Rows are subsampled evenly to at most `MAX_ROWS` per fold: a mean |SHAP| only needs a
sample spread over the slice, while exact TreeSHAP's cost grows with rows × trees ×
depth² (500 rows of a 200-tree depth-4 booster cost ~40 % of its fit; 64 rows ~7 %),
and the diagnostics must stay within 10 % of a job's time
(bench/diagnostics_overhead.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MAX_ROWS", "SHAP_BACKGROUND", "ShapUnavailable", "fold_attributions",
           "native_contributions", "shap_attributions"]

MAX_ROWS = 64
SHAP_BACKGROUND = 64  # background rows the permutation explainer masks with


class ShapUnavailable(RuntimeError):
    """The model has no native contributions and the `shap` package is not installed."""


def _evenly(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def native_contributions(model: Any, X: pd.DataFrame, *, n_threads: int = 1
                         ) -> tuple[str, np.ndarray] | None:
    """(method, per-row contributions n × features) from the library itself, or None when
    the model is not one whose library computes them."""
    import lightgbm as lgb
    import xgboost as xgb

    if isinstance(model, xgb.Booster):
        matrix = xgb.DMatrix(X, nthread=n_threads)
        values = model.predict(matrix, pred_contribs=True)
        return "xgboost_pred_contribs", np.asarray(values)[:, :-1]
    if isinstance(model, lgb.Booster):
        values = model.predict(X, pred_contrib=True, num_threads=n_threads)
        return "lightgbm_pred_contrib", np.asarray(values)[:, :-1]
    return None


def shap_attributions(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray,
                      background: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Per-row SHAP values (n × features) of any P(up) function, with the `shap` package's
    permutation explainer over `background` rows. ShapUnavailable without the package."""
    try:
        import shap
    except ImportError as exc:
        raise ShapUnavailable("attributions for this model type need the shap package: "
                              "pip install 'clm[explain]'") from exc
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.PermutationExplainer(predict, masker, seed=seed)
    # max_evals: the explainer's minimum (2·features + 1) is enough for a mean |SHAP|.
    explanation = explainer(X, max_evals=2 * X.shape[1] + 1, silent=True)
    return np.asarray(explanation.values, dtype=np.float64)


def fold_attributions(trainer: Any, model: Any, X_test: pd.DataFrame, X_train: pd.DataFrame,
                      *, seed: int = 0, n_threads: int = 1) -> dict[str, Any]:
    """{"method", "rows", "values": {feature: mean |SHAP| over the test rows}} of one
    fold's model (native when possible, else `shap_attributions` over the trainer's
    predict_proba with training rows as background)."""
    rows = _evenly(len(X_test), MAX_ROWS)
    X = X_test.iloc[rows]
    native = native_contributions(model, X, n_threads=n_threads)
    if native is not None:
        method, values = native
    else:
        columns = list(X_test.columns)

        def predict(a: np.ndarray) -> np.ndarray:
            frame = pd.DataFrame(a, columns=columns)
            return np.asarray(trainer.predict_proba(model, frame, n_threads=n_threads))

        back = X_train.iloc[_evenly(len(X_train), SHAP_BACKGROUND)].to_numpy(np.float64)
        method = "shap_permutation"
        values = shap_attributions(predict, X.to_numpy(np.float64), back, seed=seed)
    mean_abs = np.mean(np.abs(values), axis=0)
    return {"method": method, "rows": len(rows),
            "values": {str(f): float(v) for f, v in zip(X.columns, mean_abs, strict=True)}}
