"""XGBoost trainer: binary next-bar direction classifier on the native Booster API.

Owns `XGBoostTrainer` (registered as entry point `clm.trainers: xgboost`) and its
hyperparameter spec. Models are stored as XGBoost UBJSON (`save_raw("ubj")`), never
pickled. `hist` trees on a QuantileDMatrix keep memory near the size of the float32
feature matrix; thread count and seed are always explicit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xgboost as xgb

from app.ml.trainers import (
    ParamSpec,
    as_feature_matrix,
    as_labels,
    check_threads,
    feature_names_of,
    validate_against,
)

__all__ = ["XGBOOST_PARAMS", "XGBoostTrainer"]

XGBOOST_PARAMS: dict[str, ParamSpec] = {
    "n_estimators": ParamSpec(int, 200, 1, 5000, doc="boosting rounds"),
    "max_depth": ParamSpec(int, 4, 1, 16, doc="maximum tree depth"),
    "learning_rate": ParamSpec(float, 0.05, 0.0, 1.0, low_inclusive=False, doc="eta"),
    "subsample": ParamSpec(float, 0.8, 0.0, 1.0, low_inclusive=False, doc="row sampling"),
    "colsample_bytree": ParamSpec(float, 0.8, 0.0, 1.0, low_inclusive=False,
                                  doc="feature sampling per tree"),
    "min_child_weight": ParamSpec(float, 5.0, 0.0, 1e4, doc="min hessian sum in a leaf"),
    "reg_lambda": ParamSpec(float, 1.0, 0.0, 1e4, doc="L2 on leaf weights"),
    "reg_alpha": ParamSpec(float, 0.0, 0.0, 1e4, doc="L1 on leaf weights"),
    "gamma": ParamSpec(float, 0.0, 0.0, 1e4, doc="min loss reduction to split"),
    "max_bin": ParamSpec(int, 256, 2, 1024, doc="histogram bins per feature"),
}


class XGBoostTrainer:
    """Trainer protocol implementation for model_type "xgboost"."""

    model_type = "xgboost"
    artifact_format = "xgboost-ubj"
    artifact_suffix = ".ubj"

    def default_params(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in XGBOOST_PARAMS.items()}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return validate_against(XGBOOST_PARAMS, params, self.model_type)

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> xgb.Booster:
        p = self.validate_params(params)
        threads = check_threads(n_threads)
        matrix = as_feature_matrix(X)
        labels = as_labels(y, matrix.shape[0])
        dtrain = xgb.QuantileDMatrix(
            matrix, label=labels, max_bin=p["max_bin"], nthread=threads,
            feature_names=feature_names_of(X),
        )
        booster_params = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "max_depth": p["max_depth"],
            "eta": p["learning_rate"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "min_child_weight": p["min_child_weight"],
            "lambda": p["reg_lambda"],
            "alpha": p["reg_alpha"],
            "gamma": p["gamma"],
            "max_bin": p["max_bin"],
            "seed": int(seed),
            "nthread": threads,
            "verbosity": 0,
        }
        return xgb.train(booster_params, dtrain, num_boost_round=p["n_estimators"])

    def predict_proba(self, model: xgb.Booster, X: Any, *, n_threads: int = 1) -> np.ndarray:
        model.set_param({"nthread": check_threads(n_threads)})
        out = model.inplace_predict(as_feature_matrix(X))
        return np.asarray(out, dtype=np.float64)

    def dump(self, model: xgb.Booster) -> bytes:
        return bytes(model.save_raw(raw_format="ubj"))

    def load(self, data: bytes) -> xgb.Booster:
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return booster
