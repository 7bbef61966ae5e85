"""The adapter: CLM's trainer protocol around `legacy.train_direction_model`.

What CLM needs from a plug-in trainer (app/ml/trainers/__init__.py, `Trainer`):
model_type, artifact_format, artifact_suffix, default_params, validate_params (raise
clm's InvalidParams naming the key), fit, predict_proba (P(up) per row), dump / load
(bytes, never pickle: here the fitted numbers as JSON). Optional: signal_kind
("classifier" here), requires, feature_windows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.ml.trainers import InvalidParams
from clm_sklearn_plugin.legacy import train_direction_model


class LogisticRegressionTrainer:
    model_type = "sklearn_logreg"
    artifact_format = "sklearn-logreg-json"
    artifact_suffix = ".json"
    signal_kind = "classifier"
    requires = ("sklearn",)

    def default_params(self) -> dict[str, Any]:
        return {"C": 1.0}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        out = self.default_params()
        for key, value in (params or {}).items():
            if key != "C":
                raise InvalidParams(key, f"unknown sklearn_logreg hyperparameter {key!r}; "
                                         "known: ['C']")
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise InvalidParams("C", f"sklearn_logreg param 'C' must be a number > 0, "
                                         f"got {value!r}")
            out["C"] = float(value)
        return out

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> dict[str, Any]:
        p = self.validate_params(params)
        scaler, model = train_direction_model(np.asarray(X, dtype=np.float64),
                                              np.asarray(y, dtype=np.float64), C=p["C"],
                                              seed=seed)
        return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}

    def predict_proba(self, model: Mapping[str, Any], X: Any, *,
                      n_threads: int = 1) -> np.ndarray:
        x = (np.asarray(X, dtype=np.float64) - np.asarray(model["mean"])) / np.asarray(
            model["scale"])
        z = x @ np.asarray(model["coef"]) + model["intercept"]
        return 1.0 / (1.0 + np.exp(-z))

    def dump(self, model: Mapping[str, Any]) -> bytes:
        return json.dumps(model, sort_keys=True).encode()

    def load(self, data: bytes) -> dict[str, Any]:
        return json.loads(data)
