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

Two levels: `read_ohlcv_arrays` / `read_positions_arrays` validate into numpy arrays and
never import pandas (nor the trading calendars), so `clm backtest` starts fast;
`load_ohlcv` / `load_positions` build the pandas frame or series on top of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.domain import TIMEFRAMES, timeframe_seconds
from app.ml.data.formats import (
    OHLCV_COLUMNS,
    SUPPORTED_SUFFIXES,
    CsvSource,
    DataValidationError,
    ProgressFn,
    first_true,
    float_column,
    format_ns,
    format_number,
    format_range,
    format_seconds,
    index_ns,
    median_spacing_seconds,
    normalized_header,
    parse_csv,
    read_csv_like,
    read_parquet,
    timeframe_name,
    timestamps_from_column,
    utc_index,
)

if TYPE_CHECKING:  # pandas is imported only by the functions that build frames
    import pandas as pd

# app.analysis.calendars.DEFAULT_CALENDAR, named here so that importing this module does
# not import the calendars (and pandas with them); a test checks the two agree.
DEFAULT_CALENDAR = "24/7"

__all__ = [
    "OHLCV_COLUMNS",
    "DataValidationError",
    "Gap",
    "ImportResult",
    "OhlcvArrays",
    "find_gaps",
    "format_seconds",
    "frame_from_arrays",
    "infer_timeframe",
    "load_ohlcv",
    "load_positions",
    "read_ohlcv_arrays",
    "read_positions_arrays",
    "validate_bars",
]

@dataclass(frozen=True)
class Gap:
    """Missing bars between two consecutive bars `after` and `before`."""

    after: pd.Timestamp
    before: pd.Timestamp
    missing_bars: int


@dataclass
class OhlcvArrays:
    """A validated OHLCV file as numpy arrays, before any pandas frame is built."""

    ts_ns: np.ndarray  # int64 UTC epoch nanoseconds, strictly increasing
    cols: dict[str, np.ndarray]  # OHLCV_COLUMNS -> float64
    path: Path
    format: str  # "csv" | "binance" | "parquet"
    timeframe: str | None  # declared, else inferred from the median spacing (None if unknown)
    spacing_seconds: float | None  # median bar spacing
    timestamp_units: list[str]
    lines: np.ndarray  # physical line (1-based, as in errors) of each row
    reversed: bool = False
    duplicates_dropped: int = 0


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
    calendar: str = DEFAULT_CALENDAR,
) -> ImportResult:
    """Read and validate an OHLCV file; refuse it whole with `DataValidationError`.

    With `timeframe` the median bar spacing must equal it and every spacing must be
    a whole number of bars (gaps are listed in the result). Without it the
    timeframe is inferred (for `clm backtest`) and spacing is not checked.
    `progress(rows)` is called as row batches are parsed. `calendar`: the symbol's
    trading calendar (missing bars in closed sessions are not gaps).
    """
    arrays = read_ohlcv_arrays(path, timeframe, progress=progress)
    frame = frame_from_arrays(arrays.ts_ns, arrays.cols)
    tf = arrays.timeframe
    gaps: list[Gap] = []
    missing = 0
    offset = None
    if tf is not None:
        gaps, missing = find_gaps(frame.index, tf, calendar=calendar)
        offset = (int(arrays.ts_ns[0]) % (timeframe_seconds(tf) * 1_000_000_000)) / 1e9
    return ImportResult(
        frame, arrays.path, arrays.format, tf, arrays.spacing_seconds, arrays.timestamp_units,
        gaps, missing, source_lines=arrays.lines, reversed=arrays.reversed,
        duplicates_dropped=arrays.duplicates_dropped, grid_offset_seconds=offset,
    )


