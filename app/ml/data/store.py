"""Market data store: one Parquet file per (SYMBOL, timeframe) under a root folder.

Owns the on-disk layout `root/SYMBOL/<timeframe>.parquet`, reads (pyarrow with
timestamp filters, no CSV re-parsing) and merges. A merge is read-modify-write of
the whole file, so it is serialized across processes with an fcntl lock on
`root/SYMBOL/.<timeframe>.lock` and published atomically (temp file + fsync +
os.replace): readers never lock and always see a complete old or new file, and two
concurrent imports never lose rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.analysis.calendars import DEFAULT_CALENDAR, missing_open_bars
from app.core.domain import TIMEFRAMES, normalize_symbol, timeframe_seconds
from app.core.errors import Conflict
from app.ml.data.catalog import SeriesExtent, cached_extent, extent_of_timestamps, write_sidecar
from app.ml.data.importer import OHLCV_COLUMNS, Gap, find_gaps, format_seconds, frame_from_arrays

__all__ = [
    "Coverage",
    "DataNotFound",
    "MarketDataStore",
    "MergeReport",
    "SeriesMismatch",
    "SeriesProblem",
    "SeriesUnreadable",
]

_SCHEMA = pa.schema(
    [("timestamp", pa.timestamp("ns", tz="UTC"))] + [(c, pa.float64()) for c in OHLCV_COLUMNS]
)


class DataNotFound(LookupError):
    """No stored data for a symbol/timeframe (or none in the requested window)."""


class SeriesMismatch(ValueError):
    """Incoming bars do not fit the stored series (another bar grid); nothing was written.
    `row` is the first offending row of the incoming frame."""

    def __init__(self, row: int, reason: str) -> None:
        self.row = row
        self.reason = reason
        super().__init__(reason)


class SeriesUnreadable(Conflict):
    """A stored series file exists but cannot be read (truncated or corrupted Parquet,
    wrong schema). A `Conflict` (409): the request is valid, the store's state forbids
    it, and the same request succeeds once the series is re-imported or restored from a
    backup (docs/OPERATIONS.md). The detail names the series, not the server's path."""

    def __init__(self, symbol: str, timeframe: str, path: Path, reason: str) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.path = path
        self.reason = reason
        super().__init__(
            f"the stored {symbol} {timeframe} market data cannot be read ({reason}); "
            "re-import the series or restore it from a backup (`clm data verify` lists "
            "every broken series)",
            symbol=symbol, timeframe=timeframe)

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"field": "symbol",
                 "message": f"stored {self.symbol} {self.timeframe} data is unreadable"}]

    def as_problem(self) -> SeriesProblem:
        return SeriesProblem(self.symbol, self.timeframe, self.path, f"unreadable: {self.reason}")


@dataclass(frozen=True)
class SeriesProblem:
    """One thing `MarketDataStore.verify` (or `list_all`) found wrong in the store."""

    symbol: str
    timeframe: str | None
    path: Path
    problem: str

    def to_dict(self) -> dict[str, object]:
        return {"symbol": self.symbol, "timeframe": self.timeframe, "path": str(self.path),
                "problem": self.problem}


@contextlib.contextmanager
def _reading(symbol: str, timeframe: str, path: Path) -> Iterator[None]:
    """pyarrow's read errors (ArrowInvalid, OSError, ...) as `SeriesUnreadable`."""
    try:
        yield
    except (pa.ArrowException, OSError, KeyError, IndexError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # pyarrow quotes the file it failed on; answers name the series, never a server path.
        for shown in {str(path), os.path.realpath(path), str(path.absolute())}:
            reason = reason.replace(shown, f"{symbol}/{path.name}")
        raise SeriesUnreadable(symbol, timeframe, path, reason) from exc


@dataclass(frozen=True)
class Coverage:
    symbol: str
    timeframe: str
    first: pd.Timestamp
    last: pd.Timestamp
    rows: int

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "first": self.first.isoformat().replace("+00:00", "Z"),
            "last": self.last.isoformat().replace("+00:00", "Z"),
            "rows": self.rows,
        }


