"""Parse and validate OHLCV files into the market data frame shape (INTERNALS.md).

Owns the file formats — CSV with a `timestamp, open, high, low, close, volume`
header, Parquet with those columns, Binance kline CSV dumps (12 columns, with or
without header, open times in ms or µs, plain or zipped) — and the validation
rules. A bad file is refused as a whole with `DataValidationError(file, line,
reason)`; line numbers are 1-based with the header as line 1 (a header-less file's
first row is line 1; for Parquet, line = row number). Gaps are reported, not refused.

Real exports vary in ways that are unambiguous, so these are accepted: header case
and spacing, a `date`/`datetime`/`time`/`open_time` column instead of `timestamp`,
extra columns (`Adj Close` is ignored: OHLC stay consistent with `Close`), `;` or
tab separators, trailing blank lines, newest-first order (reversed), identical
duplicate rows (dropped). Conflicting duplicates, shuffled rows and non-positive
prices are refused.

Everything is vectorized: pyarrow parses, numpy finds the first offending row, so
millions of rows take seconds. The slow string path runs only to locate an error.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from app.core.domain import TIMEFRAMES, timeframe_seconds

__all__ = [
    "OHLCV_COLUMNS",
    "DataValidationError",
    "Gap",
    "ImportResult",
    "find_gaps",
    "format_seconds",
    "frame_from_arrays",
    "infer_timeframe",
    "load_ohlcv",
    "load_positions",
]

OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
BINANCE_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
# Timestamp column names seen in real exports, most specific first. `date` and `time`
# together usually mean two halves of one timestamp (MetaTrader), which is refused.
TIMESTAMP_ALIASES: tuple[str, ...] = (
    "timestamp", "open_time", "datetime", "date_time", "time", "date", "unix", "ts",
)
_DELIMITERS: tuple[str, ...] = (",", ";", "\t")
# Anything else (.json, .xlsx, .gz, ...) is refused up front instead of being parsed as
# CSV into a confusing header error. No suffix counts as CSV.
_SUPPORTED_SUFFIXES = frozenset({"", ".csv", ".txt", ".tsv", ".zip", ".parquet", ".pq"})
_INT64_MAX = np.iinfo(np.int64).max
# Epoch magnitude bands (absolute value): below 1e11 seconds (up to year 5138),
# below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
_UNIT_BANDS: tuple[tuple[float, int, str], ...] = (
    (1e11, 1_000_000_000, "s"),
    (1e14, 1_000_000, "ms"),
    (1e17, 1_000, "us"),
)
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BLOCK_SIZE = 8 << 20  # pyarrow CSV block: big enough to be fast, small enough for progress

ProgressFn = Callable[[int], None]


class DataValidationError(ValueError):
    """A file was refused. `line` is 1-based (header = line 1), None for whole-file problems."""

    def __init__(self, file: str | Path, line: int | None, reason: str) -> None:
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Gap:
    """Missing bars between two consecutive bars `after` and `before`."""

    after: pd.Timestamp
    before: pd.Timestamp
    missing_bars: int


@dataclass
class ImportResult:
    """A validated file: the frame plus what was learned while reading it."""

    frame: pd.DataFrame
    path: Path
    format: str  # "csv" | "binance" | "parquet"
    timeframe: str | None  # declared, else inferred from the median spacing (None if unknown)
    spacing_seconds: float | None  # median bar spacing
    timestamp_units: list[str]  # "s" / "ms" / "us" / "ns" / "iso" / "datetime"
    gaps: list[Gap] = field(default_factory=list)
    missing_bars: int = 0
    # physical line (1-based, as in errors) of each frame row, to name lines later
    source_lines: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    reversed: bool = False  # the file was newest first
    duplicates_dropped: int = 0  # identical repeated rows
    grid_offset_seconds: float | None = None  # bar start offset from the UTC timeframe grid

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def first(self) -> pd.Timestamp | None:
        return self.frame.index[0] if len(self.frame) else None

    @property
    def last(self) -> pd.Timestamp | None:
        return self.frame.index[-1] if len(self.frame) else None


# --------------------------------------------------------------------------- public API


def load_ohlcv(
    path: str | Path,
    timeframe: str | None = None,
    *,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Read and validate an OHLCV file; refuse it whole with `DataValidationError`.

    With `timeframe` the median bar spacing must equal it and every spacing must be
    a whole number of bars (gaps are listed in the result). Without it the
    timeframe is inferred (for `clm backtest`) and spacing is not checked.
    `progress(rows)` is called as row batches are parsed.
    """
    p = Path(path)
    tf_seconds = timeframe_seconds(timeframe) if timeframe is not None else None
    if not p.is_file():
        raise DataValidationError(p, None, "no such file")
    suffix = p.suffix.lower()
    if suffix not in _SUPPORTED_SUFFIXES:
        raise DataValidationError(
            p, 1, f"unsupported file type {suffix!r}: give CSV (.csv/.txt/.tsv, or one CSV "
                  "zipped as Binance ships it) or Parquet (.parquet)")
    if suffix in (".parquet", ".pq"):
        ts_ns, cols, fmt, units, line_offset = _read_parquet(p)
    else:
        ts_ns, cols, fmt, units, line_offset = _read_csv_like(p, progress)
    if len(ts_ns) == 0:
        # The line where the first row should have been.
        raise DataValidationError(p, line_offset, "no data rows" + (
            " after the header" if line_offset > 1 else ""))
    lines = np.arange(len(ts_ns), dtype=np.int64) + line_offset
    ts_ns, cols, lines, was_reversed = _newest_first_reversed(ts_ns, cols, lines)
    ts_ns, cols, lines, dropped = _drop_identical_duplicates(ts_ns, cols, lines)
    frame = _validate_ohlcv(p, ts_ns, cols, lines, tf_seconds)
    spacing = _median_spacing_seconds(ts_ns)
    tf = timeframe if timeframe is not None else infer_timeframe(spacing)
    gaps: list[Gap] = []
    missing = 0
    offset = None
    if tf is not None:
        gaps, missing = find_gaps(frame.index, tf)
        offset = (int(ts_ns[0]) % (timeframe_seconds(tf) * 1_000_000_000)) / 1e9
    return ImportResult(
        frame, p, fmt, tf, spacing, units, gaps, missing,
        source_lines=lines, reversed=was_reversed, duplicates_dropped=dropped,
        grid_offset_seconds=offset,
    )


