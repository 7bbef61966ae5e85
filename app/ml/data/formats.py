"""Reading OHLCV and position files: CSV (any of `,` `;` tab, with or without header,
plain or one file zipped as Binance ships it), Binance kline dumps and Parquet, into
epoch-nanosecond timestamps and float columns with the physical line of every row.

Owns the formats and their column conversion; app/ml/data/importer.py owns what a valid
series is (order, duplicates, prices, spacing) and the public API. Refusals are
`DataValidationError(file, line, reason)`, line 1-based with the header as line 1.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from app.core.domain import TIMEFRAMES

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported inside the few functions that need it (error paths, the frame's
# index), and pyarrow.compute (~80 ms to import) only where a column must be converted:
# reading a clean CSV into arrays needs neither (`clm backtest` start-up).


def _pc() -> Any:
    import pyarrow.compute as pc

    return pc

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
SUPPORTED_SUFFIXES = frozenset({"", ".csv", ".txt", ".tsv", ".zip", ".parquet", ".pq"})
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
_ZONE_RE = re.compile(r"(Z|[+-]\d\d:?\d\d)$")  # an ISO time's UTC offset
_EPOCH_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # arrow (RE2) syntax, ASCII digits
_EPOCH_TEXT_RE = re.compile(_EPOCH_TEXT, re.ASCII)  # the same, for one value in Python
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


# --------------------------------------------------------------------------- CSV reading


@dataclass
class CsvSource:
    """A CSV file or the single CSV inside a zip, readable twice (fast + error path)."""

    path: Path
    data: bytes | None  # in-memory CSV (zip member); None → read from path
    first_line: str
    delimiter: str = ","

    @classmethod
    def open(cls, path: Path) -> CsvSource:
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


def normalized_header(path: Path, fields: list[str]) -> list[str]:
    names = [_canonical_name(f) for f in fields]
    seen: set[str] = set()
    for name in names:
        if name in seen and name:
            raise DataValidationError(path, 1, f"duplicate column {name!r} in header")
        seen.add(name)
    # unnamed columns get placeholders so pyarrow accepts the names list
    return [n or f"_unnamed_{i}" for i, n in enumerate(names)]


def read_csv_like(
    path: Path, progress: ProgressFn | None
) -> tuple[np.ndarray, dict[str, np.ndarray], str, list[str], int]:
    source = CsvSource.open(path)
    if not source.first_line.strip():
        raise DataValidationError(path, 1, "file is empty")
    header = source.header_fields()
    if header is not None:
        names = normalized_header(path, header)
        ts_col = _timestamp_column(path, names, 1)
        fmt = "binance" if ts_col == "open_time" and names[0] == "open_time" else "csv"
        if ts_col is None and len(names) > 1 and not header[0]:
            # pandas' default `df.to_csv()`: the index (the timestamps) is written first
            # under an empty header cell.
            names[0], ts_col, fmt = "timestamp", "timestamp", "csv (pandas index)"
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
    table = parse_csv(source, names, wanted, skip, progress)
    ts_ns, units, cols = _convert_columns(path, table, ts_col, line_offset)
    if pa.types.is_timestamp(table.schema.field(ts_col).type):
        units = ["iso"]  # text in the file, parsed by the reader (see parse_csv)
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
        empty_col = _pc().is_null(table.column(ts_col))
        for c in OHLCV_COLUMNS:
            empty_col = _pc().and_(empty_col, _pc().is_null(table.column(c)))
        empty = np.asarray(arrow_to_numpy(empty_col), dtype=bool)
        # Blank lines at the end (editors, Excel, `echo >>`) carry no meaning: drop them.
        keep = len(empty)
        while keep and empty[keep - 1]:
            keep -= 1
        if keep < len(empty):
            table, empty = table.slice(0, keep), empty[:keep]
        j = first_true(empty)
        if j is not None:
            errors.append(DataValidationError(path, j + line_offset, "empty line"))
    ts_ns: np.ndarray = np.empty(0, dtype=np.int64)
    units: list[str] = []
    cols: dict[str, np.ndarray] = {}
    try:
        ts_ns, units = timestamps_from_column(path, table.column(ts_col), line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    for c in OHLCV_COLUMNS:
        try:
            cols[c] = float_column(path, table.column(c), c, line_offset)
        except DataValidationError as exc:
            errors.append(exc)
    if errors:
        raise min(errors, key=lambda e: e.line if e.line is not None else 0)
    return ts_ns, units, cols


def parse_csv(
    source: CsvSource,
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
        # ISO text: the reader parses it with the same ISO 8601 parser as the string
        # cast in `_text_to_ns` (zoned if the first value has an offset, else naive);
        # any value it refuses sends the whole file down the text path below, so the
        # result is the same as parsing strings, without a string column and a cast.
        zoned = _ZONE_RE.search(ts_sample.strip()) is not None
        ts_type = pa.timestamp("ns", "UTC") if zoned else pa.timestamp("ns")
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


def _first_data_fields(source: CsvSource, skip: int) -> list[str]:
    with source.stream() as fh:
        head = fh.read(65536).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = head.splitlines()
    if len(lines) <= skip:
        return []
    return [f.strip().strip('"') for f in lines[skip].split(source.delimiter)]


def _read_table(
    source: CsvSource,
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


def _line_of_text(source: CsvSource, text: str, skip: int) -> int | None:
    """Error path only: find the physical line holding `text`."""
    with source.stream() as fh:
        for number, raw in enumerate(io.TextIOWrapper(fh, encoding="utf-8", errors="replace")):
            if number >= skip and raw.rstrip("\r\n") == text:
                return number + 1
    return None


# --------------------------------------------------------------------------- Parquet


def read_parquet(
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


def first_true(mask: np.ndarray) -> int | None:
    """Index of the first True (vectorized), None when there is none."""
    if mask.size == 0:
        return None
    i = int(np.argmax(mask))
    return i if mask[i] else None


_NUMPY_OF_ARROW: dict[Any, Any] = {
    pa.float64(): np.float64, pa.float32(): np.float32, pa.int64(): np.int64,
    pa.int32(): np.int32, pa.uint64(): np.uint64, pa.uint32(): np.uint32,
}


def arrow_to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column as a numpy array, without pyarrow's own `to_numpy`: that imports pandas
    (a third of a second) even for a plain float column. Null-free numbers and booleans
    are read from the buffers; anything else goes through pyarrow (and pandas)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    dtype = _NUMPY_OF_ARROW.get(col.type)
    if pa.types.is_timestamp(col.type) and col.type.unit == "ns":
        dtype = np.int64  # its storage: epoch nanoseconds
    is_bool = pa.types.is_boolean(col.type)
    if col.null_count or (dtype is None and not is_bool):
        return col.to_numpy(zero_copy_only=False)
    parts: list[np.ndarray] = []
    for chunk in chunks:
        buf = chunk.buffers()[1]
        if is_bool:  # bit-packed, least significant bit first
            bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
            parts.append(bits[chunk.offset:chunk.offset + len(chunk)].astype(bool))
        else:
            parts.append(np.frombuffer(buf, dtype=dtype, count=len(chunk),
                                       offset=chunk.offset * np.dtype(dtype).itemsize))
    if not parts:
        return np.empty(0, dtype=bool if is_bool else dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()


def _null_index(col: pa.ChunkedArray) -> int | None:
    if col.null_count == 0:
        return None
    return first_true(arrow_to_numpy(_pc().is_null(col)))


def float_column(path: Path, col: pa.ChunkedArray, name: str, line_offset: int) -> np.ndarray:
    """float64 numpy array; missing or unparseable values raise with their line."""
    i = _null_index(col)
    if i is not None:
        raise DataValidationError(path, i + line_offset, f"missing value in column {name!r}")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        trimmed = _pc().utf8_trim_whitespace(col)
        try:
            col = _pc().cast(trimmed, pa.float64())
        except pa.ArrowInvalid:
            text = trimmed.to_numpy(zero_copy_only=False).astype(str)
            j = _first_bad_number(text)
            reason = f"cannot parse {name} value {str(text[j])!r} as a number"
            if re.fullmatch(r"[+-]?\d+,\d+", str(text[j])):
                reason += " (a decimal comma? use '.' as the decimal separator)"
            raise DataValidationError(path, j + line_offset, reason) from None
    try:
        values = arrow_to_numpy(col)
    except (pa.ArrowInvalid, TypeError):
        values = arrow_to_numpy(_pc().cast(col, pa.float64()))
    return np.ascontiguousarray(values, dtype=np.float64)


def _first_bad_number(text: np.ndarray) -> int:
    import pandas as pd  # error path only

    coerced = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy()
    literal_nan = np.isin(np.char.lower(text), ["nan", "+nan", "-nan"])
    bad = np.isnan(coerced.astype(np.float64)) & ~literal_nan
    j = first_true(bad)
    return 0 if j is None else j


def timestamps_from_column(
    path: Path, col: pa.ChunkedArray, line_offset: int
) -> tuple[np.ndarray, list[str]]:
    """int64 UTC nanoseconds from epoch numbers (unit by magnitude), ISO text or datetimes."""
    i = _null_index(col)
    if i is not None:
        raise DataValidationError(path, i + line_offset, "missing timestamp")
    t = col.type
    if pa.types.is_timestamp(t):
        if t.unit == "ns":  # int64 nanoseconds since the epoch (UTC) already
            return np.asarray(arrow_to_numpy(col), dtype=np.int64), ["datetime"]
        ns = _pc().cast(col, pa.timestamp("ns", t.tz)).cast(pa.int64())
        return np.asarray(arrow_to_numpy(ns), dtype=np.int64), ["datetime"]
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _epoch_to_ns(path, arrow_to_numpy(col), line_offset)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _text_to_ns(path, _pc().utf8_trim_whitespace(col), line_offset)
    raise DataValidationError(path, None, f"timestamp column has unsupported type {t}")


def _epoch_to_ns(path: Path, values: np.ndarray, line_offset: int) -> tuple[np.ndarray, list[str]]:
    if values.dtype.kind == "f":
        j = first_true(~np.isfinite(values))
        if j is not None:
            raise DataValidationError(
                path, j + line_offset, f"timestamp {format_number(values[j])} is not finite"
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
        over = first_true(np.abs(scaled) >= 9.2e18)
        if over is not None:
            raise DataValidationError(
                path, over + line_offset, f"timestamp {format_number(values[over])} is out of range"
            )
        return np.rint(scaled).astype(np.int64), units
    ints = values.astype(np.int64, copy=False)
    over = first_true(mag > _INT64_MAX // mult)
    if over is not None:
        raise DataValidationError(
            path, over + line_offset, f"timestamp {ints[over]} is out of range"
        )
    return ints * mult, units


def _text_to_ns(
    path: Path, col: pa.ChunkedArray, line_offset: int
) -> tuple[np.ndarray, list[str]]:
    # Epoch numbers that arrived as text (the fast path fell back to strings). The
    # first value decides (checked alone: the whole column's regex costs ~0.1 µs a row).
    first = col[0].as_py() if len(col) else None
    if first is not None and _EPOCH_TEXT_RE.match(first):
        numeric = _pc().match_substring_regex(col, _EPOCH_TEXT)
        numeric_np = arrow_to_numpy(numeric)
        j = first_true(~numeric_np)
        if j is not None:
            bad = col[j].as_py() if isinstance(col, pa.Array) else col.take([j])[0].as_py()
            raise DataValidationError(
                path, j + line_offset, f"cannot parse timestamp {bad!r} as an epoch number"
            )
        try:
            values = arrow_to_numpy(_pc().cast(col, pa.int64()))
        except pa.ArrowInvalid:
            values = arrow_to_numpy(_pc().cast(col, pa.float64()))
        return _epoch_to_ns(path, values, line_offset)
    # ISO 8601: arrow's parser is fast; offsets → UTC, offset-less text is taken as UTC.
    for target in (pa.timestamp("ns", "UTC"), pa.timestamp("ns")):
        try:
            ns = _pc().cast(col, target).cast(pa.int64())
            return np.asarray(arrow_to_numpy(ns), dtype=np.int64), ["iso"]
        except pa.ArrowInvalid:
            continue
    # Mixed styles or garbage: pandas parses per value and marks failures as NaT.
    import pandas as pd

    text = col.to_numpy(zero_copy_only=False).astype(str)
    parsed = pd.to_datetime(
        pd.Series(text, dtype=object), utc=True, format="ISO8601", errors="coerce"
    )
    j = first_true(parsed.isna().to_numpy())
    if j is not None:
        raise DataValidationError(path, j + line_offset, f"cannot parse timestamp {str(text[j])!r}")
    idx = pd.DatetimeIndex(parsed)
    return idx.as_unit("ns").asi8.copy(), ["iso"]


# --------------------------------------------------------------------------- helpers


def format_number(x: Any) -> str:
    """A numpy scalar as plain Python repr (numpy 2 reprs read 'np.float64(…)')."""
    return repr(float(x))


def format_range(low: float, high: float) -> str:
    return f"[low {format_number(low)}, high {format_number(high)}]"


def utc_index(ts_ns: np.ndarray) -> pd.DatetimeIndex:
    import pandas as pd

    values = np.asarray(ts_ns, dtype=np.int64).view("datetime64[ns]")
    return pd.DatetimeIndex(values, name="timestamp").tz_localize("UTC")


def index_ns(index: pd.DatetimeIndex) -> np.ndarray:
    import pandas as pd

    return pd.DatetimeIndex(index).as_unit("ns").asi8


def median_spacing_seconds(ts_ns: np.ndarray) -> float | None:
    if len(ts_ns) < 2:
        return None
    return float(np.median(np.diff(ts_ns))) / 1e9


def format_ns(value: int | np.integer) -> str:
    import pandas as pd  # error messages only

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


def timeframe_name(tf_seconds: int) -> str:
    for name, length in TIMEFRAMES.items():
        if length == tf_seconds:
            return name
    return f"{tf_seconds}s"
