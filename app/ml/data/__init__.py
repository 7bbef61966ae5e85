"""Market data: the Parquet store, file importers/validation, synthetic series."""

from app.ml.data.importer import DataValidationError, Gap, ImportResult, load_ohlcv, load_positions
from app.ml.data.store import Coverage, DataNotFound, MarketDataStore, MergeReport

__all__ = [
    "Coverage",
    "DataNotFound",
    "DataValidationError",
    "Gap",
    "ImportResult",
    "MarketDataStore",
    "MergeReport",
    "load_ohlcv",
    "load_positions",
]
