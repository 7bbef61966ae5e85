"""Walk-forward evaluation, the promotion gate and champion vs challenger.

Owns `EvaluationConfig`, `Dataset` (features + labels + closes, aligned), `Fold`,
`FoldPrediction`, `make_folds`, `prepare_dataset`, `train_fold`,
`probabilities_to_positions`, `evaluate_predictions`, `apply_gate`, `compare_champion`,
`final_fit` and `run_walk_forward` (the whole thing in one process).

The pieces are separable on purpose: the distributed pipeline prepares the dataset once
(`dataset_to_frame` → artifact), trains each fold in its own worker (`train_fold` →
`FoldPrediction.to_frame` → artifact), then fans in (`evaluate_predictions`,
`apply_gate`, `final_fit`). Every piece round-trips through parquet/JSON.

No look-ahead, by construction:
- features at row t use bars ≤ t (app.ml.features);
- folds are expanding windows; the test slices tile the last `test_fraction` of rows in
  `n_folds` contiguous blocks, and each fold trains on rows [0, test_start − purge) with
  purge ≥ label horizon, so no training label reaches into its test slice;
- out-of-sample probabilities become positions decided at the close of their bar, and
  the concatenated series is backtested with fees (app.ml.backtest, DESIGN.md's model).

Champion vs challenger: the production model is re-evaluated *as a strategy* (its
model_type + params, retrained walk-forward on the SAME folds) rather than by scoring its
stored model on the test window. Its stored model was trained on data that overlaps the
challenger's test window, so scoring it there would be in-sample and flatter the
champion; retraining on the same folds makes both out of sample on the same bars.

Size (~870 lines, on purpose): configuration, dataset, folds, per-fold training, metrics,
gate and champion comparison are one walk-forward contract whose no-look-ahead argument
(above) spans all of them; each piece is a few dozen lines, used piece by piece by the
pipeline, the strategy search and `run_walk_forward`. The strategy-rules backtest the
pipeline and the search share lives in app.ml.oos.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from app.core.config import DEFAULT_GATE, Settings
from app.core.numbers import number_or_none
from app.ml.backtest import run_backtest
from app.ml.features import FEATURE_SET_VERSION, build_features, make_labels, normalize_windows
from app.ml.lineage import build_lineage
from app.ml.scoring import promotion_score
from app.ml.trainers import Trainer, get_trainer, trainer_windows

__all__ = [
    "GATE_CRITERIA",
    "ChampionComparison",
    "Dataset",
    "EvaluationConfig",
    "EvaluationReport",
    "Fold",
    "FoldPrediction",
    "GateResult",
    "InsufficientData",
    "LeakageError",
    "apply_gate",
    "champion_from_lineage",
    "compare_champion",
    "dataset_from_frame",
    "dataset_to_frame",
    "evaluate_predictions",
    "final_fit",
    "make_folds",
    "prepare_dataset",
    "probabilities_to_positions",
    "promotion_score",
    "remap_folds",
    "run_walk_forward",
    "train_fold",
    "walk_forward_predictions",
]


class InsufficientData(ValueError):
    """Too few rows for the requested walk-forward set-up; the message says how many."""


class LeakageError(ValueError):
    """A fold's training rows would see labels from its test slice."""


