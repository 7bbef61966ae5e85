"""app.ml.data.importer: formats (CSV, Parquet, Binance ms/µs, zipped) and refusals by line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.analysis import calendars
from app.ml.data import importer
from app.ml.data.importer import (
    DataValidationError,
    load_ohlcv,
    load_positions,
    read_ohlcv_arrays,
    read_positions_arrays,
)
from app.ml.data.store import MarketDataStore

HEADER = "timestamp,open,high,low,close,volume"
T0 = 1704067200  # 2024-01-01T00:00:00Z
BINANCE_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


def ohlcv_rows(n: int, step: int = 3600, start: int = T0, ts=lambda t: str(t)) -> list[str]:
    rows = []
    for i in range(n):
        c = 100.0 + i
        rows.append(f"{ts(start + i * step)},{c},{c + 1.5},{c - 1.0},{c + 0.5},{10 + i}")
    return rows


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def kline(open_s: int, unit: str, close: float = 42050.2) -> str:
    m = {"ms": 1000, "us": 1_000_000}[unit]
    return (
        f"{open_s * m},42000.1,42100.0,41900.5,{close},12.5,{(open_s + 60) * m - 1},"
        "525000.0,100,6.1,256000.0,0"
    )


def assert_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert all(frame[c].dtype == np.float64 for c in frame.columns)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC"
    assert frame.index.name == "timestamp"
    assert frame.index.is_monotonic_increasing and frame.index.is_unique


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "unit"),
    [
        (str, ["s"]),
        (lambda t: str(t * 1000), ["ms"]),
        (lambda t: str(t * 1_000_000), ["us"]),
        (lambda t: f"{t}.0", ["s"]),
        (lambda t: pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"), ["iso"]),
        (lambda t: pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M:%S"), ["iso"]),
    ],
)
def test_csv_timestamp_styles(tmp_path: Path, fmt, unit: list[str]) -> None:
    path = write(tmp_path, "a.csv", [HEADER, *ohlcv_rows(5, ts=fmt)])
    result = load_ohlcv(path, "1h")
    assert_canonical(result.frame)
    assert result.timestamp_units == unit
    assert result.frame.index[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert result.frame.index[-1] == pd.Timestamp("2024-01-01 04:00", tz="UTC")
    assert result.frame["close"].tolist() == [100.5, 101.5, 102.5, 103.5, 104.5]
    assert result.format == "csv" and result.rows == 5 and result.gaps == []


def test_iso_offsets_are_converted_to_utc_and_header_is_lenient(tmp_path: Path) -> None:
    rows = ohlcv_rows(3, ts=lambda t: pd.Timestamp(t, unit="s", tz="UTC")
                      .tz_convert("Europe/Paris").isoformat())
    path = write(tmp_path, "a.csv", [" Timestamp, Open ,HIGH,low,close,volume,extra", *[
        r + ",x" for r in rows
    ]])
    frame = load_ohlcv(path, "1h").frame
    assert frame.index[0] == pd.Timestamp("2024-01-01T00:00Z")


@pytest.mark.parametrize(
    "stamps",
    [
        # the reader parses ISO text itself when the first value tells zoned/naive; any
        # other mix falls back to the text path, and the result must be the same
        ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00", "2024-01-01T02:00:00+00:00"],
        ["2024-01-01T00:00:00", "2024-01-01T01:00:00Z", "2024-01-01 02:00"],
        ["2024-01-01T01:00:00+01:00", "2024-01-01T01:00:00Z", "2024-01-01T03:30:00+0130"],
        ["2024-01-01", "2024-01-02", "2024-01-03T00:00:00Z"],
        [" 2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z ", "2024-01-01T02:00:00Z"],
        ["2024-01-01T00:00:00.000000001Z", "2024-01-01T01:00:00.5Z", "2024-01-01T02:00:00Z"],
    ],
)
def test_iso_timestamps_in_any_mix_read_as_utc(tmp_path: Path, stamps: list[str]) -> None:
    rows = [f"{t},1,2,0.5,1.5,3" for t in stamps]
    path = write(tmp_path, "a.csv", [HEADER, *rows])
    expected = pd.to_datetime([t.strip() for t in stamps], utc=True, format="ISO8601")
    result = load_ohlcv(path)
    assert list(result.frame.index) == list(expected)
    assert result.timestamp_units == ["iso"]
    arrays = read_ohlcv_arrays(path)
    assert arrays.ts_ns.tolist() == expected.as_unit("ns").asi8.tolist()
    assert arrays.timestamp_units == ["iso"]


def test_array_level_reads_what_the_frame_level_reads(tmp_path: Path) -> None:
    rows = ohlcv_rows(30, ts=lambda t: pd.Timestamp(t, unit="s", tz="UTC")
                      .strftime("%Y-%m-%dT%H:%M:%SZ"))
    path = write(tmp_path, "a.csv", [HEADER, *rows[::-1], rows[0]])  # newest first + a dup
    frame_level = load_ohlcv(path)
    arrays = read_ohlcv_arrays(path)
    assert arrays.reversed and frame_level.reversed and arrays.duplicates_dropped == 1
    assert arrays.ts_ns.tolist() == frame_level.frame.index.as_unit("ns").asi8.tolist()
    for col in importer.OHLCV_COLUMNS:
        assert arrays.cols[col].tolist() == frame_level.frame[col].tolist()
    assert arrays.lines.tolist() == frame_level.source_lines.tolist()
    assert (arrays.timeframe, arrays.spacing_seconds) == ("1h", 3600.0)
    pos_path = write(tmp_path, "p.csv", ["timestamp,position", "2024-01-01T00:00:00Z,0.5",
                                         "2024-01-01T01:00:00Z,-1"])
    ts_ns, pos = read_positions_arrays(pos_path)
    series = load_positions(pos_path)
    assert ts_ns.tolist() == series.index.as_unit("ns").asi8.tolist()
    assert pos.tolist() == series.tolist() == [0.5, -1.0]


def test_default_calendar_agrees_with_the_calendars_module() -> None:
    # importer names the default itself so that importing it does not import pandas
    assert importer.DEFAULT_CALENDAR == calendars.DEFAULT_CALENDAR


def test_headerless_six_column_csv_is_read_positionally(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", ohlcv_rows(4))
    assert load_ohlcv(path, "1h").rows == 4


def test_parquet_input(tmp_path: Path) -> None:
    idx = pd.date_range("2024-01-01", periods=6, freq="15min", tz="UTC", name="timestamp")
    df = pd.DataFrame(
        {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3}, index=idx
    )
    path = tmp_path / "a.parquet"
    df.reset_index().to_parquet(path)
    result = load_ohlcv(path, "15m")
    assert_canonical(result.frame)
    assert result.frame.index.equals(idx.as_unit("ns"))
    assert result.format == "parquet"


@pytest.mark.parametrize("unit", ["ms", "us"])
@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("zipped", [True, False])
def test_binance_klines(tmp_path: Path, unit: str, header: bool, zipped: bool) -> None:
    start = 1735689600  # 2025-01-01
    lines = ([BINANCE_HEADER] if header else []) + [kline(start + 60 * i, unit) for i in range(5)]
    csv = write(tmp_path, "BTCUSDT-1m-2025-01-01.csv", lines)
    path = csv
    if zipped:
        path = tmp_path / "BTCUSDT-1m-2025-01-01.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(csv, csv.name)
        csv.unlink()
    result = load_ohlcv(path, "1m")
    assert_canonical(result.frame)
    assert result.format == "binance"
    assert result.timestamp_units == [unit]
    assert result.frame.index[0] == pd.Timestamp("2025-01-01", tz="UTC")
    assert result.frame.index[-1] == pd.Timestamp("2025-01-01 00:04", tz="UTC")
    assert result.frame["close"].iloc[0] == 42050.2


def test_binance_months_across_the_ms_to_us_switch(tmp_path: Path) -> None:
    end_2024 = 1735689600 - 120
    lines = [kline(end_2024, "ms"), kline(end_2024 + 60, "ms")]
    lines += [kline(end_2024 + 120, "us"), kline(end_2024 + 180, "us")]
    result = load_ohlcv(write(tmp_path, "k.csv", lines), "1m")
    assert result.timestamp_units == ["ms", "us"]
    assert (np.diff(result.frame.index.asi8) == 60 * 10**9).all()


def test_binance_error_lines_headerless_and_with_header(tmp_path: Path) -> None:
    rows = [kline(1735689600 + 60 * i, "us") for i in range(4)]
    rows[2] = kline(1735689600 + 120, "us", close=50000.0)  # close above high
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "k.csv", rows), "1m")
    assert info.value.line == 3  # header-less: first row is line 1
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "k.csv", [BINANCE_HEADER, *rows]), "1m")
    assert info.value.line == 4
    assert "close 50000.0 is outside" in info.value.reason


def test_zip_with_two_files_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    with pytest.raises(DataValidationError, match="exactly one CSV"):
        load_ohlcv(path, "1m")


def test_gaps_are_reported_not_refused(tmp_path: Path) -> None:
    rows = ohlcv_rows(10)
    del rows[3:6]  # 3 missing bars after 02:00
    del rows[-1:]
    rows += ohlcv_rows(1, start=T0 + 3600 * 12)  # 2 more missing before 12:00
    result = load_ohlcv(write(tmp_path, "g.csv", [HEADER, *rows]), "1h")
    assert result.rows == 7
    assert [(g.after.hour, g.before.hour, g.missing_bars) for g in result.gaps] == [
        (2, 6, 3),
        (8, 12, 3),
    ]
    assert result.missing_bars == 6


# ----------------------------------------------------------------------------- refusals


def _rows_with(i: int, row: str, n: int = 6) -> list[str]:
    rows = ohlcv_rows(n)
    rows[i] = row
    return [HEADER, *rows]


TS3 = T0 + 3 * 3600
REFUSALS = [
    # (lines, expected line, reason fragment)
    (["timestamp,open,high,low,volume", *ohlcv_rows(2)], 1, "missing column(s): close"),
    # `time` is a timestamp alias, so the OHLCV names are what is missing
    (["time,o,h,l,c,v", *ohlcv_rows(2)], 1, "missing column(s): open, high, low"),
    (["when,open,high,low,close,volume", *ohlcv_rows(2)], 1, "missing column(s): timestamp"),
    (_rows_with(3, f"{TS3},103,104.5,102,abc,13"), 5, "cannot parse close value 'abc'"),
    (_rows_with(3, "yesterday,103,104.5,102,103.5,13"), 5, "cannot parse timestamp 'yesterday'"),
    (_rows_with(3, f"{TS3},103,104.5,102,,13"), 5, "missing value in column 'close'"),
    (_rows_with(3, f"{TS3},103,104.5,102,103.5,nan"), 5, "volume is nan"),
    (_rows_with(3, f"{TS3},103,inf,102,103.5,13"), 5, "high is inf"),
    (_rows_with(3, ""), 5, "empty line"),
    (_rows_with(3, f"{TS3},103,104.5,102,103.5"), 5, "expected 6 columns, found 5"),
    (_rows_with(3, f"{T0 + 3600},103,104.5,102,103.5,13"), 5, "not sorted"),
    (_rows_with(3, f"{T0 + 7200},103,104.5,102,103.5,13"), 5, "duplicate timestamp"),
    (_rows_with(3, f"{TS3},103,101,102,101.5,13"), 5, "high 101.0 is below low 102.0"),
    (_rows_with(3, f"{TS3},105,104.5,102,103.5,13"), 5, "open 105.0 is outside"),
    (_rows_with(3, f"{TS3},103,104.5,102,101.5,13"), 5, "close 101.5 is outside"),
    (_rows_with(3, f"{TS3},103,104.5,102,103.5,-1"), 5, "volume -1.0 is negative"),
    (_rows_with(3, f"{TS3 - 1800},103,104.5,102,103.5,13"), 5, "not a whole number of 1h bars"),
    ([HEADER, *ohlcv_rows(6, step=300)], 3, "median spacing is 5m"),
    (["1704067200,1", "1704070800,2"], 1, "no header row and 2 columns"),
]


@pytest.mark.parametrize(("lines", "line", "reason"), REFUSALS)
def test_refusals_name_line_and_reason(
    tmp_path: Path, lines: list[str], line: int, reason: str
) -> None:
    path = write(tmp_path, "bad.csv", lines)
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(path, "1h")
    err = info.value
    assert err.file == str(path)
    assert err.line == line, str(err)
    assert reason in err.reason, str(err)
    assert str(err).startswith(f"{path}:{line}: ")


def test_earliest_problem_is_reported(tmp_path: Path) -> None:
    rows = ohlcv_rows(8)
    rows[6] = f"{T0 + 6 * 3600},1,2,3,4,5"  # high < low at line 8
    rows[4] = f"{T0 + 4 * 3600},103,104.5,102,zzz,13"  # unparseable at line 6
    rows[5] = f"{T0 + 5 * 3600},103,104.5,102,103.5,-4"  # negative volume at line 7
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "bad.csv", [HEADER, *rows]), "1h")
    assert info.value.line == 6


def test_error_line_is_exact_deep_in_a_large_file(tmp_path: Path) -> None:
    # ~300k rows spans several parser blocks: line numbers must survive block edges
    n = 300_000
    rows = ohlcv_rows(n, step=60)
    rows[n - 7] = rows[n - 7].rsplit(",", 1)[0] + ",-5"
    path = write(tmp_path, "big.csv", [HEADER, *rows])
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(path, "1m")
    assert info.value.line == n - 7 + 2
    rows[n - 7] = rows[n - 7].rsplit(",", 1)[0] + ",5"
    rows[n - 3] = rows[n - 3] + ",extra"
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "big.csv", [HEADER, *rows]), "1m")
    assert info.value.line == n - 3 + 2
    assert "expected 6 columns, found 7" in info.value.reason


def test_parquet_refusal_names_the_row(tmp_path: Path) -> None:
    idx = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC", name="timestamp")
    df = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3}, index=idx)
    df.iloc[2, df.columns.get_loc("low")] = 3.0
    path = tmp_path / "bad.parquet"
    df.reset_index().to_parquet(path)
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(path, "1h")
    assert info.value.line == 3
    assert "below low" in info.value.reason


def test_no_timeframe_means_inferred_and_spacing_not_enforced(tmp_path: Path) -> None:
    rows = ohlcv_rows(5, step=300)
    result = load_ohlcv(write(tmp_path, "a.csv", [HEADER, *rows]))
    assert result.timeframe == "5m"
    assert result.spacing_seconds == 300
    irregular = ohlcv_rows(3, step=700)
    assert load_ohlcv(write(tmp_path, "b.csv", [HEADER, *irregular])).timeframe is None


# ----------------------------------------------------------------------------- positions


def test_load_positions(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", ["timestamp,position", f"{T0},1", f"{T0 + 3600},-0.5"])
    series = load_positions(path)
    assert series.tolist() == [1.0, -0.5]
    assert series.index[1] == pd.Timestamp("2024-01-01 01:00", tz="UTC")


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        (["timestamp,pos", f"{T0},1"], 1, "missing column(s): position"),
        (["timestamp,position", f"{T0},1", f"{T0 + 60},1.5"], 3, "outside [-1, 1]"),
        (["timestamp,position", f"{T0},1", f"{T0 + 60},nan"], 3, "outside [-1, 1]"),
        (["timestamp,position", f"{T0},1", f"{T0 + 60},long"], 3, "cannot parse position"),
        (["timestamp,position", f"{T0},1", f"{T0},0"], 3, "duplicate timestamp"),
    ],
)
def test_positions_refusals(tmp_path: Path, lines: list[str], line: int, reason: str) -> None:
    with pytest.raises(DataValidationError) as info:
        load_positions(write(tmp_path, "p.csv", lines))
    assert info.value.line == line
    assert reason in info.value.reason


# ----------------------------------------------------------------------------- into the store


def test_overlapping_imports_merge_without_duplicates(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path / "store")
    first = load_ohlcv(write(tmp_path, "a.csv", [HEADER, *ohlcv_rows(10)]), "1h")
    # second file: bars 6..14, with bar 7 revised
    second_rows = ohlcv_rows(15)[6:]
    second_rows[1] = f"{T0 + 7 * 3600},107,109,106,108.9,99"
    second = load_ohlcv(write(tmp_path, "b.csv", [HEADER, *second_rows]), "1h")
    store.merge("BTCUSDT", "1h", first.frame)
    report = store.merge("BTCUSDT", "1h", second.frame)
    assert (report.added, report.overlapping, report.changed) == (5, 4, 1)
    frame = store.read("BTCUSDT", "1h")
    assert len(frame) == 15 and frame.index.is_unique
    assert frame.loc["2024-01-01 07:00", "close"].item() == 108.9
    assert_canonical(frame)


def test_positions_earliest_problem_wins(tmp_path: Path) -> None:
    lines = ["timestamp,position", f"{T0},1", f"{T0},0", f"{T0 + 60},0", f"{T0 + 120},7"]
    with pytest.raises(DataValidationError) as info:
        load_positions(write(tmp_path, "p.csv", lines))
    assert (info.value.line, "duplicate" in info.value.reason) == (3, True)


def test_short_first_data_row(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "s.csv", [HEADER, f"{T0},1,2", *ohlcv_rows(2)]), "1h")
    assert info.value.line == 2
    assert "expected 6 columns, found 3" in info.value.reason
