"""LightGBM trainer: binary next-bar direction classifier on the native Booster API.

Owns `LightGBMTrainer` (registered as entry point `clm.trainers: lightgbm`) and its
hyperparameter spec. Models are stored as LightGBM text (`model_to_string`), never
pickled. `deterministic=True` + `force_col_wise` + explicit seed and thread count make a
fit reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightgbm as lgb
import numpy as np

from app.ml.trainers import (
    InvalidParams,
    ParamSpec,
    as_feature_matrix,
    as_labels,
    check_threads,
    feature_names_of,
    validate_against,
)

__all__ = ["LIGHTGBM_PARAMS", "LightGBMTrainer"]

LIGHTGBM_PARAMS: dict[str, ParamSpec] = {
    "n_estimators": ParamSpec(int, 200, 1, 5000, doc="boosting rounds"),
    "num_leaves": ParamSpec(int, 15, 2, 4096, doc="max leaves per tree"),
    "max_depth": ParamSpec(int, 4, -1, 64, doc="max depth, -1 = unlimited (0 refused)"),
    "learning_rate": ParamSpec(float, 0.05, 0.0, 1.0, low_inclusive=False),
    "min_child_samples": ParamSpec(int, 20, 1, 100_000, doc="min rows in a leaf"),
    "subsample": ParamSpec(float, 0.8, 0.0, 1.0, low_inclusive=False, doc="bagging fraction"),
    "subsample_freq": ParamSpec(int, 1, 0, 1000, doc="bagging every k iterations, 0 = off"),
    "colsample_bytree": ParamSpec(float, 0.8, 0.0, 1.0, low_inclusive=False,
                                  doc="feature fraction per tree"),
    "reg_lambda": ParamSpec(float, 1.0, 0.0, 1e4, doc="L2"),
    "reg_alpha": ParamSpec(float, 0.0, 0.0, 1e4, doc="L1"),
    "min_split_gain": ParamSpec(float, 0.0, 0.0, 1e4),
    "max_bin": ParamSpec(int, 255, 2, 1024, doc="histogram bins per feature"),
}


class LightGBMTrainer:
    """Trainer protocol implementation for model_type "lightgbm"."""

    model_type = "lightgbm"
    artifact_format = "lightgbm-txt"
    artifact_suffix = ".txt"

    def default_params(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in LIGHTGBM_PARAMS.items()}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        p = validate_against(LIGHTGBM_PARAMS, params, self.model_type)
        if p["max_depth"] == 0:
            raise InvalidParams("max_depth", "lightgbm param 'max_depth' must be -1 "
                                             "(unlimited) or >= 1, got 0")
        return p

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> lgb.Booster:
        p = self.validate_params(params)
        threads = check_threads(n_threads)
        matrix = as_feature_matrix(X)
        labels = as_labels(y, matrix.shape[0])
        names = feature_names_of(X)
        booster_params = {
            "objective": "binary",
            "num_leaves": p["num_leaves"],
            "max_depth": p["max_depth"],
            "learning_rate": p["learning_rate"],
            "min_data_in_leaf": p["min_child_samples"],
            "bagging_fraction": p["subsample"],
            "bagging_freq": p["subsample_freq"],
            "feature_fraction": p["colsample_bytree"],
            "lambda_l2": p["reg_lambda"],
            "lambda_l1": p["reg_alpha"],
            "min_gain_to_split": p["min_split_gain"],
            "max_bin": p["max_bin"],
            "seed": int(seed),
            "num_threads": threads,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }
        dataset = lgb.Dataset(
            matrix, label=labels, feature_name=names if names else "auto",
            params={"max_bin": p["max_bin"], "verbosity": -1}, free_raw_data=True,
        )
        return lgb.train(booster_params, dataset, num_boost_round=p["n_estimators"])

    def predict_proba(self, model: lgb.Booster, X: Any, *, n_threads: int = 1) -> np.ndarray:
        out = model.predict(as_feature_matrix(X), num_threads=check_threads(n_threads))
        return np.asarray(out, dtype=np.float64)

    def dump(self, model: lgb.Booster) -> bytes:
        return model.model_to_string().encode("utf-8")

    def load(self, data: bytes) -> lgb.Booster:
        return lgb.Booster(model_str=data.decode("utf-8"))
