"""Real-world OHLCV files: the header, delimiter, ordering and Parquet variants people
actually have (Yahoo, exchange exports, pandas `to_parquet`), what is accepted as
unambiguous and what is refused by line — and series that must not mix grids."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from app.ml.data.importer import DataValidationError, load_ohlcv
from app.ml.data.store import MarketDataStore, SeriesMismatch

T0 = 1704067200  # 2024-01-01T00:00:00Z


def rows(n: int, step: int = 3600, start: int = T0, sep: str = ",", ts=str) -> list[str]:
    out = []
    for i in range(n):
        c = 100.0 + i
        vals = [ts(start + i * step), c, c + 1.5, c - 1.0, c + 0.5, 10 + i]
        out.append(sep.join(str(v) for v in vals))
    return out


def iso(t: int) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")


def write(tmp_path: Path, name: str, lines: list[str], tail: str = "\n") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + tail)
    return path


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "header",
    [
        "date,open,high,low,close,volume",
        "Date,Open,High,Low,Close,Volume",
        "datetime,open,high,low,close,volume",
        "time,open,high,low,close,volume",
        "Open Time,Open,High,Low,Close,Volume",
    ],
)
def test_common_timestamp_column_names_are_accepted(tmp_path: Path, header: str) -> None:
    result = load_ohlcv(write(tmp_path, "a.csv", [header, *rows(4, ts=iso)]), "1h")
    assert result.rows == 4
    assert result.frame.index[0] == pd.Timestamp("2024-01-01", tz="UTC")


def test_yahoo_daily_with_adj_close_uses_close(tmp_path: Path) -> None:
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i in range(5):
        day = pd.Timestamp(T0 + i * 86400, unit="s").strftime("%Y-%m-%d")
        lines.append(f"{day},100,110,90,105,99.5,1000")
    result = load_ohlcv(write(tmp_path, "yahoo.csv", lines), "1d")
    assert result.frame["close"].tolist() == [105.0] * 5


def test_separate_date_and_time_columns_are_refused_clearly(tmp_path: Path) -> None:
    lines = ["Date,Time,Open,High,Low,Close,Volume", "2024-01-01,00:00,1,2,0.5,1.5,3"]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "mt4.csv", lines), "1h")
    assert info.value.line == 1
    assert "date" in info.value.reason and "time" in info.value.reason


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_separated_files(tmp_path: Path, sep: str) -> None:
    header = sep.join(["timestamp", "open", "high", "low", "close", "volume"])
    result = load_ohlcv(write(tmp_path, "a.csv", [header, *rows(5, sep=sep)]), "1h")
    assert result.rows == 5
    assert result.frame["close"].iloc[-1] == 104.5


def test_decimal_comma_is_refused_with_a_hint(tmp_path: Path) -> None:
    lines = ["timestamp;open;high;low;close;volume", f"{T0};100,5;101;99;100;3"]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "eu.csv", lines), "1h")
    assert info.value.line == 2
    assert "decimal comma" in info.value.reason


# ----------------------------------------------------------------------------- blank lines


@pytest.mark.parametrize("tail", ["\n\n", "\n\n\n", "\r\n\r\n"])
def test_trailing_blank_lines_are_ignored(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "a.csv"
    lines = ["timestamp,open,high,low,close,volume", *rows(4)]
    newline = "\r\n" if "\r" in tail else "\n"
    path.write_bytes((newline.join(lines) + tail).encode())
    assert load_ohlcv(path, "1h").rows == 4


def test_blank_line_in_the_middle_is_still_refused(tmp_path: Path) -> None:
    body = rows(4)
    lines = ["timestamp,open,high,low,close,volume", *body[:2], "", *body[2:]]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "a.csv", lines), "1h")
    assert (info.value.line, info.value.reason) == (4, "empty line")


# ----------------------------------------------------------------------------- order


def test_newest_first_file_is_reversed(tmp_path: Path) -> None:
    body = rows(6)[::-1]
    header = "timestamp,open,high,low,close,volume"
    result = load_ohlcv(write(tmp_path, "desc.csv", [header, *body]))
    assert result.frame.index.is_monotonic_increasing
    assert result.frame["close"].tolist() == [100.5, 101.5, 102.5, 103.5, 104.5, 105.5]
    assert result.reversed


def test_error_line_in_a_newest_first_file_is_the_physical_line(tmp_path: Path) -> None:
    body = rows(6)[::-1]  # line 2 holds the newest bar
    body[1] = f"{T0 + 4 * 3600},103,101,102,101.5,13"  # high < low, line 3
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "desc.csv", ["timestamp,open,high,low,close,volume", *body]))
    assert info.value.line == 3
    assert "below low" in info.value.reason


def test_identical_duplicate_rows_are_dropped(tmp_path: Path) -> None:
    body = rows(6)
    lines = ["timestamp,open,high,low,close,volume", *body[:4], body[3], body[3], *body[4:]]
    result = load_ohlcv(write(tmp_path, "dup.csv", lines), "1h")
    assert result.rows == 6
    assert result.duplicates_dropped == 2


def test_conflicting_duplicate_is_refused_naming_both_lines(tmp_path: Path) -> None:
    body = rows(6)
    conflicting = f"{T0 + 3 * 3600},103,104.5,102,103.9,13"
    lines = ["timestamp,open,high,low,close,volume", *body[:4], conflicting, *body[4:]]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "dup.csv", lines), "1h")
    assert info.value.line == 6
    assert "duplicate timestamp" in info.value.reason and "line 5" in info.value.reason
    assert "different values" in info.value.reason


def test_shuffled_rows_are_still_refused(tmp_path: Path) -> None:
    body = rows(6)
    body[2], body[3] = body[3], body[2]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "s.csv", ["timestamp,open,high,low,close,volume", *body]))
    assert info.value.line == 5 and "not sorted" in info.value.reason


# ----------------------------------------------------------------------------- prices


@pytest.mark.parametrize("price", ["0", "-5"])
def test_non_positive_prices_are_refused(tmp_path: Path, price: str) -> None:
    body = rows(5)
    body[2] = f"{T0 + 2 * 3600},{price},{price},{price},{price},0"
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "z.csv", ["timestamp,open,high,low,close,volume", *body]))
    assert info.value.line == 4
    assert "not positive" in info.value.reason


def test_zero_volume_bars_are_accepted(tmp_path: Path) -> None:
    body = rows(5)
    body[2] = f"{T0 + 2 * 3600},102,102,102,102,0"
    lines = ["timestamp,open,high,low,close,volume", *body]
    assert load_ohlcv(write(tmp_path, "z.csv", lines), "1h").rows == 5


# ----------------------------------------------------------------------------- parquet


def _frame(n: int = 6) -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    return pd.DataFrame(
        {"open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 2.0}, index=idx
    )


@pytest.mark.parametrize("name", [None, "date", "Date", "datetime", "open_time"])
def test_parquet_with_a_datetime_index_of_any_name(tmp_path: Path, name: str | None) -> None:
    df = _frame().rename_axis(name)
    path = tmp_path / "a.parquet"
    df.to_parquet(path)
    result = load_ohlcv(path, "1h")
    assert result.rows == 6
    assert result.frame.index[0] == pd.Timestamp("2024-01-01", tz="UTC")


def test_parquet_with_capitalized_columns_and_float32(tmp_path: Path) -> None:
    df = _frame().astype("float32").rename(columns=str.capitalize).rename_axis("Date")
    path = tmp_path / "a.parquet"
    df.reset_index().to_parquet(path, index=False)
    assert load_ohlcv(path, "1h").frame["close"].iloc[0] == 100.5


# ----------------------------------------------------------------------------- grids


def test_off_grid_file_reports_its_offset(tmp_path: Path) -> None:
    lines = ["timestamp,open,high,low,close,volume", *rows(4, start=T0 + 1800)]
    result = load_ohlcv(write(tmp_path, "half.csv", lines), "1h")
    assert result.grid_offset_seconds == 1800


def test_merging_a_series_on_another_grid_is_refused(tmp_path: Path) -> None:
    store = MarketDataStore(tmp_path / "store")
    header = "timestamp,open,high,low,close,volume"
    on_grid = load_ohlcv(write(tmp_path, "a.csv", [header, *rows(10)]), "1h")
    half = load_ohlcv(write(tmp_path, "b.csv", [header, *rows(10, start=T0 + 1800)]), "1h")
    store.merge("BTCUSDT", "1h", on_grid.frame)
    with pytest.raises(SeriesMismatch, match="30m"):
        store.merge("BTCUSDT", "1h", half.frame)
    assert len(store.read("BTCUSDT", "1h")) == 10  # nothing stored


def test_daily_bars_across_a_dst_switch_get_a_hint(tmp_path: Path) -> None:
    lines = ["Date,Open,High,Low,Close,Volume"] + [
        f"{d},1,2,0.5,1.5,3"
        for d in ("2024-03-08 00:00:00-05:00", "2024-03-11 00:00:00-04:00",
                  "2024-03-12 00:00:00-04:00", "2024-03-13 00:00:00-04:00")
    ]
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(write(tmp_path, "yf.csv", lines), "1d")
    assert info.value.line == 3
    assert "71h after the previous one" in info.value.reason
    assert "daylight saving" in info.value.reason


# ------------------------------------------------------------------ whole-file refusals
@pytest.mark.parametrize(("name", "content", "line", "reason"), [
    ("header-only.csv", "timestamp,open,high,low,close,volume\n", 2,
     "no data rows after the header"),
    ("empty.csv", "", 1, "file is empty"),
    ("prices.xlsx", "PK\x03\x04 not really a workbook", 1, "unsupported file type '.xlsx'"),
    ("prices.json", '[{"timestamp": 1}]', 1, "unsupported file type '.json'"),
    ("broken.parquet", "PAR1 this is not parquet", 1, "not a readable Parquet file"),
])
def test_whole_file_problems_name_a_line(tmp_path: Path, name: str, content: str, line: int,
                                         reason: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataValidationError) as info:
        load_ohlcv(path, "1h")
    assert info.value.line == line
    assert info.value.reason.startswith(reason), info.value.reason
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_csv_content_without_or_with_a_txt_suffix_is_read(tmp_path: Path) -> None:
    header = ["timestamp,open,high,low,close,volume"]
    for name in ("prices", "prices.txt"):
        assert load_ohlcv(write(tmp_path, name, header + rows(30)), "1h").rows == 30
