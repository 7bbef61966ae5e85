"""`clm data import` on real-world files: what it says about reordering, dropped
duplicates and off-grid bars, and refusing a merge that would interleave two grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_data_backtest import cli_env, clm

T0 = 1704067200  # 2024-01-01T00:00:00Z
HEADER = "timestamp,open,high,low,close,volume"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def rows(n: int, start: int = T0) -> list[str]:
    return [f"{start + 3600 * i},{100 + i},{101 + i},{99 + i},{100.5 + i},{i}" for i in range(n)]


def test_import_reports_reversal_and_dropped_duplicates(
    tmp_path: Path, env: dict[str, str]
) -> None:
    body = rows(24)
    body.insert(5, body[5])  # an identical duplicate
    path = tmp_path / "desc.csv"
    path.write_text("\n".join([HEADER, *body[::-1]]) + "\n\n")
    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    assert "24 rows" in r.stdout
    assert "newest first" in r.stdout
    assert "1 identical duplicate row(s) dropped" in r.stdout


def test_off_grid_merge_is_refused_naming_file_and_line(
    tmp_path: Path, env: dict[str, str]
) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("\n".join([HEADER, *rows(24)]) + "\n")
    b.write_text("\n".join([HEADER, *rows(24, start=T0 + 1800)]) + "\n")
    r = clm(env, "data", "import", str(a), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    r = clm(env, "data", "import", str(b), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 2
    assert r.stderr.startswith(f"{b}:2: "), r.stderr
    assert "30m off the stored BTCUSDT 1h grid" in r.stderr
    r = clm(env, "data", "list", "--json")
    assert '"rows": 24' in r.stdout  # nothing from b was stored


def test_off_grid_file_is_noted(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "half.csv"
    path.write_text("\n".join([HEADER, *rows(24, start=T0 + 1800)]) + "\n")
    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    assert "start 30m after the UTC 1h grid" in r.stdout


def test_list_shows_gaps(tmp_path: Path, env: dict[str, str]) -> None:
    body = rows(24)
    del body[5:8]  # an exchange outage: 3 missing bars
    path = tmp_path / "gappy.csv"
    path.write_text("\n".join([HEADER, *body]) + "\n")
    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    r = clm(env, "data", "list", "--json")
    item = json.loads(r.stdout)["items"][0]
    assert (item["rows"], item["gaps"], item["missing_bars"]) == (21, 1, 3)
    r = clm(env, "data", "list")
    assert "missing" in r.stdout.splitlines()[0]
    assert r.stdout.splitlines()[1].split()[-3:] == ["1", "3", "24/7"]