def load_positions(path: str | Path) -> pd.Series:
    """Read a `timestamp, position` CSV into a float64 Series on a UTC DatetimeIndex.

    Refuses (DataValidationError with line) missing columns, unparseable values,
    NaN, positions outside [-1, 1], unsorted or duplicate timestamps.
    """
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(p, None, "no such file")
    source = _CsvSource.open(p)
    header = source.header_fields()
    if header is None:
        raise DataValidationError(p, 1, "expected a header row 'timestamp, position'")
    names = _normalized_header(p, header)
    missing = [c for c in ("timestamp", "position") if c not in names]
    if missing:
        raise DataValidationError(p, 1, f"missing column(s): {', '.join(missing)}")
    table = _parse_csv(source, names, ["timestamp", "position"], 1, None)
    line_offset = 2
    # Every check runs; the earliest offending line is the one reported.
    errors: list[DataValidationError] = []
    ts_ns = pos = None
    try:
        ts_ns, _units = _timestamps_from_column(p, table.column("timestamp"), line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    try:
        pos = _float_column(p, table.column("position"), "position", line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    if pos is not None:
        j = _first_true(~((pos >= -1.0) & (pos <= 1.0)))  # NaN fails both comparisons
        if j is not None:
            reason = f"position {_num(pos[j])} is outside [-1, 1]"
            errors.append(DataValidationError(p, j + line_offset, reason))
    if ts_ns is not None:
        try:
            _check_order(p, ts_ns, line_offset)
        except DataValidationError as exc:
            errors.append(exc)
    if errors:
        raise min(errors, key=lambda e: e.line if e.line is not None else 0)
    assert ts_ns is not None and pos is not None
    return pd.Series(pos, index=_utc_index(ts_ns), name="position")


def frame_from_arrays(ts_ns: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Build the canonical frame (UTC ns DatetimeIndex `timestamp`, float64 OHLCV)."""
    data = {c: np.asarray(cols[c], dtype=np.float64) for c in OHLCV_COLUMNS}
    return pd.DataFrame(data, index=_utc_index(ts_ns), columns=list(OHLCV_COLUMNS))


def infer_timeframe(spacing_seconds: float | None) -> str | None:
    """The contract timeframe whose length equals the median spacing, else None."""
    if spacing_seconds is None:
        return None
    for name, secs in TIMEFRAMES.items():
        if secs == spacing_seconds:
            return name
    return None


def find_gaps(index: pd.DatetimeIndex, timeframe: str, limit: int = 1000) -> tuple[list[Gap], int]:
    """Gaps (spacing > one bar) in a sorted index: up to `limit` listed, total missing bars."""
    step = timeframe_seconds(timeframe) * 1_000_000_000
    ns = _index_ns(index)
    if len(ns) < 2:
        return [], 0
    spacing = np.diff(ns)
    where = np.flatnonzero(spacing > step)
    missing_each = spacing[where] // step - 1
    gaps = [
        Gap(
            pd.Timestamp(int(ns[i]), unit="ns", tz="UTC"),
            pd.Timestamp(int(ns[i + 1]), unit="ns", tz="UTC"),
            int(m),
        )
        for i, m in zip(where[:limit], missing_each[:limit], strict=True)
    ]
    return gaps, int(missing_each.sum())


# --------------------------------------------------------------------------- CSV reading


@dataclass
class _CsvSource:
    """A CSV file or the single CSV inside a zip, readable twice (fast + error path)."""

    path: Path
    data: bytes | None  # in-memory CSV (zip member); None → read from path
    first_line: str
    delimiter: str = ","

    @classmethod
    def open(cls, path: Path) -> _CsvSource:
        data: bytes | None = None
        if zipfile.is_zipfile(path):
            data = _zip_member(path)
            head = data[:65536]
        else:
            with open(path, "rb") as fh:
                head = fh.read(65536)
        text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
        first = text.splitlines()[0] if text.strip() else ""
        # The first line's most frequent candidate wins (ties → comma): a `;` file
        # with decimal commas ("1;100,5;…") still splits on `;`.
        delimiter = max(_DELIMITERS, key=lambda d: (first.count(d), d == ","))
        return cls(path, data, first, delimiter)

    def stream(self) -> Any:
        return pa.BufferReader(self.data) if self.data is not None else pa.OSFile(str(self.path))

    def header_fields(self) -> list[str] | None:
        """The first line's fields if it is a header (first field not a number), else None."""
        fields = [f.strip().strip('"') for f in self.first_line.split(self.delimiter)]
        if not fields or not self.first_line.strip():
            return None
        return None if _FLOAT_RE.fullmatch(fields[0]) else fields

    def column_count(self) -> int:
        return len(self.first_line.split(self.delimiter))


def _zip_member(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        members = [
            i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
        ]
        if len(members) != 1:
            names = ", ".join(i.filename for i in members) or "nothing"
            raise DataValidationError(
                path, None, f"a zip must hold exactly one CSV file, found {names}"
            )
        return zf.read(members[0])


def _canonical_name(name: str) -> str:
    """`Open Time` / `open time` / `OPEN_TIME` → `open_time`."""
    return re.sub(r"\s+", "_", name.strip().lower())


def _normalized_header(path: Path, fields: list[str]) -> list[str]:
    names = [_canonical_name(f) for f in fields]
    seen: set[str] = set()
    for name in names:
        if name in seen and name:
            raise DataValidationError(path, 1, f"duplicate column {name!r} in header")
        seen.add(name)
    # unnamed columns get placeholders so pyarrow accepts the names list
    return [n or f"_unnamed_{i}" for i, n in enumerate(names)]


def _read_csv_like(
    path: Path, progress: ProgressFn | None
) -> tuple[np.ndarray, dict[str, np.ndarray], str, list[str], int]:
    source = _CsvSource.open(path)
    if not source.first_line.strip():
        raise DataValidationError(path, 1, "file is empty")
    header = source.header_fields()
    if header is not None:
        names = _normalized_header(path, header)
        ts_col = _timestamp_column(path, names, 1)
        fmt = "binance" if ts_col == "open_time" and names[0] == "open_time" else "csv"
        missing = [c for c in (ts_col, *OHLCV_COLUMNS) if c is None or c not in names]
        if missing:
            raise DataValidationError(
                path,
                1,
                f"missing column(s): {', '.join(c or 'timestamp' for c in missing)} "
                f"(header has: {', '.join(header)})",
            )
        assert ts_col is not None
        skip, line_offset = 1, 2
    else:
        ncols = source.column_count()
        if ncols == len(BINANCE_COLUMNS):
            names, fmt, ts_col = list(BINANCE_COLUMNS), "binance", "open_time"
        elif ncols == 1 + len(OHLCV_COLUMNS):
            names, fmt, ts_col = ["timestamp", *OHLCV_COLUMNS], "csv", "timestamp"
        else:
            raise DataValidationError(
                path,
                1,
                f"no header row and {ncols} columns: expected a header "
                "'timestamp, open, high, low, close, volume' or a 12-column Binance kline file",
            )
        skip, line_offset = 0, 1
    wanted = [ts_col, *OHLCV_COLUMNS]
    table = _parse_csv(source, names, wanted, skip, progress)
    ts_ns, units, cols = _convert_columns(path, table, ts_col, line_offset)
    return ts_ns, cols, fmt, units, line_offset


def _timestamp_column(path: Path, names: list[str], line: int | None) -> str | None:
    """Which column holds the bar time: the first alias present, None when there is none."""
    present = [a for a in TIMESTAMP_ALIASES if a in names]
    if not present:
        return None
    if present[0] == "time" and "date" in present:
        # MetaTrader-style split: joining them needs the user's date format, so ask.
        raise DataValidationError(
            path,
            line,
            "separate 'date' and 'time' columns: combine them into one 'timestamp' "
            "column (e.g. 2024-01-01 13:00:00)",
        )
    return present[0]


def _convert_columns(
    path: Path, table: pa.Table, ts_col: str, line_offset: int
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Convert every column; if several are bad, report the earliest line."""
    errors: list[DataValidationError] = []
    if table.column(ts_col).null_count:
        # a blank line parses as a row of nulls: name it for what it is
        empty_col = pc.is_null(table.column(ts_col))
        for c in OHLCV_COLUMNS:
            empty_col = pc.and_(empty_col, pc.is_null(table.column(c)))
        empty = np.asarray(empty_col.to_numpy(zero_copy_only=False), dtype=bool)
        # Blank lines at the end (editors, Excel, `echo >>`) carry no meaning: drop them.
        keep = len(empty)
        while keep and empty[keep - 1]:
            keep -= 1
        if keep < len(empty):
            table, empty = table.slice(0, keep), empty[:keep]
        j = _first_true(empty)
        if j is not None:
            errors.append(DataValidationError(path, j + line_offset, "empty line"))
    ts_ns: np.ndarray = np.empty(0, dtype=np.int64)
    units: list[str] = []
    cols: dict[str, np.ndarray] = {}
    try:
        ts_ns, units = _timestamps_from_column(path, table.column(ts_col), line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    for c in OHLCV_COLUMNS:
        try:
            cols[c] = _float_column(path, table.column(c), c, line_offset)
        except DataValidationError as exc:
            errors.append(exc)
    if errors:
        raise min(errors, key=lambda e: e.line if e.line is not None else 0)
    return ts_ns, units, cols


def _parse_csv(
    source: _CsvSource,
    names: list[str],
    wanted: list[str],
    skip: int,
    progress: ProgressFn | None,
) -> pa.Table:
    """Parse with pyarrow; numbers typed on the fast path, strings if that fails."""
    ts_col = wanted[0]
    first_fields = _first_data_fields(source, skip)
    ts_at = names.index(ts_col)
    ts_sample = first_fields[ts_at] if ts_at < len(first_fields) else ""
    if _INT_RE.fullmatch(ts_sample.strip()):
        ts_type: pa.DataType = pa.int64()
    elif _FLOAT_RE.fullmatch(ts_sample.strip()):
        ts_type = pa.float64()
    else:
        ts_type = pa.string()
    typed = {c: pa.float64() for c in wanted[1:]}
    typed[ts_col] = ts_type
    try:
        return _read_table(source, names, wanted, skip, typed, progress)
    except pa.ArrowInvalid:
        pass
    # A value did not convert: re-read as text; callers locate and name the row.
    as_text = {c: pa.string() for c in wanted}
    try:
        return _read_table(source, names, wanted, skip, as_text, None)
    except pa.ArrowInvalid as exc:  # e.g. an unterminated quote or invalid UTF-8
        raise DataValidationError(source.path, None, f"cannot parse CSV: {exc}") from None


def _first_data_fields(source: _CsvSource, skip: int) -> list[str]:
    with source.stream() as fh:
        head = fh.read(65536).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = head.splitlines()
    if len(lines) <= skip:
        return []
    return [f.strip().strip('"') for f in lines[skip].split(source.delimiter)]


def _read_table(
    source: _CsvSource,
    names: list[str],
    wanted: list[str],
    skip: int,
    types: dict[str, pa.DataType],
    progress: ProgressFn | None,
) -> pa.Table:
    bad_rows: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append(row)
        return "skip"  # keep going cheaply; the first one is reported below

    reader = pacsv.open_csv(
        source.stream(),
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=skip, use_threads=False, block_size=_BLOCK_SIZE
        ),
        # Empty lines become all-null rows so every physical line keeps its number.
        parse_options=pacsv.ParseOptions(
            delimiter=source.delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=wanted,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    batches = []
    done = 0
    for batch in reader:
        batches.append(batch)
        done += batch.num_rows
        if progress is not None:
            progress(batch.num_rows)
        if bad_rows:
            break
    if bad_rows:
        row = bad_rows[0]
        line = row.number if row.number is not None else _line_of_text(source, row.text, skip)
        raise DataValidationError(
            source.path,
            line,
            f"expected {row.expected_columns} columns, found {row.actual_columns}",
        )
    if not batches:
        return pa.table({c: pa.array([], type=types[c]) for c in wanted})
    return pa.Table.from_batches(batches).select(wanted)


def _line_of_text(source: _CsvSource, text: str, skip: int) -> int | None:
    """Error path only: find the physical line holding `text`."""
    with source.stream() as fh:
        for number, raw in enumerate(io.TextIOWrapper(fh, encoding="utf-8", errors="replace")):
            if number >= skip and raw.rstrip("\r\n") == text:
                return number + 1
    return None


# --------------------------------------------------------------------------- Parquet


def _read_parquet(
    path: Path,
) -> tuple[np.ndarray, dict[str, np.ndarray], str, list[str], int]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(path, 1, f"not a readable Parquet file: {exc}") from exc
    names = [_canonical_name(n) for n in table.column_names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataValidationError(path, None, f"duplicate column(s): {', '.join(dupes)}")
    table = table.rename_columns(names)
    ts_col = _timestamp_column(path, names, None)
    index_col = "__index_level_0__"  # pandas `to_parquet` of an unnamed DatetimeIndex
    if (ts_col is None and index_col in names
            and pa.types.is_timestamp(table.schema.field(index_col).type)):
        ts_col = index_col
    missing = [c for c in OHLCV_COLUMNS if c not in names]
    if ts_col is None:
        missing.insert(0, "timestamp")
    if missing:
        raise DataValidationError(
            path, None, f"missing column(s): {', '.join(missing)} (has: {', '.join(names)})"
        )
    line_offset = 1  # Parquet has no header line: row 1 is the first row
    assert ts_col is not None
    ts_ns, units, cols = _convert_columns(path, table, ts_col, line_offset)
    return ts_ns, cols, "parquet", units, line_offset


# --------------------------------------------------------------------------- conversion


def _first_true(mask: np.ndarray) -> int | None:
    """Index of the first True (vectorized), None when there is none."""
    if mask.size == 0:
        return None
    i = int(np.argmax(mask))
    return i if mask[i] else None


def _null_index(col: pa.ChunkedArray) -> int | None:
    if col.null_count == 0:
        return None
    return _first_true(pc.is_null(col).to_numpy(zero_copy_only=False))


def _float_column(path: Path, col: pa.ChunkedArray, name: str, line_offset: int) -> np.ndarray:
    """float64 numpy array; missing or unparseable values raise with their line."""
    i = _null_index(col)
    if i is not None:
        raise DataValidationError(path, i + line_offset, f"missing value in column {name!r}")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        trimmed = pc.utf8_trim_whitespace(col)
        try:
            col = pc.cast(trimmed, pa.float64())
        except pa.ArrowInvalid:
            text = trimmed.to_numpy(zero_copy_only=False).astype(str)
            j = _first_bad_number(text)
            reason = f"cannot parse {name} value {str(text[j])!r} as a number"
            if re.fullmatch(r"[+-]?\d+,\d+", str(text[j])):
                reason += " (a decimal comma? use '.' as the decimal separator)"
            raise DataValidationError(path, j + line_offset, reason) from None
    try:
        values = col.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, TypeError):
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float64)


def _first_bad_number(text: np.ndarray) -> int:
    coerced = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy()
    literal_nan = np.isin(np.char.lower(text), ["nan", "+nan", "-nan"])
    bad = np.isnan(coerced.astype(np.float64)) & ~literal_nan
    j = _first_true(bad)
    return 0 if j is None else j


def _timestamps_from_column(
    path: Path, col: pa.ChunkedArray, line_offset: int
) -> tuple[np.ndarray, list[str]]:
    """int64 UTC nanoseconds from epoch numbers (unit by magnitude), ISO text or datetimes."""
    i = _null_index(col)
    if i is not None:
        raise DataValidationError(path, i + line_offset, "missing timestamp")
    t = col.type
    if pa.types.is_timestamp(t):
        ns = pc.cast(col, pa.timestamp("ns", t.tz)).cast(pa.int64())
        return np.asarray(ns.to_numpy(zero_copy_only=False), dtype=np.int64), ["datetime"]
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _epoch_to_ns(path, col.to_numpy(zero_copy_only=False), line_offset)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _text_to_ns(path, pc.utf8_trim_whitespace(col), line_offset)
    raise DataValidationError(path, None, f"timestamp column has unsupported type {t}")


def _epoch_to_ns(path: Path, values: np.ndarray, line_offset: int) -> tuple[np.ndarray, list[str]]:
    if values.dtype.kind == "f":
        j = _first_true(~np.isfinite(values))
        if j is not None:
            raise DataValidationError(
                path, j + line_offset, f"timestamp {_num(values[j])} is not finite"
            )
    mag = np.abs(values)
    # per-row unit: Binance switched spot dumps from ms to µs in 2025, and a user may
    # concatenate months on both sides of the switch
    mult = np.full(values.shape, 1, dtype=np.int64)
    units: list[str] = []
    lower = 0.0
    unit_name = "ns"
    for upper, factor, name in _UNIT_BANDS:
        in_band = (mag >= lower) & (mag < upper)
        if in_band.any():
            mult[in_band] = factor
            units.append(name)
        lower = upper
    if (mag >= lower).any():
        units.append(unit_name)
    if values.dtype.kind == "f":
        scaled = values * mult
        over = _first_true(np.abs(scaled) >= 9.2e18)
        if over is not None:
            raise DataValidationError(
                path, over + line_offset, f"timestamp {_num(values[over])} is out of range"
            )
        return np.rint(scaled).astype(np.int64), units
    ints = values.astype(np.int64, copy=False)
    over = _first_true(mag > _INT64_MAX // mult)
    if over is not None:
        raise DataValidationError(
            path, over + line_offset, f"timestamp {ints[over]} is out of range"
        )
    return ints * mult, units


def _text_to_ns(
    path: Path, col: pa.ChunkedArray, line_offset: int
) -> tuple[np.ndarray, list[str]]:
    # Epoch numbers that arrived as text (the fast path fell back to strings).
    numeric = pc.match_substring_regex(col, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    numeric_np = numeric.to_numpy(zero_copy_only=False)
    if len(numeric_np) and numeric_np[0]:
        j = _first_true(~numeric_np)
        if j is not None:
            bad = col[j].as_py() if isinstance(col, pa.Array) else col.take([j])[0].as_py()
            raise DataValidationError(
                path, j + line_offset, f"cannot parse timestamp {bad!r} as an epoch number"
            )
        try:
            values = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        return _epoch_to_ns(path, values, line_offset)
    # ISO 8601: arrow's parser is fast; offsets → UTC, offset-less text is taken as UTC.
    for target in (pa.timestamp("ns", "UTC"), pa.timestamp("ns")):
        try:
            ns = pc.cast(col, target).cast(pa.int64())
            return np.asarray(ns.to_numpy(zero_copy_only=False), dtype=np.int64), ["iso"]
        except pa.ArrowInvalid:
            continue
    # Mixed styles or garbage: pandas parses per value and marks failures as NaT.
    text = col.to_numpy(zero_copy_only=False).astype(str)
    parsed = pd.to_datetime(
        pd.Series(text, dtype=object), utc=True, format="ISO8601", errors="coerce"
    )
    j = _first_true(parsed.isna().to_numpy())
    if j is not None:
        raise DataValidationError(path, j + line_offset, f"cannot parse timestamp {str(text[j])!r}")
    idx = pd.DatetimeIndex(parsed)
    return idx.as_unit("ns").asi8.copy(), ["iso"]


# --------------------------------------------------------------------------- validation


def _check_order(path: Path, ts_ns: np.ndarray, line_offset: int) -> None:
    if len(ts_ns) < 2:
        return
    step = np.diff(ts_ns)
    j = _first_true(step <= 0)
    if j is None:
        return
    row = j + 1
    when, prev = _fmt_ns(ts_ns[row]), _fmt_ns(ts_ns[j])
    if step[j] == 0:
        reason = f"duplicate timestamp {when} (same as line {j + line_offset})"
    else:
        reason = f"timestamps not sorted: {when} comes after {prev} (line {j + line_offset})"
    raise DataValidationError(path, row + line_offset, reason)


def _newest_first_reversed(
    ts_ns: np.ndarray, cols: dict[str, np.ndarray], lines: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, bool]:
    """Reverse a file that is newest first throughout (many exchange and website
    exports are): unambiguous, unlike a shuffled file, which stays refused."""
    if len(ts_ns) < 2:
        return ts_ns, cols, lines, False
    step = np.diff(ts_ns)
    if not ((step <= 0).all() and (step < 0).any()):
        return ts_ns, cols, lines, False
    return ts_ns[::-1].copy(), {k: v[::-1].copy() for k, v in cols.items()}, lines[::-1], True


def _drop_identical_duplicates(
    ts_ns: np.ndarray, cols: dict[str, np.ndarray], lines: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, int]:
    """Drop a row that repeats the previous one exactly (overlapping downloads pasted
    together); a repeated timestamp with other values stays and is refused."""
    if len(ts_ns) < 2:
        return ts_ns, cols, lines, 0
    same = np.diff(ts_ns) == 0
    for c in OHLCV_COLUMNS:
        same &= cols[c][1:] == cols[c][:-1]
    if not same.any():
        return ts_ns, cols, lines, 0
    keep = np.concatenate(([True], ~same))
    return ts_ns[keep], {k: v[keep] for k, v in cols.items()}, lines[keep], int(same.sum())


def _validate_ohlcv(
    path: Path,
    ts_ns: np.ndarray,
    cols: dict[str, np.ndarray],
    lines: np.ndarray,
    tf_seconds: int | None,
) -> pd.DataFrame:
    """Refuse the file at the first (physical) line with a problem; `lines[i]` is the
    line of row i (rows may have been reversed or de-duplicated)."""
    n = len(ts_ns)
    if n == 0:
        raise DataValidationError(path, None, "no data rows")
    o, h, lo, c, v = (cols[k] for k in OHLCV_COLUMNS)
    # Each check yields its first offending row; the earliest line is reported so the
    # message points at the first problem a person scrolling the file would meet.
    problems: list[tuple[int, int, str]] = []  # (line, priority, reason)

    def first(mask: np.ndarray, priority: int, reason: Callable[[int], str]) -> None:
        rows = np.flatnonzero(mask)
        if rows.size:
            j = int(rows[np.argmin(lines[rows])])  # earliest line, not earliest row
            problems.append((int(lines[j]), priority, reason(j)))

    for prio, name in enumerate(OHLCV_COLUMNS):
        arr = cols[name]
        first(~np.isfinite(arr), prio, lambda j, a=arr, nm=name: f"{nm} is {_num(a[j])} (NaN/inf)")
    if n >= 2:
        step = np.diff(ts_ns)
        first(
            np.concatenate(([False], step < 0)),
            10,
            lambda j: f"timestamps not sorted: {_fmt_ns(ts_ns[j])} comes after "
            f"{_fmt_ns(ts_ns[j - 1])} (line {lines[j - 1]})",
        )
        first(
            np.concatenate(([False], step == 0)),
            11,
            lambda j: f"duplicate timestamp {_fmt_ns(ts_ns[j])} with different values "
            f"(same as line {lines[j - 1]})",
        )
    # Prices must be positive: returns and log features are undefined otherwise.
    for prio, name in enumerate(("open", "high", "low", "close"), start=15):
        arr = cols[name]
        first(arr <= 0, prio, lambda j, a=arr, nm=name: f"{nm} {_num(a[j])} is not positive")
    first(h < lo, 20, lambda j: f"high {_num(h[j])} is below low {_num(lo[j])}")
    first((o < lo) | (o > h), 21, lambda j: f"open {_num(o[j])} is outside {_range(lo[j], h[j])}")
    first((c < lo) | (c > h), 22, lambda j: f"close {_num(c[j])} is outside {_range(lo[j], h[j])}")
    first(v < 0, 23, lambda j: f"volume {_num(v[j])} is negative")
    if problems:
        line, _, reason = min(problems)
        raise DataValidationError(path, line, reason)

    if tf_seconds is not None and n >= 2:
        _check_spacing(path, ts_ns, tf_seconds, lines)
    return frame_from_arrays(ts_ns, cols)


def _check_spacing(path: Path, ts_ns: np.ndarray, tf_seconds: int, lines: np.ndarray) -> None:
    step = np.diff(ts_ns)
    bar = tf_seconds * 1_000_000_000
    median = float(np.median(step))
    if median != bar:
        j = _first_true(step != bar)
        row = (j if j is not None else 0) + 1
        raise DataValidationError(
            path,
            int(lines[row]),
            f"bar spacing does not match timeframe {_tf_name(tf_seconds)}: median spacing is "
            f"{format_seconds(median / 1e9)}, this bar is {format_seconds(step[row - 1] / 1e9)} "
            "after the previous one",
        )
    # Gaps must be whole bars: an off-grid bar means the file mixes timeframes/offsets.
    off = step % bar
    j = _first_true(off != 0)
    if j is not None:
        reason = (
            f"bar is {format_seconds(step[j] / 1e9)} after the previous one: not a whole "
            f"number of {_tf_name(tf_seconds)} bars"
        )
        if tf_seconds >= 86_400 and min(off[j], bar - off[j]) == 3_600_000_000_000:
            # local-midnight daily bars (yfinance, exchange exports) shift an hour at DST
            reason += (
                "; local times across a daylight saving switch? give dates "
                "(2024-03-11) or UTC times"
            )
        raise DataValidationError(path, int(lines[j + 1]), reason)


# --------------------------------------------------------------------------- helpers


def _num(x: Any) -> str:
    """A numpy scalar as plain Python repr (numpy 2 reprs read 'np.float64(…)')."""
    return repr(float(x))


def _range(low: float, high: float) -> str:
    return f"[low {_num(low)}, high {_num(high)}]"


def _utc_index(ts_ns: np.ndarray) -> pd.DatetimeIndex:
    values = np.asarray(ts_ns, dtype=np.int64).view("datetime64[ns]")
    return pd.DatetimeIndex(values, name="timestamp").tz_localize("UTC")


def _index_ns(index: pd.DatetimeIndex) -> np.ndarray:
    return pd.DatetimeIndex(index).as_unit("ns").asi8


def _median_spacing_seconds(ts_ns: np.ndarray) -> float | None:
    if len(ts_ns) < 2:
        return None
    return float(np.median(np.diff(ts_ns))) / 1e9


def _fmt_ns(value: int | np.integer) -> str:
    return pd.Timestamp(int(value), unit="ns", tz="UTC").isoformat().replace("+00:00", "Z")


def format_seconds(secs: float) -> str:
    """A duration as a timeframe name when it is one (`1h`), else seconds (`90s`)."""
    for name, length in sorted(TIMEFRAMES.items(), key=lambda kv: -kv[1]):
        if secs == length:
            return name
    if secs == int(secs):
        whole = int(secs)
        for unit, length in (("h", 3600), ("m", 60)):
            if whole % length == 0:
                return f"{whole // length}{unit}"
        return f"{whole}s"
    return f"{secs:g}s"


def _tf_name(tf_seconds: int) -> str:
    for name, length in TIMEFRAMES.items():
        if length == tf_seconds:
            return name
    return f"{tf_seconds}s"
