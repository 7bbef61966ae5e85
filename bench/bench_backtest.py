"""Throughput of `app.ml.backtest.run_backtest` vs the pure-Python reference loop.

Run: .venv/bin/python bench/bench_backtest.py [--bars N] [--baseline-bars M]
Times run_backtest on N bars (default 10M, best of 3) for three position patterns —
runs of ~20 bars (a typical model), ~3 bars, and a random value every bar (worst
case: ~80% of bars start a new trade) — and the
literal pure-Python reference (tests/backtest_reference.py) on an M-bar slice
(default 200k, best of 1), scaled to bars/s, and prints the ratio.
Fees are 0 in the timed runs: with millions of trades any fee drives equity below
1e-308, where denormal arithmetic is many times slower — a degenerate account, not
the common case. The correctness guard at the end uses a fee.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=10_000_000)
    parser.add_argument("--baseline-bars", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
