"""Inputs and targets of the sequence trainers (forecasters and policies), from the
causal feature rows alone.

Owns `lag_window` (the last L one-bar log returns of each row, oldest first),
`forward_returns` (the returns into the next h rows, the forecasters' targets and the
policies' rewards) and `Standardizer`. A target for row t reads rows t+1..t+h of the
X it is given and nothing else, so a fold's training rows never reach its test slice
(the walk-forward purge keeps the last training labels out of it for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Standardizer", "forward_returns", "lag_columns", "lag_window"]


def lag_columns(lookback: int) -> list[str]:
    return [f"lag_{k}" for k in range(lookback, 0, -1)]  # oldest first


def _frame(X: Any) -> Any:
    if not hasattr(X, "columns"):
        raise ValueError("X must be a DataFrame with feature names (lag_1..lag_L)")
    if len(X) == 0:
        raise ValueError("X has no rows")
    return X


def lag_window(X: Any, lookback: int) -> np.ndarray:
    """rows × lookback float32: row t's returns into bars t−L+1..t, oldest first."""
    cols = lag_columns(lookback)
    frame = _frame(X)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"X lacks {missing[0]}: the model needs features built with "
                         f"windows {{'lags': {lookback}}}")
    return np.ascontiguousarray(frame[cols].to_numpy(dtype=np.float32))


def forward_returns(X: Any, horizon: int) -> np.ndarray:
    """(rows − h) × h float64: for row t, the one-bar log returns into rows t+1..t+h."""
    frame = _frame(X)
    if "lag_1" not in frame.columns:
        raise ValueError("X lacks lag_1 (the return into each bar)")
    r = frame["lag_1"].to_numpy(dtype=np.float64)
    n = len(r) - horizon
    if n < 1:
        raise ValueError(f"{len(r)} rows leave no row with {horizon} bars after it")
    return np.stack([r[1 + j:1 + j + n] for j in range(horizon)], axis=1)


@dataclass(frozen=True)
class Standardizer:
    """Per-column (x − mean) / std fitted on training rows; std 0 → 1 (a constant input
    carries no signal, and must not become inf)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        v = np.asarray(values, dtype=np.float64)
        std = v.std(axis=0)
        return cls(v.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(x) for x in np.atleast_1d(self.mean)],
                "std": [float(x) for x in np.atleast_1d(self.std)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        return cls(np.asarray(data["mean"], dtype=np.float64),
                   np.asarray(data["std"], dtype=np.float64))
