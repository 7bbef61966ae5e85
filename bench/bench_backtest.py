"""Throughput of `app.ml.backtest.run_backtest` vs the pure-Python reference loop, and
`clm backtest` as a whole process vs backtesting.py.

Run: .venv/bin/python bench/bench_backtest.py [--only core|cli] [--bars N] [--baseline-bars M]
     [--cli-bars K] [--pairs P]

core (in-process):
Times run_backtest on N bars (default 10M, best of 3) for three position patterns —
runs of ~20 bars (a typical model), ~3 bars, and a random value every bar (worst
case: ~80% of bars start a new trade) — and the
literal pure-Python reference (tests/backtest_reference.py) on an M-bar slice
(default 200k, best of 1), scaled to bars/s, and prints the ratio.
Fees are 0 in the timed runs: with millions of trades any fee drives equity below
1e-308, where denormal arithmetic is many times slower — a degenerate account, not
the common case. The correctness guard at the end uses a fee.

cli (whole process, start-up included): writes a K-bar 5m OHLCV CSV (default 300k) and
a positions CSV (runs of ~20 bars), then runs, alternating P times (default 5),
`clm backtest --prices … --positions …` and bench/backtestingpy_follow.py (backtesting.py
following the same positions, reading the same files with pandas' pyarrow engine).
Prints wall and CPU seconds (the child's user + sys: steadier on a shared box) for both,
the ratios of medians and of bests, and both tools' trade counts (they must agree).
Needs the optional `backtesting` package (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml.backtest import run_backtest
from tests.backtest_reference import reference_backtest


def make_data(n: int, mean_run: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, n)))
    if mean_run <= 1:
        pos = rng.choice(np.array([-1.0, -0.5, 0.0, 0.5, 1.0]), n)
    else:
        # change points with probability 1/mean_run, values drawn per run
        change = rng.random(n) < 1.0 / mean_run
        change[0] = True
        run_id = np.cumsum(change) - 1
        values = rng.choice(np.array([-1.0, 0.0, 1.0]), run_id[-1] + 1)
        pos = values[run_id]
    return close, pos


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_csvs(folder: Path, n: int) -> tuple[Path, Path]:
    """A 5m OHLCV file and a positions file (runs of ~20 bars) of n bars, ISO timestamps."""
    close, pos = make_data(n, 20.0)
    stamps = np.datetime_as_string(
        np.datetime64("2020-09-13T12:25:00") + np.arange(n) * np.timedelta64(300, "s"))
    opens = np.concatenate(([close[0]], close[:-1]))
    high, low = np.maximum(opens, close) * 1.001, np.minimum(opens, close) * 0.999
    prices, positions = folder / "prices.csv", folder / "positions.csv"
    with prices.open("w") as fh:
        fh.write("timestamp,open,high,low,close,volume\n")
        fh.writelines(f"{t}Z,{o!r},{h!r},{lo!r},{c!r},1.0\n" for t, o, h, lo, c in
                      zip(stamps, opens.tolist(), high.tolist(), low.tolist(), close.tolist(),
                          strict=True))
    with positions.open("w") as fh:
        fh.write("timestamp,position\n")
        fh.writelines(f"{t}Z,{p!r}\n" for t, p in zip(stamps, pos.tolist(), strict=True))
    return prices, positions


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, child CPU s, stdout) of one command run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out


def whole_process(bars: int, pairs: int) -> None:
    try:
        import backtesting  # noqa: F401  (only to say early that the baseline is missing)
    except ImportError:
        print("cli: the baseline needs backtesting.py: pip install -e '.[bench]'")
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).with_name("clm")
    clm = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        prices, positions = write_csvs(Path(tmp), bars)
        ours = [*clm, "backtest", "--prices", str(prices), "--positions", str(positions)]
        theirs = [sys.executable, str(ROOT / "bench" / "backtestingpy_follow.py"),
                  str(prices), str(positions)]
        clm_runs, bt_runs = [], []
        for _ in range(pairs):  # alternating, so both see the same load
            wall, cpu, clm_out = timed_process(ours, env)
            clm_runs.append((wall, cpu))
            wall, cpu, bt_out = timed_process(theirs, env)
            bt_runs.append((wall, cpu))
    clm_trades = next(line.split()[1] for line in clm_out.splitlines()
                      if line.startswith("trades"))
    bt_trades = next(line.split()[-1] for line in bt_out.splitlines()
                     if line.startswith("# Trades"))
    load = os.getloadavg()[0]
    print(f"\nwhole process, {bars:,} bars, {pairs} alternating pairs, load average {load:.2f}")
    print(f"trades: clm {clm_trades}, backtesting.py {bt_trades}")
    print(f"{'':<16} {'wall med':>9} {'wall best':>10} {'cpu med':>8} {'cpu best':>9}")
    for label, runs in (("clm backtest", clm_runs), ("backtesting.py", bt_runs)):
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{label:<16} {statistics.median(walls):>9.3f} {min(walls):>10.3f} "
              f"{statistics.median(cpus):>8.3f} {min(cpus):>9.3f}")
    ratios = [b[0] / c[0] for c, b in zip(clm_runs, bt_runs, strict=True)]
    cpu_ratios = [b[1] / c[1] for c, b in zip(clm_runs, bt_runs, strict=True)]
    print(f"backtesting.py / clm, wall: median of pairs {statistics.median(ratios):.1f}x "
          f"(pairs {min(ratios):.1f}-{max(ratios):.1f}x), "
          f"best/best {min(w for w, _ in bt_runs) / min(w for w, _ in clm_runs):.1f}x")
    print(f"backtesting.py / clm, cpu:  median of pairs {statistics.median(cpu_ratios):.1f}x "
          f"(pairs {min(cpu_ratios):.1f}-{max(cpu_ratios):.1f}x)   target >= 10x")


def in_process(args: argparse.Namespace) -> None:
    rows: list[tuple[str, int, float]] = []
    cases = (
        ("vectorized, runs of ~20 bars", 20.0),
        ("vectorized, runs of ~3 bars", 3.0),
        ("vectorized, random each bar", 1.0),
    )
    for label, mean_run in cases:
        close, pos = make_data(args.bars, mean_run)
        secs = best_of(lambda c=close, p=pos: run_backtest(c, p, fee_bps=0.0), args.repeats)
        rows.append((label, args.bars, secs))
        del close, pos

    close, pos = make_data(args.baseline_bars, 20.0)
    cl, ps = close.tolist(), pos.tolist()
    secs_ref = best_of(lambda: reference_backtest(cl, ps, fee_bps=5), 1)
    rows.append(("pure-Python reference loop", args.baseline_bars, secs_ref))

    # correctness guard so the figures are for the same computation
    fast = run_backtest(close, pos, fee_bps=5)
    slow = reference_backtest(cl, ps, fee_bps=5)
    assert np.allclose(fast.equity, slow["equity"], rtol=1e-9), "mismatch vs reference"

    ref_rate = args.baseline_bars / secs_ref
    # 'vs ref' divides by the reference loop's bars/s measured on its slice
    load = os.getloadavg()[0]
    print(f"cpus {os.cpu_count()}, load average {load:.2f} (timings are noisy when load > cpus)")
    print(f"{'case':<32} {'bars':>12} {'best s':>9} {'bars/s':>14} {'vs ref':>8}")
    for label, n, secs in rows:
        rate = n / secs
        print(f"{label:<32} {n:>12,} {secs:>9.3f} {rate:>14,.0f} {rate / ref_rate:>7.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("core", "cli"), default=None)
    parser.add_argument("--bars", type=int, default=10_000_000)
    parser.add_argument("--baseline-bars", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli-bars", type=int, default=300_000)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    if args.only != "cli":
        in_process(args)
    if args.only != "core":
        whole_process(args.cli_bars, args.pairs)


if __name__ == "__main__":
    main()