def read_ohlcv_arrays(
    path: str | Path, timeframe: str | None = None, *, progress: ProgressFn | None = None
) -> OhlcvArrays:
    """`load_ohlcv`'s reading and validation, into numpy arrays: no frame, no gap list."""
    p = Path(path)
    tf_seconds = timeframe_seconds(timeframe) if timeframe is not None else None
    if not p.is_file():
        raise DataValidationError(p, None, "no such file")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataValidationError(
            p, 1, f"unsupported file type {suffix!r}: give CSV (.csv/.txt/.tsv, or one CSV "
                  "zipped as Binance ships it) or Parquet (.parquet)")
    if suffix in (".parquet", ".pq"):
        ts_ns, cols, fmt, units, line_offset = read_parquet(p)
    else:
        ts_ns, cols, fmt, units, line_offset = read_csv_like(p, progress)
    if len(ts_ns) == 0:
        # The line where the first row should have been.
        raise DataValidationError(p, line_offset, "no data rows" + (
            " after the header" if line_offset > 1 else ""))
    lines = np.arange(len(ts_ns), dtype=np.int64) + line_offset
    ts_ns, cols, lines, was_reversed = _newest_first_reversed(ts_ns, cols, lines)
    ts_ns, cols, lines, dropped = _drop_identical_duplicates(ts_ns, cols, lines)
    _validate_ohlcv(p, ts_ns, cols, lines, tf_seconds)
    spacing = median_spacing_seconds(ts_ns)
    tf = timeframe if timeframe is not None else infer_timeframe(spacing)
    return OhlcvArrays(ts_ns, cols, p, fmt, tf, spacing, units, lines, was_reversed, dropped)


def validate_bars(
    source: str, ts_ns: np.ndarray, cols: dict[str, np.ndarray], timeframe: str
) -> pd.DataFrame:
    """Validate bars that came from elsewhere than a file (a feed's page) with the rules
    of `load_ohlcv` (identical duplicates dropped; NaN, order, prices, OHLC consistency,
    volume, spacing refused). Row i is "line" i + 1 of `source` in the error. Unlike a
    file, a newest-first page is not reversed: it is refused as unsorted."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    values = {c: np.asarray(cols[c], dtype=np.float64) for c in OHLCV_COLUMNS}
    lines = np.arange(len(ts), dtype=np.int64) + 1
    if len(ts) == 0:
        raise DataValidationError(source, None, "no bars")
    ts, values, lines, _dropped = _drop_identical_duplicates(ts, values, lines)
    _validate_ohlcv(Path(source), ts, values, lines, timeframe_seconds(timeframe))
    return frame_from_arrays(ts, values)


def load_positions(path: str | Path) -> pd.Series:
    """Read a `timestamp, position` CSV into a float64 Series on a UTC DatetimeIndex.

    Refuses (DataValidationError with line) missing columns, unparseable values,
    NaN, positions outside [-1, 1], unsorted or duplicate timestamps.
    """
    import pandas as pd

    ts_ns, pos = read_positions_arrays(path)
    return pd.Series(pos, index=utc_index(ts_ns), name="position")


def read_positions_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """`load_positions` without pandas: (int64 UTC ns timestamps, float64 positions)."""
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(p, None, "no such file")
    source = CsvSource.open(p)
    header = source.header_fields()
    if header is None:
        raise DataValidationError(p, 1, "expected a header row 'timestamp, position'")
    names = normalized_header(p, header)
    missing = [c for c in ("timestamp", "position") if c not in names]
    if missing:
        raise DataValidationError(p, 1, f"missing column(s): {', '.join(missing)}")
    table = parse_csv(source, names, ["timestamp", "position"], 1, None)
    line_offset = 2
    # Every check runs; the earliest offending line is the one reported.
    errors: list[DataValidationError] = []
    ts_ns = pos = None
    try:
        ts_ns, _units = timestamps_from_column(p, table.column("timestamp"), line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    try:
        pos = float_column(p, table.column("position"), "position", line_offset)
    except DataValidationError as exc:
        errors.append(exc)
    if pos is not None:
        j = first_true(~((pos >= -1.0) & (pos <= 1.0)))  # NaN fails both comparisons
        if j is not None:
            reason = f"position {format_number(pos[j])} is outside [-1, 1]"
            errors.append(DataValidationError(p, j + line_offset, reason))
    if ts_ns is not None:
        try:
            _check_order(p, ts_ns, line_offset)
        except DataValidationError as exc:
            errors.append(exc)
    if errors:
        raise min(errors, key=lambda e: e.line if e.line is not None else 0)
    assert ts_ns is not None and pos is not None
    return ts_ns, pos


def frame_from_arrays(ts_ns: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Build the canonical frame (UTC ns DatetimeIndex `timestamp`, float64 OHLCV)."""
    import pandas as pd

    data = {c: np.asarray(cols[c], dtype=np.float64) for c in OHLCV_COLUMNS}
    return pd.DataFrame(data, index=utc_index(ts_ns), columns=list(OHLCV_COLUMNS))


def infer_timeframe(spacing_seconds: float | None) -> str | None:
    """The contract timeframe whose length equals the median spacing, else None."""
    if spacing_seconds is None:
        return None
    for name, secs in TIMEFRAMES.items():
        if secs == spacing_seconds:
            return name
    return None


