"""A search's market data: read from the store when the search starts, frozen as an
artifact snapshot (evaluated by every trial), and kept in memory per process.

Owns `read_market_data` (the span a request asks for, refused with the field named
when the store cannot serve it), `store_snapshot`, `load_frame` and `regimes_for` (the
snapshot and its regime labels, cached per process: a worker evaluates many trials of
the same search).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from datetime import timedelta

import pandas as pd

from app.core.config import Settings
from app.core.domain import timeframe_seconds
from app.core.errors import InvalidInput
from app.ml.artifacts import ArtifactRef, ArtifactStore
from app.ml.data.store import DataNotFound, MarketDataStore
from app.ml.evolution.evaluate import regime_series

__all__ = ["load_frame", "read_market_data", "regimes_for", "store_snapshot"]

_CACHED = 3  # snapshots (and regime labellings) kept per process

_frame_cache: OrderedDict[str, pd.DataFrame] = OrderedDict()
_regime_cache: OrderedDict[tuple[str, int], pd.Series] = OrderedDict()
_cache_lock = threading.Lock()


def load_frame(settings: Settings, uri: str, sha256: str | None) -> pd.DataFrame:
    """The search's data snapshot; kept in memory per process (trials reuse it)."""
    key = f"{uri}#{sha256}"
    with _cache_lock:
        if key in _frame_cache:
            _frame_cache.move_to_end(key)
            return _frame_cache[key]
    frame = ArtifactStore.from_settings(settings).get_frame(uri, sha256)
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC").rename("timestamp")
    with _cache_lock:
        _frame_cache[key] = frame
        while len(_frame_cache) > _CACHED:
            _frame_cache.popitem(last=False)
    return frame


def regimes_for(key: str, frame: pd.DataFrame, holdout_start: int) -> pd.Series:
    """Regime labels of the search part of the snapshot `key` (cached per process)."""
    ck = (key, holdout_start)
    with _cache_lock:
        if ck in _regime_cache:
            return _regime_cache[ck]
    labels = regime_series(frame.iloc[:holdout_start])
    with _cache_lock:
        _regime_cache[ck] = labels
        while len(_regime_cache) > _CACHED:
            _regime_cache.popitem(last=False)
    return labels


def read_market_data(settings: Settings, symbol: str, timeframe: str,
                      span_days: int) -> pd.DataFrame:
    """The last `span_days` of stored bars; InvalidInput naming the field when the store
    has no such data or less than asked for."""
    store = MarketDataStore.from_settings(settings)
    coverage = store.coverage(symbol, timeframe)
    if coverage is None:
        raise InvalidInput("symbol", f"no market data for {symbol} {timeframe}; import some "
                                     f"with `clm data import FILE --symbol {symbol} "
                                     f"--timeframe {timeframe}`")
    last = coverage.last.to_pydatetime()
    tf = timeframe_seconds(timeframe)
    available = ((coverage.last - coverage.first).total_seconds() + tf) / 86_400
    if span_days > math.ceil(available):
        # Same rule as a training job: a candidate must be trainable on the same span.
        raise InvalidInput("dataset_span_days", f"only {available:.1f} days of {symbol} "
                                                f"{timeframe} data are stored; asked for "
                                                f"{span_days}")
    start = last - timedelta(days=span_days) + timedelta(seconds=timeframe_seconds(timeframe))
    try:
        return store.read(symbol, timeframe, start, last)
    except DataNotFound as exc:
        raise InvalidInput("symbol", str(exc)) from None



def store_snapshot(settings: Settings, frame: pd.DataFrame) -> ArtifactRef:
    """Freeze the search's data as an artifact (content-addressed: uri and sha256)."""
    return ArtifactStore.from_settings(settings).put_frame(frame)
