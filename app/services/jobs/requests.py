"""A training request, checked: the one place that says what a job may ask for.

Owns `TrainingRequest`, `validate_training_request` (closed value sets, the installed
trainers' parameters, the strategy — its trading rules are checked by app.ml.rules — and
enough stored market data for the walk-forward folds), `STRATEGY_KEYS`, `MAX_SPAN_DAYS`,
`data_window` (the bars a job trains on) and `is_job_id`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.config import Settings
from app.core.domain import (
    ModelType,
    TriggerReason,
    is_regime,
    make_model_id,
    normalize_symbol,
    timeframe_seconds,
)
from app.core.errors import InvalidInput
from app.core.timeutil import isoformat

MAX_SPAN_DAYS = 36_500

# What a training job's `strategy` may say (a strategy search's candidate says all of it):
# feature windows, the label horizon (the walk-forward purge follows it), the plain
# thresholds, the seed, and the search's trading rules (entry/exit thresholds, minimum
# holding period, stop loss / take profit), which replace the plain thresholds when given.
STRATEGY_KEYS: tuple[str, ...] = (
    "label_horizon", "long_threshold", "rules", "seed", "short_threshold", "windows",
)


@dataclass(frozen=True)
class TrainingRequest:
    """A checked training request (what `validate_training_request` returns)."""

    model_type: str
    symbol: str
    timeframe: str
    dataset_span_days: int
    params: dict[str, Any]
    trigger_reason: str
    regime: str | None
    strategy: dict[str, Any] | None
    model_id: str
    rows_in_span: int


def validate_training_request(
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    params: Mapping[str, Any] | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    regime: str | None = None,
    strategy: Mapping[str, Any] | None = None,
) -> TrainingRequest:
    """Check a request against the closed value sets, the installed trainers and the
    market data store; `InvalidInput` names the offending field."""
    # lazy: start-up — the web process validates POST /clm/train without importing
    # numpy/pandas/the trainers until the first request needs them.
    from app.ml.data.store import MarketDataStore
    from app.ml.evaluation import EvaluationConfig, InsufficientData, make_folds
    from app.ml.features import normalize_windows, warmup_bars
    from app.ml.rules import (
        MAX_LABEL_HORIZON,
        InvalidRules,
        strategy_config_overrides,
        trading_rules,
    )
    from app.ml.trainers import InvalidParams, TrainerNotAvailable, get_trainer

    try:
        mt = ModelType(str(model_type)).value
    except ValueError:
        allowed = ", ".join(m.value for m in ModelType)
        raise InvalidInput(
            "model_type", f"unknown model type {model_type!r}; allowed: {allowed}"
        ) from None
    try:
        tf_seconds = timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput("timeframe", str(exc)) from None
    try:
        sym = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    if (
        isinstance(dataset_span_days, bool)
        or not isinstance(dataset_span_days, int)
        or not 1 <= dataset_span_days <= MAX_SPAN_DAYS
    ):
        raise InvalidInput(
            "dataset_span_days",
            f"must be an integer in [1, {MAX_SPAN_DAYS}], got {dataset_span_days!r}",
        )
    try:
        reason = TriggerReason(str(trigger_reason)).value
    except ValueError:
        allowed = ", ".join(r.value for r in TriggerReason)
        raise InvalidInput(
            "trigger_reason", f"unknown trigger reason {trigger_reason!r}; allowed: {allowed}"
        ) from None
    if regime is not None:
        if not is_regime(regime):
            raise InvalidInput("regime", "1-40 characters of a-z, 0-9, '_', '.', '-'")
        regime = regime.strip().lower()
    try:
        trainer = get_trainer(mt)
    except TrainerNotAvailable as exc:
        raise InvalidInput("model_type", str(exc)) from None
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInput("params", "must be an object of hyperparameters")
    try:
        checked = trainer.validate_params(dict(params or {}))
    except InvalidParams as exc:
        raise InvalidInput(f"params.{exc.key}", str(exc)) from None
    if strategy is not None and not isinstance(strategy, Mapping):
        raise InvalidInput("strategy", "must be an object")
    strat = dict(strategy) if strategy else None
    windows: Any = None
    cfg_overrides: dict[str, Any] = {}
    if strat is not None:
        unknown = sorted(set(strat) - set(STRATEGY_KEYS))
        if unknown:
            raise InvalidInput(
                "strategy", f"unknown key(s) {unknown}; known: {', '.join(STRATEGY_KEYS)}"
            )
        windows = strat.get("windows")
        try:
            normalize_windows(windows)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("strategy.windows", str(exc)) from None
        cfg_overrides = strategy_config_overrides(strat)
        horizon = strat.get("label_horizon", 1)
        if (isinstance(horizon, bool) or not isinstance(horizon, int)
                or not 1 <= horizon <= MAX_LABEL_HORIZON):
            raise InvalidInput("strategy.label_horizon",
                               f"must be an integer in [1, {MAX_LABEL_HORIZON}]")
        seed = strat.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise InvalidInput("strategy.seed", "must be an integer in [0, 2**31)")
        if strat.get("rules") is not None:
            try:
                strat["rules"] = trading_rules(strat).to_dict()  # type: ignore[union-attr]
            except InvalidRules as exc:
                raise InvalidInput(f"strategy.rules.{exc.key}", str(exc)) from None
    try:
        cfg = EvaluationConfig.from_settings(settings, **cfg_overrides)
    except ValueError as exc:
        raise InvalidInput("strategy", str(exc)) from None

    # The extent comes from the store's catalog (kept when the series was written): no
    # Parquet read on the request path, and the rows in the span are counted exactly.
    extent = MarketDataStore.from_settings(settings).extent(sym, timeframe)
    if extent is None:
        raise InvalidInput(
            "symbol",
            f"no market data for {sym} {timeframe}; import some with "
            f"`clm data import FILE --symbol {sym} --timeframe {timeframe}`",
        )
    first, last = _utc_datetime(extent.first_ns), _utc_datetime(extent.last_ns)
    available_days = ((extent.last_ns - extent.first_ns) / 1e9 + tf_seconds) / 86_400
    if dataset_span_days > math.ceil(available_days):
        raise InvalidInput(
            "dataset_span_days",
            f"only {available_days:.1f} days of {sym} {timeframe} data are stored "
            f"({isoformat(first)} to {isoformat(last)}); asked for {dataset_span_days}",
        )
    start, end = data_window(last, dataset_span_days, timeframe)
    rows = extent.rows_between(_ns(start), _ns(end))
    usable = rows - warmup_bars(windows) - cfg.label_horizon
    try:
        make_folds(max(usable, 0), cfg)
    except InsufficientData as exc:
        raise InvalidInput(
            "dataset_span_days",
            f"{dataset_span_days} days hold {rows} {timeframe} bars of {sym}, too few: {exc}",
        ) from None
    return TrainingRequest(
        model_type=mt, symbol=sym, timeframe=timeframe, dataset_span_days=dataset_span_days,
        params=checked, trigger_reason=reason, regime=regime, strategy=strat,
        model_id=make_model_id(mt, sym, timeframe), rows_in_span=rows,
    )


def data_window(last: datetime, span_days: int, timeframe: str) -> tuple[datetime, datetime]:
    """The bars a job trains on: the `span_days` days ending at the last stored bar."""
    start = last - timedelta(days=span_days) + timedelta(seconds=timeframe_seconds(timeframe))
    return start, last


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_datetime(ns: int) -> datetime:
    """int64 UTC ns → aware datetime (to the microsecond, like pandas' to_pydatetime)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _ns(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def is_job_id(value: Any) -> bool:
    """True for the canonical uuid4 string form job ids have (anything else cannot exist)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False