@dataclass
class MergeReport:
    """What a merge did. `overlapping` incoming rows replaced stored ones (`changed` of
    them with different values); `added` rows are new. Gaps are those of the stored
    series after the merge (first 1000 listed; `missing_bars` counts all)."""

    symbol: str
    timeframe: str
    incoming: int
    added: int
    overlapping: int
    changed: int
    rows_before: int
    rows_after: int
    first: pd.Timestamp
    last: pd.Timestamp
    gaps: list[Gap] = field(default_factory=list)
    missing_bars: int = 0


class MarketDataStore:
    """Parquet-per-series market data store rooted at `root` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- paths

    def path_for(self, symbol: str, timeframe: str) -> Path:
        """Where a series lives (validates symbol and timeframe).

        Defence in depth behind the symbol rule: the folder must be exactly one level
        below the store root once resolved (no `..`, no symlink leading elsewhere), else
        ValueError naming the symbol."""
        sym = normalize_symbol(symbol)
        timeframe_seconds(timeframe)
        folder = self.root / sym
        root = self.root.resolve()
        resolved = folder.resolve()
        if resolved.parent != root or resolved.name != sym:
            raise ValueError(
                f"invalid symbol {symbol!r}: its folder {folder} resolves to {resolved}, "
                f"outside the market data store {root}"
            )
        return folder / f"{timeframe}.parquet"

    @contextlib.contextmanager
    def _locked(self, symbol: str, timeframe: str) -> Iterator[Path]:
        path = self.path_for(symbol, timeframe)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file is never deleted: unlinking it would let two processes hold
        # locks on different inodes of "the same" file.
        lock_path = path.parent / f".{timeframe}.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # ----------------------------------------------------------------- reads

    def read(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pd.DataFrame:
        """Bars with start <= timestamp <= end (both inclusive, either optional).

        Naive datetimes are taken as UTC. Raises DataNotFound when the series does
        not exist or the window holds no bar.
        """
        path = self.path_for(symbol, timeframe)
        if not path.exists():
            raise DataNotFound(
                f"no market data for {normalize_symbol(symbol)} {timeframe} in {self.root} "
                f"(import some with `clm data import FILE --symbol {symbol} "
                f"--timeframe {timeframe}`)"
            )
        filters = []
        lo = _utc(start) if start is not None else None
        hi = _utc(end) if end is not None else None
        if lo is not None:
            filters.append(("timestamp", ">=", lo))
        if hi is not None:
            filters.append(("timestamp", "<=", hi))
        with _reading(normalize_symbol(symbol), timeframe, path):
            table = pq.read_table(path, filters=filters or None, schema=_SCHEMA)
        if table.num_rows == 0:
            raise DataNotFound(
                f"no {normalize_symbol(symbol)} {timeframe} bars between "
                f"{lo.isoformat() if lo is not None else 'the start'} and "
                f"{hi.isoformat() if hi is not None else 'the end'}"
            )
        return _table_to_frame(table)

    def coverage(self, symbol: str, timeframe: str) -> Coverage | None:
        """First/last timestamp and row count from Parquet metadata (no data read);
        `SeriesUnreadable` when the file is there but cannot be read."""
        path = self.path_for(symbol, timeframe)
        if not path.exists():
            return None
        return self._coverage_of(path, normalize_symbol(symbol), timeframe)

    def extent(self, symbol: str, timeframe: str) -> SeriesExtent | None:
        """The series' extent (first/last bar, rows, gap-free runs) from the catalog kept
        when it was written (app.ml.data.catalog), without reading the file; None when
        the series is absent or empty, `SeriesUnreadable` when its file cannot be read."""
        path = self.path_for(symbol, timeframe)
        sym = normalize_symbol(symbol)
        bar = timeframe_seconds(timeframe) * 1_000_000_000

        def derive() -> SeriesExtent | None:  # no (matching) sidecar: the file's timestamps
            with _reading(sym, timeframe, path):
                ts = pq.read_table(path, columns=["timestamp"]).column("timestamp")
            return extent_of_timestamps(ts.cast(pa.int64()).to_numpy(), bar)

        try:
            return cached_extent(path, bar, derive)
        except FileNotFoundError:
            return None

    def list(self) -> list[Coverage]:
        """Coverage of every readable stored series, sorted by symbol then timeframe
        length (`list_all` also says which files could not be read)."""
        return self.list_all()[0]

    def list_all(self) -> tuple[list[Coverage], list[SeriesProblem]]:
        """(coverage of every readable series, the series files that cannot be read)."""
        out: list[Coverage] = []
        broken: list[SeriesProblem] = []
        order = {tf: i for i, tf in enumerate(TIMEFRAMES)}
        for sym, timeframe, file in self.series_files():
            try:
                cov = self._coverage_of(file, sym, timeframe)
            except SeriesUnreadable as exc:
                broken.append(SeriesProblem(sym, timeframe, file, f"unreadable: {exc.reason}"))
                continue
            if cov is not None:
                out.append(cov)
        out.sort(key=lambda c: (c.symbol, order[c.timeframe]))
        return out, broken

    def series_files(self) -> list[tuple[str, str, Path]]:
        """(symbol, timeframe, file) of every series file in the store's layout."""
        found: list[tuple[str, str, Path]] = []
        if not self.root.is_dir():
            return found
        for sym_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for file in sorted(sym_dir.glob("*.parquet")):
                if file.stem in TIMEFRAMES:
                    found.append((sym_dir.name, file.stem, file))
        return found

    def verify(self) -> list[SeriesProblem]:
        """Every problem of the store, each file read in full: unreadable files, a wrong
        schema, timestamps not strictly increasing or off the timeframe's grid, NaN/inf
        values, empty files, folders and files that are not a series. Empty = healthy."""
        problems: list[SeriesProblem] = []
        if not self.root.is_dir():
            return problems
        for sym_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                ok = normalize_symbol(sym_dir.name) == sym_dir.name
            except ValueError:
                ok = False
            if not ok:
                problems.append(SeriesProblem(sym_dir.name, None, sym_dir,
                                              "folder name is not a valid symbol"))
            for file in sorted(sym_dir.glob("*.parquet")):
                if file.stem not in TIMEFRAMES:
                    problems.append(SeriesProblem(sym_dir.name, None, file,
                                                  "not a timeframe's file (ignored by reads)"))
        for sym, timeframe, file in self.series_files():
            problem = _verify_file(file, timeframe)
            if problem is not None:
                problems.append(SeriesProblem(sym, timeframe, file, problem))
        return problems

    def gap_counts(self, symbol: str, timeframe: str,
                   calendar: str = DEFAULT_CALENDAR) -> tuple[int, int]:
        """(gaps, missing bars) of a stored series, reading only the timestamp column;
        (0, 0) when absent. Bars the `calendar` does not expect are not missing."""
        path = self.path_for(symbol, timeframe)
        if not path.exists():
            return 0, 0
        with _reading(normalize_symbol(symbol), timeframe, path):
            ts = pq.read_table(path, columns=["timestamp"]).column("timestamp")
        ns = ts.cast(pa.int64()).to_numpy()
        bar = timeframe_seconds(timeframe) * 1_000_000_000
        if calendar == DEFAULT_CALENDAR:  # the fast path: every spacing over a bar
            over = np.diff(ns)
            over = over[over > bar]
            return int(over.size), int((over // bar - 1).sum())
        gaps, missing = missing_open_bars(ns, bar, calendar, limit=2**62)
        return len(gaps), missing

    @staticmethod
    def _coverage_of(path: Path, symbol: str, timeframe: str) -> Coverage | None:
        with _reading(symbol, timeframe, path):
            return MarketDataStore._coverage_from_metadata(path, symbol, timeframe)

    @staticmethod
    def _coverage_from_metadata(path: Path, symbol: str, timeframe: str) -> Coverage | None:
        meta = pq.ParquetFile(path).metadata
        if meta.num_rows == 0:
            return None
        ts_idx = meta.schema.to_arrow_schema().get_field_index("timestamp")
        first = last = None
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(ts_idx).statistics
            if stats is None or not stats.has_min_max:
                first = last = None
                break
            lo, hi = pd.Timestamp(stats.min), pd.Timestamp(stats.max)
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
        if first is None or last is None:  # no statistics: read just that column
            ts = pq.read_table(path, columns=["timestamp"]).column("timestamp")
            first, last = pd.Timestamp(ts[0].as_py()), pd.Timestamp(ts[-1].as_py())
        return Coverage(symbol, timeframe, _as_utc(first), _as_utc(last), int(meta.num_rows))

    # ----------------------------------------------------------------- writes

    def merge(self, symbol: str, timeframe: str, frame: pd.DataFrame,
              calendar: str = DEFAULT_CALENDAR) -> MergeReport:
        """Merge `frame` into the stored series; incoming rows win on overlap. The report's
        gaps count only bars the symbol's trading `calendar` expects.

        `frame` must have the canonical shape (UTC DatetimeIndex named `timestamp`,
        strictly increasing, float64 open/high/low/close/volume).
        """
        sym = normalize_symbol(symbol)
        new_ts, new_vals = _check_frame(frame)
        with self._locked(sym, timeframe) as path:
            old_ts = np.empty(0, dtype=np.int64)
            old_vals = np.empty((0, len(OHLCV_COLUMNS)))
            if path.exists():
                # An unreadable stored file is never silently replaced by the import:
                # the operator decides (move it aside, then import; docs/OPERATIONS.md).
                with _reading(sym, timeframe, path):
                    old = pq.read_table(path, schema=_SCHEMA)
                if old.num_rows:
                    old_ts = old.column("timestamp").cast(pa.int64()).to_numpy()
                    old_vals = np.column_stack([old.column(c).to_numpy() for c in OHLCV_COLUMNS])
            if len(old_ts):
                _check_same_grid(sym, timeframe, old_ts[0], new_ts)
            # Both sides are sorted and unique: searchsorted finds the overlap.
            pos = np.searchsorted(old_ts, new_ts)
            overlap = np.zeros(len(new_ts), dtype=bool)
            if len(old_ts):
                inside = pos < len(old_ts)
                overlap[inside] = old_ts[pos[inside]] == new_ts[inside]
            n_overlap = int(overlap.sum())
            changed = 0
            if n_overlap:
                before = old_vals[pos[overlap]]
                after = new_vals[overlap]
                # NaN never occurs (validated), so plain inequality is exact
                changed = int(np.any(before != after, axis=1).sum())
            keep_old = np.ones(len(old_ts), dtype=bool)
            keep_old[pos[overlap]] = False
            ts = np.concatenate([old_ts[keep_old], new_ts])
            vals = np.concatenate([old_vals[keep_old], new_vals])
            order = np.argsort(ts, kind="stable")
            ts, vals = ts[order], vals[order]
            self._write(path, ts, vals)
        merged_index = pd.DatetimeIndex(ts.view("datetime64[ns]")).tz_localize("UTC")
        gaps, missing = find_gaps(merged_index, timeframe, calendar=calendar)
        return MergeReport(
            symbol=sym,
            timeframe=timeframe,
            incoming=len(new_ts),
            added=len(new_ts) - n_overlap,
            overlapping=n_overlap,
            changed=changed,
            rows_before=len(old_ts),
            rows_after=len(ts),
            first=merged_index[0],
            last=merged_index[-1],
            gaps=gaps,
            missing_bars=missing,
        )

    @staticmethod
    def _write(path: Path, ts: np.ndarray, vals: np.ndarray) -> None:
        ts_array = pa.array(ts.view("datetime64[ns]"), type=pa.timestamp("ns"))
        arrays = [ts_array.cast(_SCHEMA.field("timestamp").type)]
        arrays += [pa.array(np.ascontiguousarray(vals[:, i])) for i in range(vals.shape[1])]
        table = pa.Table.from_arrays(arrays, schema=_SCHEMA)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                pq.write_table(table, fh, compression="zstd", row_group_size=1 << 20)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        # The catalog follows the file it describes, in this one place every write goes
        # through (under the merge lock): POST /clm/train reads the extent from it.
        write_sidecar(path, extent_of_timestamps(ts, timeframe_seconds(path.stem) * 10**9))


def _verify_file(path: Path, timeframe: str) -> str | None:
    """What is wrong with one series file read in full, or None."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"unreadable: {first}"
    if not table.schema.equals(_SCHEMA, check_metadata=False):
        return f"schema is {table.schema.to_string(show_schema_metadata=False)!r}, " \
               f"expected {_SCHEMA.to_string()!r}"
    if table.num_rows == 0:
        return "no rows"
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    steps = np.diff(ts)
    if steps.size and not (steps > 0).all():
        i = int(np.argmax(steps <= 0)) + 1
        kind = "duplicate" if steps[i - 1] == 0 else "earlier"
        return f"timestamps not strictly increasing at row {i} ({kind} bar {_iso(ts[i])})"
    bar = timeframe_seconds(timeframe) * 1_000_000_000
    off = np.flatnonzero((ts - ts[0]) % bar)
    if off.size:
        return f"bar {_iso(ts[int(off[0])])} is off the {timeframe} grid of the first bar"
    for c in OHLCV_COLUMNS:
        vals = table.column(c).to_numpy()
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            return f"{c} is NaN/inf at row {int(bad[0])} ({_iso(ts[int(bad[0])])})"
    return None


def _check_same_grid(symbol: str, timeframe: str, stored_first: int, new_ts: np.ndarray) -> None:
    """Every bar of a series starts a whole number of bars from the first stored one:
    1h bars at :30 merged into bars at :00 would interleave into a 30m series."""
    bar = timeframe_seconds(timeframe) * 1_000_000_000
    off = (new_ts - stored_first) % bar
    bad = np.flatnonzero(off)
    if bad.size:
        j = int(bad[0])
        stored_at = pd.Timestamp(int(stored_first), unit="ns", tz="UTC")
        raise SeriesMismatch(
            j,
            f"bar {_iso(new_ts[j])} is {format_seconds(int(off[j]) / 1e9)} off the stored "
            f"{symbol} {timeframe} grid (stored bars start at {_iso(stored_at.value)} and "
            f"every {timeframe}); the two would interleave. Import it under another "
            "symbol or timeframe, or shift its timestamps",
        )


def _iso(ns: int | np.integer) -> str:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").isoformat().replace("+00:00", "Z")


def _check_frame(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-shape check at the store boundary; returns (int64 ns, float64 [n, 5])."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a DataFrame, got {type(frame).__name__}")
    idx = frame.index
    if not isinstance(idx, pd.DatetimeIndex) or idx.tz is None:
        raise ValueError("frame index must be a timezone-aware DatetimeIndex (UTC)")
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing column(s): {', '.join(missing)}")
    if len(frame) == 0:
        raise ValueError("frame has no rows")
    ts = idx.tz_convert("UTC").as_unit("ns").asi8
    steps = np.diff(ts)
    if len(steps) and not (steps > 0).all():
        i = int(np.argmax(steps <= 0)) + 1
        raise ValueError(f"frame index not strictly increasing at row {i} ({idx[i]})")
    vals = np.column_stack([frame[c].to_numpy(dtype=np.float64) for c in OHLCV_COLUMNS])
    if not np.isfinite(vals).all():
        i = int(np.argmax(~np.isfinite(vals).all(axis=1)))
        raise ValueError(f"frame has a NaN/inf value at row {i} ({idx[i]})")
    return ts, vals


def _table_to_frame(table: pa.Table) -> pd.DataFrame:
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    return frame_from_arrays(ts, {c: table.column(c).to_numpy() for c in OHLCV_COLUMNS})


def _utc(value: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _as_utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
