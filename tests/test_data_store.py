"""app.ml.data.store: layout, filtered reads, merges (overlap, gaps), atomic and locked writes."""

from __future__ import annotations

import multiprocessing as mp
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.ml.data.importer import frame_from_arrays
from app.ml.data.store import DataNotFound, MarketDataStore

H = 3600 * 10**9
T0 = pd.Timestamp("2024-01-01", tz="UTC").value


def bars(hours: list[int] | range, value: float = 1.0) -> pd.DataFrame:
    ts = np.array([T0 + h * H for h in hours], dtype=np.int64)
    n = len(ts)
    cols = {c: np.full(n, value) for c in ("open", "high", "low", "close")}
    cols["volume"] = np.arange(n, dtype=np.float64)
    return frame_from_arrays(ts, cols)


def test_layout_and_round_trip(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    frame = bars(range(24))
    report = store.merge("btcusdt", "1h", frame)
    assert (tmp_path / "BTCUSDT" / "1h.parquet").is_file()
    assert (report.symbol, report.added, report.overlapping, report.rows_after) == (
        "BTCUSDT", 24, 0, 24
    )
    back = store.read("BTCUSDT", "1h")
    pd.testing.assert_frame_equal(back, frame)
    # no temp files left behind; only the data file, its catalog sidecar and the lock file
    assert sorted(p.name for p in (tmp_path / "BTCUSDT").iterdir()) == [
        ".1h.catalog.json", ".1h.lock", "1h.parquet"]


def test_read_window_is_inclusive_and_naive_means_utc(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    store.merge("ETHUSDT", "1h", bars(range(48)))
    part = store.read("ETHUSDT", "1h", start=datetime(2024, 1, 1, 5), end=datetime(2024, 1, 1, 8))
    assert [t.hour for t in part.index] == [5, 6, 7, 8]
    aware = datetime(2024, 1, 2, 22, tzinfo=UTC)
    assert len(store.read("ETHUSDT", "1h", start=aware)) == 2
    assert len(store.read("ETHUSDT", "1h", end=pd.Timestamp("2024-01-01 02:00Z"))) == 3


def test_data_not_found(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    with pytest.raises(DataNotFound, match="no market data for SOLUSDT 4h"):
        store.read("solusdt", "4h")
    store.merge("SOLUSDT", "4h", bars([0, 4, 8]))
    with pytest.raises(DataNotFound, match="between"):
        store.read("SOLUSDT", "4h", start=datetime(2030, 1, 1))
    assert isinstance(DataNotFound("x"), LookupError)
    with pytest.raises(ValueError, match="timeframe"):
        store.read("SOLUSDT", "2h")
    with pytest.raises(ValueError, match="invalid symbol"):
        store.read("../etc", "1h")


def test_merge_overlap_incoming_wins_and_reports(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    store.merge("X", "1h", bars(range(10), value=1.0))
    incoming = bars(range(5, 15), value=1.0)
    incoming.loc[incoming.index[2], "close"] = 7.0  # hour 7 revised
    report = store.merge("X", "1h", incoming)
    assert (report.incoming, report.added, report.overlapping, report.changed) == (10, 5, 5, 5)
    # volume differs too (arange restarts), so all 5 overlapping rows count as changed;
    # an identical re-import changes nothing:
    again = store.merge("X", "1h", incoming)
    assert (again.added, again.overlapping, again.changed, again.rows_after) == (0, 10, 0, 15)
    frame = store.read("X", "1h")
    assert frame.index.is_unique and frame.index.is_monotonic_increasing
    assert frame.loc[pd.Timestamp(T0 + 7 * H, tz="UTC"), "close"] == 7.0
    assert frame["volume"].iloc[5] == 0.0  # from the incoming frame


def test_merge_older_data_and_gaps(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    store.merge("X", "1h", bars(range(20, 25)))
    report = store.merge("X", "1h", bars([0, 1, 2, 10]))
    assert report.rows_after == 9
    assert report.first == pd.Timestamp(T0, tz="UTC")
    assert [(g.after.hour, g.before.hour, g.missing_bars) for g in report.gaps] == [
        (2, 10, 7),
        (10, 20, 9),
    ]
    assert report.missing_bars == 16
    assert store.read("X", "1h").index.is_monotonic_increasing


def test_coverage_and_list(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    assert store.list() == []
    assert store.coverage("BTCUSDT", "1h") is None
    store.merge("BTCUSDT", "1d", bars([0, 24, 48]))
    store.merge("BTCUSDT", "1h", bars(range(5)))
    store.merge("AAA", "5m", bars([0]))
    (tmp_path / "BTCUSDT" / "notes.parquet").write_bytes(b"ignored: not a timeframe")
    cov = store.coverage("btcusdt", "1d")
    assert cov is not None
    assert (cov.rows, cov.first, cov.last) == (
        3, pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-03", tz="UTC")
    )
    listed = [(c.symbol, c.timeframe, c.rows) for c in store.list()]
    assert listed == [("AAA", "5m", 1), ("BTCUSDT", "1h", 5), ("BTCUSDT", "1d", 3)]
    assert cov.to_dict()["first"] == "2024-01-01T00:00:00Z"


def test_merge_refuses_non_canonical_frames(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path)
    frame = bars(range(3))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.merge("X", "1h", frame.tz_localize(None))
    with pytest.raises(ValueError, match="missing column"):
        store.merge("X", "1h", frame.drop(columns="volume"))
    with pytest.raises(ValueError, match="strictly increasing at row 2"):
        store.merge("X", "1h", frame.iloc[[0, 1, 1]])
    bad = frame.copy()
    bad.iloc[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf value at row 1"):
        store.merge("X", "1h", bad)
    assert store.coverage("X", "1h") is None  # nothing was written


def _merge_many(root: str, offset: int, rounds: int, barrier: mp.synchronize.Barrier) -> None:
    store = MarketDataStore(Path(root))
    barrier.wait()
    for r in range(rounds):
        # process 0 writes even hours, process 1 odd hours: every row is unique
        hours = [2 * (r * 4 + k) + offset for k in range(4)]
        store.merge("RACE", "1h", bars(hours))


def test_concurrent_merges_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")  # no fork of a process with pyarrow threads
    rounds = 25
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_merge_many, args=(str(tmp_path), off, rounds, barrier))
        for off in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    frame = MarketDataStore(tmp_path).read("RACE", "1h")
    assert len(frame) == 2 * rounds * 4
    expected = pd.DatetimeIndex([T0 + h * H for h in range(2 * rounds * 4)]).tz_localize("UTC")
    assert frame.index.equals(expected.rename("timestamp"))
