"""The series catalog (app.ml.data.catalog): the extent POST /clm/train reads instead of
the Parquet file counts exactly the rows a read returns, and never describes a file it
was not written for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from app.ml.data.catalog import sidecar_path
from app.ml.data.importer import frame_from_arrays
from app.ml.data.store import MarketDataStore

HOUR = 3_600_000_000_000
T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000


def _frame(hours: list[int]):
    ts = np.array([T0 + h * HOUR for h in hours], dtype=np.int64)
    one = np.ones(len(ts))
    return frame_from_arrays(ts, {c: one * 100 for c in ("open", "high", "low", "close")}
                             | {"volume": one})


def test_rows_between_equals_a_read_across_gaps(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    hours = [h for h in range(300) if not (40 <= h < 47 or h in (100, 101, 250))]
    store.merge("GAPPY", "1h", _frame(hours))
    extent = store.extent("GAPPY", "1h")
    assert extent is not None and (extent.rows, len(extent.run_starts)) == (len(hours), 4)
    for lo, hi in [(0, 299), (39, 47), (41, 45), (100, 101), (99, 102), (120, 260), (299, 400)]:
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=lo)
        end = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=hi)
        expected = sum(1 for h in hours if lo <= h <= hi)
        assert extent.rows_between(T0 + lo * HOUR, T0 + hi * HOUR) == expected
        if expected:
            assert len(store.read("GAPPY", "1h", start, end)) == expected


def test_a_file_written_behind_the_stores_back_is_not_described_by_the_old_sidecar(
        tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    store.merge("SIDE", "1h", _frame(list(range(50))))
    path = store.path_for("SIDE", "1h")
    assert sidecar_path(path).is_file()
    assert store.extent("SIDE", "1h").rows == 50  # type: ignore[union-attr]
    table = pq.read_table(path).slice(0, 20)  # another writer keeps the first 20 bars
    pq.write_table(table, path)
    extent = store.extent("SIDE", "1h")
    assert extent is not None and (extent.rows, extent.last_ns) == (20, T0 + 19 * HOUR)
    store.merge("SIDE", "1h", _frame([30]))  # the store's own write renews the sidecar
    assert MarketDataStore(tmp_path).extent("SIDE", "1h").rows == 21  # type: ignore[union-attr]
    assert store.extent("ABSENT", "1h") is None