# -- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationConfig:
    """Walk-forward set-up. Defaults follow the seed and Settings.

    n_folds: test slices (≥ 2; 3 by default). label_horizon: bars ahead of the label.
    purge: gap in rows between a fold's last training row and its test slice; None means
    label_horizon, smaller values are refused. long/short_threshold: P(up) above long →
    +1, below short → −1, else flat. fee_bps / slippage_bps: per side, as in the backtest.
    test_fraction: share of rows (at the end) that the test slices cover.
    min_train_rows / min_test_rows: refuse set-ups with less data than this per fold.
    periods_per_year: Sharpe annualisation; None infers it from the bar spacing.
    """

    n_folds: int = 3
    label_horizon: int = 1
    purge: int | None = None
    long_threshold: float = 0.55
    short_threshold: float = 0.45
    fee_bps: float = 5.0
    slippage_bps: float = 0.0
    test_fraction: float = 0.5
    min_train_rows: int = 200
    min_test_rows: int = 50
    periods_per_year: float | None = None

    def __post_init__(self) -> None:
        def _int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

        _int("n_folds", 2)
        _int("label_horizon", 1)
        _int("min_train_rows", 1)
        _int("min_test_rows", 1)
        if self.purge is not None:
            _int("purge", 0)
            if self.purge < self.label_horizon:
                raise ValueError(
                    f"purge ({self.purge}) must be >= label_horizon ({self.label_horizon}): "
                    "a smaller gap lets training labels see the test slice"
                )
        for name in ("long_threshold", "short_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.short_threshold > self.long_threshold:
            raise ValueError(
                f"short_threshold ({self.short_threshold}) must be <= long_threshold "
                f"({self.long_threshold})"
            )
        for name in ("fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.test_fraction, int | float) and 0 < self.test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        ppy = self.periods_per_year
        if ppy is not None and not (isinstance(ppy, int | float) and ppy > 0):
            raise ValueError(f"periods_per_year must be > 0 or None, got {ppy!r}")

    @property
    def purge_rows(self) -> int:
        return self.label_horizon if self.purge is None else self.purge

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EvaluationConfig:
        """Config from CLM_* settings (folds, horizon, thresholds, fees), then overrides."""
        base = {
            "n_folds": settings.walk_forward_folds,
            "label_horizon": settings.label_horizon,
            "long_threshold": settings.long_threshold,
            "short_threshold": settings.short_threshold,
            "fee_bps": settings.fee_bps,
            "slippage_bps": settings.slippage_bps,
            "min_train_rows": settings.min_train_rows,
        }
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown EvaluationConfig field(s) {unknown}; known: {sorted(known)}")
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EvaluationConfig field(s) {unknown}")
        return cls(**dict(data))


# -- dataset ----------------------------------------------------------------------------
_RESERVED = ("close", "label")
_DATASET_ATTR = "clm_dataset"
_PREDICTION_ATTR = "clm_fold_prediction"


@dataclass
class Dataset:
    """Model inputs aligned row by row: X (float32), y (0/1), close and timestamps.

    Rows are the bars with a complete feature vector and a known label (warm-up and the
    last `label_horizon` bars dropped). Row indices are what folds refer to.
    """

    X: np.ndarray
    y: np.ndarray
    close: np.ndarray
    timestamps: pd.DatetimeIndex
    feature_names: list[str]
    label_horizon: int
    windows: dict[str, tuple[int, ...]]
    feature_set_version: str = FEATURE_SET_VERSION

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        if self.X.shape != (n, len(self.feature_names)):
            raise ValueError(
                f"X has shape {self.X.shape}, expected ({n}, {len(self.feature_names)})"
            )
        if len(self.y) != n or len(self.close) != n:
            raise ValueError(f"y ({len(self.y)}) and close ({len(self.close)}) must have {n} rows")

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    def frame_X(self, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Rows [start, stop) of X as a DataFrame with feature names (a view, no copy)."""
        return pd.DataFrame(self.X[start:stop], columns=self.feature_names, copy=False)


def prepare_dataset(
    frame: pd.DataFrame,
    cfg: EvaluationConfig,
    windows: Mapping[str, Any] | None = None,
) -> Dataset:
    """Features + labels of `frame`, with incomplete rows dropped (see `Dataset`)."""
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError("frame must be a DataFrame indexed by a UTC DatetimeIndex 'timestamp'")
    if frame.index.tz is None:
        raise ValueError("frame index must be timezone-aware (UTC)")
    if not frame.index.is_unique or not frame.index.is_monotonic_increasing:
        raise ValueError("frame index must be strictly increasing (sorted, no duplicates)")
    w = normalize_windows(windows)
    feats = build_features(frame, w)
    labels = make_labels(frame, cfg.label_horizon)
    feat_values = feats.to_numpy(dtype=np.float32)
    valid = np.isfinite(feat_values).all(axis=1) & labels.notna().to_numpy()
    rows: np.ndarray | slice = np.flatnonzero(valid)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        rows = slice(int(rows[0]), int(rows[-1]) + 1)  # the usual case: a view, not a copy
    return Dataset(
        X=np.ascontiguousarray(feat_values[rows]),
        y=labels.to_numpy(dtype=np.float64)[rows].copy(),
        close=frame["close"].to_numpy(dtype=np.float64)[rows].copy(),
        timestamps=frame.index[rows].tz_convert("UTC").rename("timestamp"),
        feature_names=list(feats.columns),
        label_horizon=cfg.label_horizon,
        windows=w,
    )


def dataset_to_frame(dataset: Dataset) -> pd.DataFrame:
    """Dataset → DataFrame (features float32, close, label) with metadata in `attrs`;
    store it with `ArtifactStore.put_frame`."""
    clash = [n for n in dataset.feature_names if n in _RESERVED]
    if clash:
        raise ValueError(f"feature name(s) {clash} clash with reserved columns {_RESERVED}")
    out = pd.DataFrame(dataset.X, columns=dataset.feature_names,
                       index=dataset.timestamps.rename("timestamp"))
    out["close"] = dataset.close
    out["label"] = dataset.y
    out.attrs[_DATASET_ATTR] = {
        "feature_names": list(dataset.feature_names),
        "label_horizon": dataset.label_horizon,
        "windows": {k: list(v) for k, v in dataset.windows.items()},
        "feature_set_version": dataset.feature_set_version,
    }
    return out


def dataset_from_frame(frame: pd.DataFrame) -> Dataset:
    """Inverse of `dataset_to_frame` (e.g. after `ArtifactStore.get_frame`)."""
    meta = frame.attrs.get(_DATASET_ATTR)
    if not isinstance(meta, Mapping):
        raise ValueError(f"frame has no '{_DATASET_ATTR}' metadata: not made by dataset_to_frame")
    names = list(meta["feature_names"])
    missing = [c for c in [*names, *_RESERVED] if c not in frame.columns]
    if missing:
        raise ValueError(f"dataset frame is missing column(s) {missing}")
    if meta["feature_set_version"] != FEATURE_SET_VERSION:
        raise ValueError(
            f"dataset was built with feature set {meta['feature_set_version']!r}, this code "
            f"computes {FEATURE_SET_VERSION!r}"
        )
    return Dataset(
        X=np.ascontiguousarray(frame[names].to_numpy(dtype=np.float32)),
        y=frame["label"].to_numpy(dtype=np.float64),
        close=frame["close"].to_numpy(dtype=np.float64),
        timestamps=pd.DatetimeIndex(frame.index).tz_convert("UTC").rename("timestamp"),
        feature_names=names,
        label_horizon=int(meta["label_horizon"]),
        windows=normalize_windows(meta["windows"]),
        feature_set_version=str(meta["feature_set_version"]),
    )


# -- folds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fold:
    """Row ranges of one walk-forward fold; all `end`s are exclusive."""

    index: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int

    @property
    def train_rows(self) -> int:
        return self.train_end - self.train_start

    @property
    def test_rows(self) -> int:
        return self.test_end - self.test_start

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fold:
        return cls(**{f.name: int(data[f.name]) for f in fields(cls)})


def make_folds(n_rows: int, cfg: EvaluationConfig) -> list[Fold]:
    """Expanding-window folds over `n_rows` dataset rows.

    The last `test_fraction` of rows is split into `n_folds` contiguous test slices;
    fold k trains on rows [0, test_start_k − purge). Raises InsufficientData when the
    first fold would train on fewer than `min_train_rows` rows or a test slice would
    hold fewer than `min_test_rows`.
    """
    purge = cfg.purge_rows
    n_test = round(n_rows * cfg.test_fraction)
    first_test = n_rows - n_test
    bounds = np.linspace(first_test, n_rows, cfg.n_folds + 1).round().astype(int)
    for_train = math.ceil((cfg.min_train_rows + purge) / (1 - cfg.test_fraction))
    for_test = math.ceil(cfg.min_test_rows * cfg.n_folds / cfg.test_fraction)
    need = (
        f"need at least {max(for_train, for_test)} usable rows (after the features' "
        f"warm-up): {for_train} for the first fold's training set, {for_test} for "
        f"{cfg.n_folds} test slices; a longer dataset_span_days or a finer timeframe "
        "gives more"
    )
    if first_test - purge < cfg.min_train_rows:
        raise InsufficientData(
            f"too little data for walk-forward: {n_rows} usable rows leave the first fold "
            f"{max(first_test - purge, 0)} training rows (min_train_rows={cfg.min_train_rows}, "
            f"purge={purge}, test_fraction={cfg.test_fraction}); {need}"
        )
    smallest = int(np.diff(bounds).min())
    if smallest < cfg.min_test_rows:
        raise InsufficientData(
            f"too little data for walk-forward: {n_rows} usable rows give test slices of "
            f"{smallest} rows with n_folds={cfg.n_folds} (min_test_rows={cfg.min_test_rows}); "
            f"{need}"
        )
    return [
        Fold(index=i, train_start=0, train_end=int(bounds[i]) - purge,
             test_start=int(bounds[i]), test_end=int(bounds[i + 1]))
        for i in range(cfg.n_folds)
    ]


def remap_folds(
    folds: Sequence[Fold], source: pd.DatetimeIndex, target: pd.DatetimeIndex, purge: int
) -> list[Fold]:
    """Folds on another dataset covering the SAME test bars (by timestamp).

    Used when a champion's feature windows differ from the challenger's, so its dataset
    rows differ. Raises ValueError if a test bar is missing from `target`.
    """
    out: list[Fold] = []
    for f in folds:
        first, last = source[f.test_start], source[f.test_end - 1]
        lo = int(target.searchsorted(first, side="left"))
        hi = int(target.searchsorted(last, side="right"))
        expected = source[f.test_start:f.test_end]
        if not target[lo:hi].equals(expected):
            raise ValueError(
                f"fold {f.index}: the test bars {first}..{last} are not all present in the "
                "other dataset"
            )
        if lo - purge < 1:
            raise InsufficientData(f"fold {f.index}: no training rows before {first}")
        out.append(Fold(index=f.index, train_start=0, train_end=lo - purge,
                        test_start=lo, test_end=hi))
    return out


def _check_fold(dataset: Dataset, fold: Fold) -> None:
    if not (0 <= fold.train_start < fold.train_end <= fold.test_start < fold.test_end
            <= dataset.n_rows):
        raise ValueError(f"fold {fold.to_dict()} does not fit a dataset of {dataset.n_rows} rows")
    # The label of the last training row looks h rows ahead; it must stay before the test.
    if fold.train_end - 1 + dataset.label_horizon >= fold.test_start:
        raise LeakageError(
            f"fold {fold.index}: last training row {fold.train_end - 1} + label horizon "
            f"{dataset.label_horizon} reaches the test slice starting at {fold.test_start}"
        )


# -- per-fold training ------------------------------------------------------------------
@dataclass
class FoldPrediction:
    """Out-of-sample P(up) for one fold's test slice, with its timings."""

    fold: int
    timestamps: pd.DatetimeIndex
    proba: np.ndarray
    model_type: str = ""
    train_rows: int = 0
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    # The fold's fitted model, kept in memory only (never serialized) for the work item's
    # attributions on this slice (app.ml.attributions).
    model: Any = field(default=None, repr=False, compare=False)

    def to_frame(self) -> pd.DataFrame:
        out = pd.DataFrame({"proba": np.asarray(self.proba, dtype=np.float64)},
                           index=pd.DatetimeIndex(self.timestamps).rename("timestamp"))
        out.attrs[_PREDICTION_ATTR] = {
            "fold": self.fold,
            "model_type": self.model_type,
            "train_rows": self.train_rows,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
        }
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> FoldPrediction:
        meta = frame.attrs.get(_PREDICTION_ATTR)
        if not isinstance(meta, Mapping) or "proba" not in frame.columns:
            raise ValueError("frame was not made by FoldPrediction.to_frame (no metadata/proba)")
        return cls(
            fold=int(meta["fold"]),
            timestamps=pd.DatetimeIndex(frame.index).tz_convert("UTC").rename("timestamp"),
            proba=frame["proba"].to_numpy(dtype=np.float64),
            model_type=str(meta.get("model_type", "")),
            train_rows=int(meta.get("train_rows", 0)),
            fit_seconds=float(meta.get("fit_seconds", 0.0)),
            predict_seconds=float(meta.get("predict_seconds", 0.0)),
        )


def train_fold(
    dataset: Dataset,
    fold: Fold,
    trainer: Trainer,
    params: Mapping[str, Any] | None,
    *,
    seed: int,
    n_threads: int,
) -> FoldPrediction:
    """Train on the fold's training rows only and predict its test slice."""
    _check_fold(dataset, fold)
    t0 = time.perf_counter()
    model = trainer.fit(
        dataset.frame_X(fold.train_start, fold.train_end),
        dataset.y[fold.train_start:fold.train_end],
        params, seed=seed, n_threads=n_threads,
    )
    t1 = time.perf_counter()
    proba = trainer.predict_proba(model, dataset.frame_X(fold.test_start, fold.test_end),
                                  n_threads=n_threads)
    t2 = time.perf_counter()
    return FoldPrediction(
        fold=fold.index,
        timestamps=dataset.timestamps[fold.test_start:fold.test_end],
        proba=np.asarray(proba, dtype=np.float64),
        model_type=trainer.model_type,
        train_rows=fold.train_rows,
        fit_seconds=t1 - t0,
        predict_seconds=t2 - t1,
        model=model,
    )


def walk_forward_predictions(
    dataset: Dataset,
    folds: Sequence[Fold],
    trainer: Trainer,
    params: Mapping[str, Any] | None,
    *,
    seed: int,
    n_threads: int,
) -> list[FoldPrediction]:
    """`train_fold` for every fold, in one process."""
    return [train_fold(dataset, f, trainer, params, seed=seed, n_threads=n_threads)
            for f in folds]


def final_fit(
    dataset: Dataset,
    trainer: Trainer,
    params: Mapping[str, Any] | None,
    *,
    seed: int,
    n_threads: int,
) -> Any:
    """The deployable model: trained on every row of the dataset (after evaluation)."""
    return trainer.fit(dataset.frame_X(), dataset.y, params, seed=seed, n_threads=n_threads)


# -- from probabilities to metrics ------------------------------------------------------
def probabilities_to_positions(
    proba: Any, long_threshold: float = 0.55, short_threshold: float = 0.45
) -> np.ndarray:
    """+1 where P(up) > long_threshold, −1 where P(up) < short_threshold, else 0."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be one-dimensional, got shape {p.shape}")
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))
    if bad.size:
        raise ValueError(f"probability at index {int(bad[0])} is {p[bad[0]]!r}: need [0, 1]")
    if short_threshold > long_threshold:
        raise ValueError(
            f"short_threshold ({short_threshold}) must be <= long_threshold ({long_threshold})"
        )
    pos = np.zeros(p.shape, dtype=np.float64)
    pos[p > long_threshold] = 1.0
    pos[p < short_threshold] = -1.0
    return pos


def ordered_predictions(predictions: Sequence[FoldPrediction]) -> list[FoldPrediction]:
    """Fold predictions in time order, checked disjoint (ValueError when two overlap)."""
    ordered = sorted(predictions, key=lambda p: p.timestamps[0])
    for a, b in itertools.pairwise(ordered):
        if a.timestamps[-1] >= b.timestamps[0]:
            raise ValueError(
                f"fold {a.fold} and fold {b.fold} overlap in time ({b.timestamps[0]}): "
                "out-of-sample slices must be disjoint"
            )
    return ordered


def concat_predictions(
    predictions: Sequence[FoldPrediction],
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The out-of-sample series: timestamps and P(up) of every fold, in time order."""
    if not predictions:
        raise ValueError("no fold predictions to evaluate")
    ordered = ordered_predictions(predictions)
    stamps = ordered[0].timestamps.append([p.timestamps for p in ordered[1:]])
    proba = np.concatenate([np.asarray(p.proba, dtype=np.float64) for p in ordered])
    return pd.DatetimeIndex(stamps), proba


def evaluate_predictions(
    dataset: Dataset | pd.Series,
    predictions: Sequence[FoldPrediction],
    cfg: EvaluationConfig,
) -> dict[str, Any]:
    """Backtest the concatenated out-of-sample predictions (time order) with fees.

    `dataset` gives the closes (a Dataset, or a close Series indexed by timestamp).
    Returns the contract metrics (sharpe, win_rate, profit_factor, max_drawdown, trades,
    total_return, promotion_score) plus oos_bars, exposure (share of bars in a position)
    and, with a Dataset, accuracy (share of bars whose P(up) > 0.5 matched the label).
    """
    stamps, proba = concat_predictions(predictions)
    if isinstance(dataset, Dataset):
        index, close_all, labels = dataset.timestamps, dataset.close, dataset.y
    elif isinstance(dataset, pd.Series) and isinstance(dataset.index, pd.DatetimeIndex):
        index, close_all, labels = dataset.index, dataset.to_numpy(dtype=np.float64), None
    else:
        raise ValueError("dataset must be a Dataset or a close Series indexed by timestamp")
    rows = index.get_indexer(stamps)
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise ValueError(f"prediction timestamp {stamps[missing[0]]} has no close in the dataset")
    positions = probabilities_to_positions(proba, cfg.long_threshold, cfg.short_threshold)
    result = run_backtest(
        close_all[rows], positions, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps,
        periods_per_year=cfg.periods_per_year, timestamps=stamps,
    )
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["promotion_score"] = promotion_score(metrics)
    metrics["oos_bars"] = len(stamps)
    metrics["exposure"] = float(np.mean(positions != 0.0))
    if labels is not None:
        metrics["accuracy"] = float(np.mean((proba > 0.5) == (labels[rows] == 1.0)))
    return metrics


# -- gate -------------------------------------------------------------------------------
# (gate key, metric, operator): the seed's five promotion criteria.
GATE_CRITERIA: tuple[tuple[str, str, str], ...] = (
    ("min_sharpe", "sharpe", ">="),
    ("min_win_rate", "win_rate", ">="),
    ("min_profit_factor", "profit_factor", ">="),
    ("max_drawdown", "max_drawdown", "<="),
    ("min_trades", "trades", ">="),
)


@dataclass
class GateResult:
    """Outcome of the promotion gate: every failed criterion with value and threshold."""

    passed: bool
    failed_criteria: list[dict[str, Any]]
    promotion_score: float
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_gate(metrics: Mapping[str, Any], gate: Mapping[str, Any] | None = None) -> GateResult:
    """Check metrics against gate thresholds (Settings.gate_for(model_type) shape).

    Missing gate keys take the seed defaults; unknown keys are refused. A NaN or missing
    metric never passes. profit_factor None ("no losing trade") passes when trades > 0.
    """
    thresholds = dict(DEFAULT_GATE)
    for key, value in (gate or {}).items():
        if key not in DEFAULT_GATE:
            raise ValueError(f"unknown gate key {key!r}; known: {sorted(DEFAULT_GATE)}")
        number = number_or_none(value)
        if number is None or math.isnan(number):
            raise ValueError(f"gate {key!r} must be a number, got {value!r}")
        thresholds[key] = number
    failed: list[dict[str, Any]] = []
    trades = number_or_none(metrics.get("trades")) or 0.0
    for key, name, op in GATE_CRITERIA:
        raw = metrics.get(name)
        threshold = thresholds[key]
        value = number_or_none(raw)
        if name == "profit_factor" and raw is None and name in metrics and trades > 0:
            continue  # every trade won: an infinite profit factor clears any threshold
        if value is None or math.isnan(value):
            ok = False
        elif op == ">=":
            ok = value >= threshold
        else:
            ok = value <= threshold
        if not ok:
            failed.append({"name": name, "value": raw if value is None else value,
                           "threshold": threshold, "op": op, "gate_key": key})
    return GateResult(passed=not failed, failed_criteria=failed,
                      promotion_score=promotion_score(metrics), thresholds=thresholds)


# -- champion vs challenger -------------------------------------------------------------
@dataclass
class ChampionComparison:
    """Whether a challenger may replace the production model on Sharpe.

    passed when challenger_sharpe >= champion_sharpe + margin: margin 0 means "not
    worse", a positive margin demands a real improvement, a negative one tolerates a
    small loss. Both Sharpes must come from the same out-of-sample window.
    """

    passed: bool
    reason: str
    challenger_sharpe: float | None
    champion_sharpe: float | None
    margin: float
    delta: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_champion(
    challenger: Mapping[str, Any], champion: Mapping[str, Any] | None, margin: float = 0.0
) -> ChampionComparison:
    """Compare challenger and champion metrics on Sharpe (see ChampionComparison)."""
    if not (isinstance(margin, int | float) and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    ch = number_or_none(challenger.get("sharpe"))
    if champion is None:
        return ChampionComparison(True, "no production version to beat", ch, None, margin, None)
    cp = number_or_none(champion.get("sharpe"))
    if ch is None or math.isnan(ch):
        return ChampionComparison(False, "challenger has no usable Sharpe", ch, cp, margin, None)
    if cp is None or math.isnan(cp):
        return ChampionComparison(True, "champion has no usable Sharpe on this window",
                                  ch, cp, margin, None)
    delta = ch - cp
    if ch >= cp + margin:
        reason = (f"challenger Sharpe {ch:.3f} >= champion {cp:.3f} + margin {margin:g}")
        return ChampionComparison(True, reason, ch, cp, margin, delta)
    reason = f"challenger Sharpe {ch:.3f} < champion {cp:.3f} + margin {margin:g}"
    return ChampionComparison(False, reason, ch, cp, margin, delta)


# -- one-process path -------------------------------------------------------------------
@dataclass
class EvaluationReport:
    """Everything `run_walk_forward` learned; `to_dict()` is JSON-ready."""

    model_type: str
    params: dict[str, Any]
    seed: int
    config: EvaluationConfig
    windows: dict[str, tuple[int, ...]]
    folds: list[Fold]
    predictions: list[FoldPrediction]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    lineage: dict[str, Any]
    gate: GateResult | None = None
    champion_metrics: dict[str, Any] | None = None
    champion_comparison: ChampionComparison | None = None
    model: Any = None
    dataset: Dataset | None = None

    @property
    def passed(self) -> bool | None:
        """Gate and champion comparison together (None when no gate was given)."""
        if self.gate is None:
            return None
        return self.gate.passed and (
            self.champion_comparison is None or self.champion_comparison.passed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "params": self.params,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "windows": {k: list(v) for k, v in self.windows.items()},
            "folds": [f.to_dict() for f in self.folds],
            "metrics": self.metrics,
            "timings": self.timings,
            "lineage": self.lineage,
            "gate": self.gate.to_dict() if self.gate else None,
            "champion_metrics": self.champion_metrics,
            "champion_comparison": (self.champion_comparison.to_dict()
                                    if self.champion_comparison else None),
            "passed": self.passed,
        }


def _champion_metrics(
    frame: pd.DataFrame,
    dataset: Dataset,
    folds: list[Fold],
    champion: Mapping[str, Any],
    cfg: EvaluationConfig,
    *,
    seed: int,
    n_threads: int,
) -> dict[str, Any]:
    unknown = sorted(set(champion) - {"model_type", "params", "windows", "seed"})
    if unknown or "model_type" not in champion:
        raise ValueError(
            f"champion must be {{'model_type', 'params'?, 'windows'?, 'seed'?}}, got keys "
            f"{sorted(champion)}"
        )
    trainer = get_trainer(str(champion["model_type"]), champion.get("params"))
    params = trainer.validate_params(champion.get("params") or {})
    champ_windows = normalize_windows(trainer_windows(trainer, params, champion.get("windows")))
    if champ_windows == dataset.windows:
        champ_ds, champ_folds = dataset, folds
    else:
        champ_ds = prepare_dataset(frame, cfg, champ_windows)
        champ_folds = remap_folds(folds, dataset.timestamps, champ_ds.timestamps, cfg.purge_rows)
    preds = walk_forward_predictions(champ_ds, champ_folds, trainer, params,
                                     seed=int(champion.get("seed", seed)), n_threads=n_threads)
    return evaluate_predictions(champ_ds, preds, cfg)


def run_walk_forward(
    frame: pd.DataFrame,
    model_type: str,
    params: Mapping[str, Any] | None,
    cfg: EvaluationConfig | None = None,
    *,
    seed: int = 0,
    n_threads: int = 1,
    windows: Mapping[str, Any] | None = None,
    gate: Mapping[str, Any] | None = None,
    champion: Mapping[str, Any] | None = None,
    champion_margin: float = 0.0,
    fit_final: bool = False,
    symbol: str | None = None,
    timeframe: str | None = None,
    keep_dataset: bool = False,
) -> EvaluationReport:
    """Evaluate `model_type` with `params` walk-forward on `frame`, in one process.

    gate: thresholds (e.g. Settings.gate_for(model_type)); when given, `report.gate`
    holds the GateResult. champion: {"model_type", "params", "windows"?, "seed"?} of the
    production version; it is retrained on the same folds and compared on Sharpe with
    `champion_margin`. fit_final: also train the deployable model on all rows
    (`report.model`). The trainer is validated first, so bad params fail before any work.
    """
    cfg = cfg or EvaluationConfig()
    t_start = time.perf_counter()
    trainer = get_trainer(model_type, params)
    checked = trainer.validate_params(params or {})
    w = normalize_windows(trainer_windows(trainer, checked, windows))

    t0 = time.perf_counter()
    dataset = prepare_dataset(frame, cfg, w)
    folds = make_folds(dataset.n_rows, cfg)
    prepare_s = time.perf_counter() - t0

    preds = walk_forward_predictions(dataset, folds, trainer, checked, seed=seed,
                                     n_threads=n_threads)
    t1 = time.perf_counter()
    metrics = evaluate_predictions(dataset, preds, cfg)
    evaluate_s = time.perf_counter() - t1
    gate_result = apply_gate(metrics, gate) if gate is not None else None

    champion_metrics = comparison = None
    champion_s = 0.0
    if champion is not None:
        t2 = time.perf_counter()
        champion_metrics = _champion_metrics(frame, dataset, folds, champion, cfg,
                                             seed=seed, n_threads=n_threads)
        comparison = compare_champion(metrics, champion_metrics, champion_margin)
        champion_s = time.perf_counter() - t2

    model = None
    final_s = 0.0
    if fit_final:
        t3 = time.perf_counter()
        model = final_fit(dataset, trainer, checked, seed=seed, n_threads=n_threads)
        final_s = time.perf_counter() - t3

    timings = {
        "prepare_s": prepare_s,
        "folds": [{"fold": p.fold, "train_rows": p.train_rows, "fit_s": p.fit_seconds,
                   "predict_s": p.predict_seconds} for p in preds],
        "evaluate_s": evaluate_s,
        "champion_s": champion_s,
        "final_fit_s": final_s,
        "total_s": time.perf_counter() - t_start,
    }
    lineage = build_lineage(
        frame=frame, model_type=model_type, params=checked, seed=seed, n_threads=n_threads,
        windows=w, label_horizon=cfg.label_horizon, symbol=symbol, timeframe=timeframe,
        evaluation=cfg.to_dict(), folds=folds,
    )
    return EvaluationReport(
        model_type=model_type, params=checked, seed=seed, config=cfg, windows=w, folds=folds,
        predictions=preds, metrics=metrics, timings=timings, lineage=lineage,
        gate=gate_result, champion_metrics=champion_metrics, champion_comparison=comparison,
        model=model, dataset=dataset if keep_dataset else None,
    )


def champion_from_lineage(lineage: Mapping[str, Any]) -> dict[str, Any]:
    """The `champion` argument for a production version, from its lineage document
    (app.ml.lineage.build_lineage): model type, params, feature windows and seed."""
    try:
        model = lineage["model"]
        return {
            "model_type": str(model["model_type"]),
            "params": dict(model.get("params") or {}),
            "windows": dict(lineage.get("features", {}).get("windows") or {}) or None,
            "seed": int(model.get("seed", 0)),
        }
    except (KeyError, TypeError) as exc:
        raise ValueError(f"lineage lacks the model section needed to re-run it: {exc}") from exc