def find_gaps(index: pd.DatetimeIndex, timeframe: str, limit: int = 1000,
              calendar: str = DEFAULT_CALENDAR) -> tuple[list[Gap], int]:
    """Gaps (spacing > one bar) in a sorted index: up to `limit` listed, total missing bars.

    Only bars the trading `calendar` expects count (app.analysis.calendars): an FX weekend
    or an exchange's nights and holidays are no gap."""
    import pandas as pd

    from app.analysis.calendars import missing_open_bars  # lazy: imports pandas

    step = timeframe_seconds(timeframe) * 1_000_000_000
    found, missing = missing_open_bars(index_ns(index), step, calendar, limit=limit)
    gaps = [Gap(pd.Timestamp(a, unit="ns", tz="UTC"), pd.Timestamp(b, unit="ns", tz="UTC"), m)
            for a, b, m in found]
    return gaps, missing


# --------------------------------------------------------------------------- validation


def _check_order(path: Path, ts_ns: np.ndarray, line_offset: int) -> None:
    if len(ts_ns) < 2:
        return
    step = np.diff(ts_ns)
    j = first_true(step <= 0)
    if j is None:
        return
    row = j + 1
    when, prev = format_ns(ts_ns[row]), format_ns(ts_ns[j])
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
) -> None:
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
        first(~np.isfinite(arr), prio,
              lambda j, a=arr, nm=name: f"{nm} is {format_number(a[j])} (NaN/inf)")
    if n >= 2:
        step = np.diff(ts_ns)
        first(
            np.concatenate(([False], step < 0)),
            10,
            lambda j: f"timestamps not sorted: {format_ns(ts_ns[j])} comes after "
            f"{format_ns(ts_ns[j - 1])} (line {lines[j - 1]})",
        )
        first(
            np.concatenate(([False], step == 0)),
            11,
            lambda j: f"duplicate timestamp {format_ns(ts_ns[j])} with different values "
            f"(same as line {lines[j - 1]})",
        )
    # Prices must be positive: returns and log features are undefined otherwise.
    for prio, name in enumerate(("open", "high", "low", "close"), start=15):
        arr = cols[name]
        first(arr <= 0, prio,
              lambda j, a=arr, nm=name: f"{nm} {format_number(a[j])} is not positive")
    first(h < lo, 20, lambda j: f"high {format_number(h[j])} is below low {format_number(lo[j])}")
    first((o < lo) | (o > h), 21,
          lambda j: f"open {format_number(o[j])} is outside {format_range(lo[j], h[j])}")
    first((c < lo) | (c > h), 22,
          lambda j: f"close {format_number(c[j])} is outside {format_range(lo[j], h[j])}")
    first(v < 0, 23, lambda j: f"volume {format_number(v[j])} is negative")
    if problems:
        line, _, reason = min(problems)
        raise DataValidationError(path, line, reason)

    if tf_seconds is not None and n >= 2:
        _check_spacing(path, ts_ns, tf_seconds, lines)


def _check_spacing(path: Path, ts_ns: np.ndarray, tf_seconds: int, lines: np.ndarray) -> None:
    step = np.diff(ts_ns)
    bar = tf_seconds * 1_000_000_000
    median = float(np.median(step))
    if median != bar:
        j = first_true(step != bar)
        row = (j if j is not None else 0) + 1
        raise DataValidationError(
            path,
            int(lines[row]),
            f"bar spacing does not match timeframe {timeframe_name(tf_seconds)}: median spacing is "
            f"{format_seconds(median / 1e9)}, this bar is {format_seconds(step[row - 1] / 1e9)} "
            "after the previous one",
        )
    # Gaps must be whole bars: an off-grid bar means the file mixes timeframes/offsets.
    off = step % bar
    j = first_true(off != 0)
    if j is not None:
        reason = (
            f"bar is {format_seconds(step[j] / 1e9)} after the previous one: not a whole "
            f"number of {timeframe_name(tf_seconds)} bars"
        )
        if tf_seconds >= 86_400 and min(off[j], bar - off[j]) == 3_600_000_000_000:
            # local-midnight daily bars (yfinance, exchange exports) shift an hour at DST
            reason += (
                "; local times across a daylight saving switch? give dates "
                "(2024-03-11) or UTC times"
            )
        raise DataValidationError(path, int(lines[j + 1]), reason)


