"""`clm data import|list` and `clm backtest` through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.ml.backtest import run_backtest
from app.ml.scoring import promotion_score

CLM = Path(sys.executable).with_name("clm")
T0 = 1704067200  # 2024-01-01T00:00:00Z


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `clm` subprocess: no CLM_* from outside, state in tmp_path."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CLM_")}
    e["CLM_VAR_DIR"] = str(tmp_path / "var")
    e["CLM_DATA_DIR"] = str(tmp_path / "data")
    return e


def clm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLM), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def prices_csv(path: Path, n: int, start: int = T0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    lines = ["timestamp,open,high,low,close,volume"]
    for i, c in enumerate(close):
        ts = pd.Timestamp(start + 3600 * i, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{ts},{c:.6f},{c * 1.01:.6f},{c * 0.99:.6f},{c:.6f},{i + 1}")
    path.write_text("\n".join(lines) + "\n")
    return np.round(close, 6)


def positions_csv(path: Path, positions: list[float], start: int = T0) -> None:
    lines = ["timestamp,position"] + [f"{start + 3600 * i},{p}" for i, p in enumerate(positions)]
    path.write_text("\n".join(lines) + "\n")


def test_import_then_list(tmp_path: Path, env: dict[str, str]) -> None:
    a = tmp_path / "a.csv"
    prices_csv(a, 48)
    r = clm(env, "data", "import", str(a), "--symbol", "btcusdt", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    assert "48 rows" in r.stdout and "48 added, 0 overlapping" in r.stdout
    assert (tmp_path / "data" / "BTCUSDT" / "1h.parquet").is_file()

    b = tmp_path / "b.csv"
    prices_csv(b, 30, start=T0 + 3600 * 40)  # 8 bars overlap
    r = clm(env, "data", "import", str(b), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 0, r.stderr
    assert "22 added, 8 overlapping" in r.stdout
    assert "now 70 rows" in r.stdout

    r = clm(env, "data", "list", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {
        "items": [
            {
                "symbol": "BTCUSDT",
                "timeframe": "1h",
                "first": "2024-01-01T00:00:00Z",
                "last": "2024-01-03T21:00:00Z",
                "rows": 70,
                "gaps": 0,
                "missing_bars": 0,
                "calendar": "24/7",
            }
        ]
    }
    r = clm(env, "data", "list")
    assert "BTCUSDT" in r.stdout and "70" in r.stdout


def test_import_binance_zip(tmp_path: Path, env: dict[str, str]) -> None:
    start_us = 1735689600 * 1_000_000
    rows = [
        f"{start_us + i * 60_000_000},1.0,1.2,0.9,1.1,5.0,{start_us + (i + 1) * 60_000_000 - 1},"
        "5.5,3,2.0,2.2,0"
        for i in range(10)
    ]
    path = tmp_path / "ETHUSDT-1m-2025-01-01.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ETHUSDT-1m-2025-01-01.csv", "\n".join(rows) + "\n")
    r = clm(env, "data", "import", str(path), "--symbol", "ETHUSDT", "--timeframe", "1m")
    assert r.returncode == 0, r.stderr
    assert "binance" in r.stdout and "2025-01-01T00:00:00Z" in r.stdout


def test_bad_file_is_refused_with_line_and_nothing_stored(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "bad.csv"
    prices_csv(path, 10)
    lines = path.read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0] + ",-3"  # negative volume on line 7
    path.write_text("\n".join(lines) + "\n")
    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert r.returncode == 2
    assert r.stderr.strip() == f"{path}:7: volume -3.0 is negative"
    assert r.stdout == ""
    assert not list((tmp_path / "data").rglob("*.parquet"))

    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "4h")
    assert r.returncode == 2  # the negative volume is found before spacing is judged
    r = clm(env, "data", "import", str(path), "--symbol", "BTCUSDT", "--timeframe", "2h")
    assert r.returncode == 2 and "2h" in r.stderr
    r = clm(env, "data", "import", str(tmp_path / "nope.csv"), "--symbol", "X", "--timeframe", "1h")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_backtest_json_matches_library(tmp_path: Path, env: dict[str, str]) -> None:
    prices = tmp_path / "p.csv"
    close = prices_csv(prices, 200)
    pos = [float(x) for x in np.tile([1, 1, 1, 0, -1, -1, 0.5, 0], 25)]
    positions = tmp_path / "pos.csv"
    positions_csv(positions, pos)
    r = clm(env, "backtest", "--prices", str(prices), "--positions", str(positions),
            "--fee-bps", "5", "--slippage-bps", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # JSON only: the whole stdout is one object
    expected = run_backtest(close, pos, fee_bps=5, slippage_bps=1, periods_per_year=8760).metrics
    expected["promotion_score"] = promotion_score(expected)
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key

    r = clm(env, "backtest", "--prices", str(prices), "--positions", str(positions),
            "--periods-per-year", "252")
    assert r.returncode == 0, r.stderr
    assert "promotion_score" in r.stdout and "periods/year     252" in r.stdout


def test_backtest_misaligned_positions_name_the_timestamp(
    tmp_path: Path, env: dict[str, str]
) -> None:
    prices = tmp_path / "p.csv"
    prices_csv(prices, 10)
    positions = tmp_path / "pos.csv"
    positions_csv(positions, [0.0] * 10)
    lines = positions.read_text().splitlines()
    lines[5] = f"{T0 + 3600 * 4 + 1800},0"  # 04:30 instead of 04:00 on line 6
    positions.write_text("\n".join(lines) + "\n")
    r = clm(env, "backtest", "--prices", str(prices), "--positions", str(positions))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{positions}:6: ")
    assert "2024-01-01T04:00:00Z" in r.stderr and "2024-01-01T04:30:00Z" in r.stderr

    positions_csv(positions, [0.0] * 9)
    r = clm(env, "backtest", "--prices", str(prices), "--positions", str(positions))
    assert r.returncode == 2 and "2024-01-01T09:00:00Z (index 9) has no position" in r.stderr


def test_backtest_bad_positions_file(tmp_path: Path, env: dict[str, str]) -> None:
    prices = tmp_path / "p.csv"
    prices_csv(prices, 5)
    positions = tmp_path / "pos.csv"
    positions_csv(positions, [0, 1, 2, 0, 0])
    r = clm(env, "backtest", "--prices", str(prices), "--positions", str(positions), "--json")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip() == f"{positions}:4: position 2.0 is outside [-1, 1]"


def test_backtest_does_not_import_web_queue_or_ml_stacks(
    tmp_path: Path, env: dict[str, str]
) -> None:
    prices = tmp_path / "p.csv"
    prices_csv(prices, 20)
    positions = tmp_path / "pos.csv"
    positions_csv(positions, [1.0] * 20)
    # -X importtime lists every module the process imported, on stderr (the command ends
    # with os._exit, so nothing can be asked of the process after it ran)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "app.cli", "backtest", "--prices",
         str(prices), "--positions", str(positions), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trades"] == 1
    loaded = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
              if line.startswith("import time:")}
    assert "app.ml.backtest" in loaded and "pyarrow.csv" in loaded  # the listing works
    # pandas and pyarrow.compute: the start-up of `clm backtest` (issue 17)
    banned = {"flask", "celery", "sqlalchemy", "xgboost", "lightgbm", "kombu", "optuna",
              "pandas", "pyarrow.compute", "app.analysis.calendars"}
    assert sorted(banned & loaded) == []
