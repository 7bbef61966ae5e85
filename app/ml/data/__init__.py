"""Market data: the Parquet store, file importers/validation, synthetic series.

The names below load on first use (PEP 562), so importing one submodule — as
`clm backtest` imports `app.ml.data.importer` — does not import the store and pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Coverage": "app.ml.data.store",
    "DataNotFound": "app.ml.data.store",
    "MarketDataStore": "app.ml.data.store",
    "MergeReport": "app.ml.data.store",
    "DataValidationError": "app.ml.data.importer",
    "Gap": "app.ml.data.importer",
    "ImportResult": "app.ml.data.importer",
    "load_ohlcv": "app.ml.data.importer",
    "load_positions": "app.ml.data.importer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'app.ml.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
