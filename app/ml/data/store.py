"""Market data store: one Parquet file per (SYMBOL, timeframe) under a root.

Owns the layout `root/SYMBOL/<timeframe>.parquet` (the root is a local folder or an
`s3://bucket/prefix`; files go through app.core.objectstore), reads (pyarrow with
timestamp filters, no CSV re-parsing) and merges. A merge is read-modify-write of
the whole file, so it is serialized per series by a `SeriesLock` (app.ml.data.locks:
an fcntl lock on `root/SYMBOL/.<timeframe>.lock` for a local folder, a database
advisory lock for S3) and published atomically (an atomic object replace), then its
catalog sidecar: readers never lock and always see a complete old or new file, and
two concurrent imports never lose rows.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.analysis.calendars import DEFAULT_CALENDAR, missing_open_bars
from app.core.config import S3Location, Settings, StorageRoot
from app.core.domain import TIMEFRAMES, normalize_symbol, timeframe_seconds
from app.core.errors import Conflict
from app.core.objectstore import ObjectNotFound, open_object_store
from app.ml.data.catalog import SeriesExtent, cached_extent, extent_of_timestamps, write_sidecar
from app.ml.data.importer import OHLCV_COLUMNS, Gap, find_gaps, format_seconds, frame_from_arrays
from app.ml.data.locks import DatabaseSeriesLock, FileSeriesLock, SeriesLock

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

    def __init__(self, symbol: str, timeframe: str, path: Path | str, reason: str) -> None:
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
    path: Path | str  # a local file, or the s3:// URL of the object
    problem: str

    def to_dict(self) -> dict[str, object]:
        return {"symbol": self.symbol, "timeframe": self.timeframe, "path": str(self.path),
                "problem": self.problem}


@contextlib.contextmanager
def _reading(symbol: str, timeframe: str, path: Path | str) -> Iterator[None]:
    """pyarrow's read errors (ArrowInvalid, OSError, ...) as `SeriesUnreadable`."""
    try:
        yield
    except (pa.ArrowException, OSError, KeyError, IndexError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # pyarrow quotes the file it failed on; answers name the series, never a server path.
        shown_as = f"{symbol}/{timeframe}.parquet"
        if isinstance(path, Path):
            for shown in {str(path), os.path.realpath(path), str(path.absolute())}:
                reason = reason.replace(shown, shown_as)
        else:
            reason = reason.replace(path, shown_as)
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
    """Parquet-per-series market data store rooted at `root` (created on first write).

    A local folder serializes merges with fcntl locks of its own; a remote root (S3)
    needs the `lock` that every writing host shares — `from_settings` builds it from
    the registry database."""

    def __init__(self, root: StorageRoot | str, *, lock: SeriesLock | None = None) -> None:
        self.objects = open_object_store(root)
        self.root = Path(root) if isinstance(root, str | Path) else root
        local = not isinstance(root, S3Location)
        self._lock: SeriesLock | None = lock or (FileSeriesLock(Path(root)) if local else None)

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketDataStore:
        """The store under CLM_DATA_DIR; an S3 root merges under a database lock."""
        lock = None
        if isinstance(settings.data_dir, S3Location):
            lock = DatabaseSeriesLock(settings.database_url, str(settings.data_dir),
                                      settings.var_dir / "locks")
        return cls(settings.data_dir, lock=lock)

    # ----------------------------------------------------------------- paths

    def key_for(self, symbol: str, timeframe: str) -> str:
        """The object key of a series, `SYMBOL/<timeframe>.parquet` (validates both).

        Defence in depth behind the symbol rule, for a local folder: the symbol's folder
        must be exactly one level below the store root once resolved (no `..`, no
        symlink leading elsewhere), else ValueError naming the symbol."""
        sym = normalize_symbol(symbol)
        timeframe_seconds(timeframe)
        folder = self.objects.local_path(sym)
        if folder is not None:  # only a local folder can be a symlink
            root = Path(self.root).resolve()
            resolved = folder.resolve()
            if resolved.parent != root or resolved.name != sym:
                raise ValueError(
                    f"invalid symbol {symbol!r}: its folder {folder} resolves to {resolved}, "
                    f"outside the market data store {root}"
                )
        return f"{sym}/{timeframe}.parquet"

    def path_for(self, symbol: str, timeframe: str) -> Path:
        """The file of a series in a local store (ValueError for a remote one)."""
        path = self.objects.local_path(self.key_for(symbol, timeframe))
        if path is None:
            raise ValueError(f"the market data store {self.root} has no local files")
        return path

    def _where(self, key: str) -> Path | str:
        """A series' location for problems: the local file, or the object's URL."""
        return self.objects.local_path(key) or self.objects.describe(key)

    def _source(self, key: str) -> str | pa.BufferReader:
        """What pyarrow reads: a local file by path (read in place, only the row groups
        and columns asked for), a remote object fetched whole. ObjectNotFound if absent."""
        path = self.objects.local_path(key)
        if path is not None:
            if not path.exists():
                raise ObjectNotFound(str(path))
            return str(path)
        return pa.BufferReader(self.objects.get(key))

    @contextlib.contextmanager
    def _locked(self, symbol: str, timeframe: str) -> Iterator[str]:
        key = self.key_for(symbol, timeframe)
        if self._lock is None:
            raise RuntimeError(
                f"the market data store {self.root} is remote: merges need the lock every "
                "writing host shares (build it with MarketDataStore.from_settings)")
        with self._lock(normalize_symbol(symbol), timeframe):
            yield key

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
        key = self.key_for(symbol, timeframe)
        try:
            source = self._source(key)
        except ObjectNotFound:
            raise DataNotFound(
                f"no market data for {normalize_symbol(symbol)} {timeframe} in {self.root} "
                f"(import some with `clm data import FILE --symbol {symbol} "
                f"--timeframe {timeframe}`)"
            ) from None
        filters = []
        lo = _utc(start) if start is not None else None
        hi = _utc(end) if end is not None else None
        if lo is not None:
            filters.append(("timestamp", ">=", lo))
        if hi is not None:
            filters.append(("timestamp", "<=", hi))
        with _reading(normalize_symbol(symbol), timeframe, self._where(key)):
            table = pq.read_table(source, filters=filters or None, schema=_SCHEMA)
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
        key = self.key_for(symbol, timeframe)
        try:
            return self._coverage_of(key, normalize_symbol(symbol), timeframe)
        except ObjectNotFound:
            return None

    def extent(self, symbol: str, timeframe: str) -> SeriesExtent | None:
        """The series' extent (first/last bar, rows, gap-free runs) from the catalog kept
        when it was written (app.ml.data.catalog), without reading the file; None when
        the series is absent or empty, `SeriesUnreadable` when its file cannot be read."""
        key = self.key_for(symbol, timeframe)
        sym = normalize_symbol(symbol)
        bar = timeframe_seconds(timeframe) * 1_000_000_000

        def derive() -> SeriesExtent | None:  # no (matching) sidecar: the file's timestamps
            source = self._source(key)
            with _reading(sym, timeframe, self._where(key)):
                ts = pq.read_table(source, columns=["timestamp"]).column("timestamp")
            return extent_of_timestamps(ts.cast(pa.int64()).to_numpy(), bar)

        try:
            return cached_extent(self.objects, key, bar, derive)
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
        for sym, timeframe, key in self._series_keys():
            try:
                cov = self._coverage_of(key, sym, timeframe)
            except SeriesUnreadable as exc:
                broken.append(SeriesProblem(sym, timeframe, self._where(key),
                                            f"unreadable: {exc.reason}"))
                continue
            except ObjectNotFound:  # removed since the listing
                continue
            if cov is not None:
                out.append(cov)
        out.sort(key=lambda c: (c.symbol, order[c.timeframe]))
        return out, broken

    def series_files(self) -> list[tuple[str, str, Path | str]]:
        """(symbol, timeframe, file or object URL) of every series in the store's layout."""
        return [(sym, tf, self._where(key)) for sym, tf, key in self._series_keys()]

    def _series_keys(self) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        for folder in self.objects.children()[0]:
            for name in self.objects.children(folder)[1]:
                stem, dot, ext = name.rpartition(".")
                if dot and ext == "parquet" and stem in TIMEFRAMES:
                    found.append((folder, stem, f"{folder}/{name}"))
        return found

    def verify(self) -> list[SeriesProblem]:
        """Every problem of the store, each file read in full: unreadable files, a wrong
        schema, timestamps not strictly increasing or off the timeframe's grid, NaN/inf
        values, empty files, folders and files that are not a series. Empty = healthy."""
        problems: list[SeriesProblem] = []
        for folder in self.objects.children()[0]:
            try:
                ok = normalize_symbol(folder) == folder
            except ValueError:
                ok = False
            if not ok:
                where = self.objects.local_path(folder) or self.objects.describe(folder)
                problems.append(SeriesProblem(folder, None, where,
                                              "folder name is not a valid symbol"))
            for name in self.objects.children(folder)[1]:
                stem, dot, ext = name.rpartition(".")
                if dot and ext == "parquet" and stem not in TIMEFRAMES:
                    problems.append(SeriesProblem(folder, None, self._where(f"{folder}/{name}"),
                                                  "not a timeframe's file (ignored by reads)"))
        for sym, timeframe, key in self._series_keys():
            try:
                problem = _verify_file(self._source(key), timeframe)
            except ObjectNotFound:
                continue
            if problem is not None:
                problems.append(SeriesProblem(sym, timeframe, self._where(key), problem))
        return problems

    def gap_counts(self, symbol: str, timeframe: str,
                   calendar: str = DEFAULT_CALENDAR) -> tuple[int, int]:
        """(gaps, missing bars) of a stored series, reading only the timestamp column;
        (0, 0) when absent. Bars the `calendar` does not expect are not missing."""
        key = self.key_for(symbol, timeframe)
        try:
            source = self._source(key)
        except ObjectNotFound:
            return 0, 0
        with _reading(normalize_symbol(symbol), timeframe, self._where(key)):
            ts = pq.read_table(source, columns=["timestamp"]).column("timestamp")
        ns = ts.cast(pa.int64()).to_numpy()
        bar = timeframe_seconds(timeframe) * 1_000_000_000
        if calendar == DEFAULT_CALENDAR:  # the fast path: every spacing over a bar
            over = np.diff(ns)
            over = over[over > bar]
            return int(over.size), int((over // bar - 1).sum())
        gaps, missing = missing_open_bars(ns, bar, calendar, limit=2**62)
        return len(gaps), missing

    def _coverage_of(self, key: str, symbol: str, timeframe: str) -> Coverage | None:
        """ObjectNotFound when absent, SeriesUnreadable when unreadable."""
        source = self._source(key)
        with _reading(symbol, timeframe, self._where(key)):
            return MarketDataStore._coverage_from_metadata(source, symbol, timeframe)

    @staticmethod
    def _coverage_from_metadata(source: str | pa.BufferReader, symbol: str,
                                timeframe: str) -> Coverage | None:
        meta = pq.ParquetFile(source).metadata
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
            if isinstance(source, pa.BufferReader):
                source.seek(0)
            ts = pq.read_table(source, columns=["timestamp"]).column("timestamp")
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
        with self._locked(sym, timeframe) as key:
            old_ts = np.empty(0, dtype=np.int64)
            old_vals = np.empty((0, len(OHLCV_COLUMNS)))
            try:
                source = self._source(key)
            except ObjectNotFound:
                source = None
            if source is not None:
                # An unreadable stored file is never silently replaced by the import:
                # the operator decides (move it aside, then import; docs/OPERATIONS.md).
                with _reading(sym, timeframe, self._where(key)):
                    old = pq.read_table(source, schema=_SCHEMA)
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
            self._write(key, timeframe, ts, vals)
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

    def _write(self, key: str, timeframe: str, ts: np.ndarray, vals: np.ndarray) -> None:
        """Publish the merged series (one atomic replace), then its catalog sidecar."""
        ts_array = pa.array(ts.view("datetime64[ns]"), type=pa.timestamp("ns"))
        arrays = [ts_array.cast(_SCHEMA.field("timestamp").type)]
        arrays += [pa.array(np.ascontiguousarray(vals[:, i])) for i in range(vals.shape[1])]
        table = pa.Table.from_arrays(arrays, schema=_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=1 << 20)
        written = self.objects.put(key, buf.getvalue())
        # The catalog follows the file it describes, in this one place every write goes
        # through (under the merge lock): POST /clm/train reads the extent from it. A
        # reader between the two writes finds a sidecar for the old version, which no
        # longer matches, and derives the extent from the new file.
        write_sidecar(self.objects, key, written,
                      extent_of_timestamps(ts, timeframe_seconds(timeframe) * 10**9))


def _verify_file(source: str | pa.BufferReader, timeframe: str) -> str | None:
    """What is wrong with one series file read in full, or None."""
    try:
        table = pq.read_table(source)
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
