"""Stands for a team's existing training code, unchanged: CLM wraps it, not rewrites it."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def train_direction_model(features: np.ndarray, labels: np.ndarray, *, C: float = 1.0,
                          seed: int = 0) -> tuple[StandardScaler, LogisticRegression]:
    """Scale the features and fit an L2 logistic regression of next-bar direction."""
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=C, max_iter=500, random_state=seed)
    model.fit(scaler.transform(features), labels)
    return scaler, model
