"""Benchmark: fs-1 feature build on 1M bars vs a frame copy and a naive per-row loop.

Run: .venv/bin/python bench/bench_features.py [--rows 1000000] [--loop-rows 20000]
Prints a small table. Baselines run in the same process on the same data:
  - copy: a deep copy of the OHLCV frame (the floor: touching the data once);
  - naive loop: the rolling families (returns, volatility, volume z, range, z-score)
    computed bar by bar with numpy slices on a slice of `--loop-rows` bars, extrapolated
    linearly to the full length (it is O(rows) per bar-window, so linear is fair).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from app.ml.data.synthetic import generate_ohlcv
from app.ml.features import DEFAULT_WINDOWS, build_features, feature_names


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def naive_rolling_loop(frame: pd.DataFrame) -> np.ndarray:
    """Per-row Python loop over the windowed families; the way one writes it first."""
    c = frame["close"].to_numpy()
    logc = np.log(c)
    hl = np.log(frame["high"].to_numpy() / frame["low"].to_numpy())
    lv = np.log1p(frame["volume"].to_numpy())
    n = len(frame)
    cols = (len(DEFAULT_WINDOWS["returns"]) + len(DEFAULT_WINDOWS["volatility"])
            + len(DEFAULT_WINDOWS["volume_z"]) + len(DEFAULT_WINDOWS["range"])
            + len(DEFAULT_WINDOWS["zscore"]))
    out = np.full((n, cols), np.nan)
    for t in range(n):
        j = 0
        for k in DEFAULT_WINDOWS["returns"]:
            if t >= k:
                out[t, j] = logc[t] - logc[t - k]
            j += 1
        for k in DEFAULT_WINDOWS["volatility"]:
            if t >= k:
                out[t, j] = np.std(np.diff(logc[t - k:t + 1]), ddof=1)
            j += 1
        for k in DEFAULT_WINDOWS["volume_z"]:
            if t >= k - 1:
                w = lv[t - k + 1:t + 1]
                sd = w.std(ddof=1)
                out[t, j] = (lv[t] - w.mean()) / sd if sd > 0 else 0.0
            j += 1
        for k in DEFAULT_WINDOWS["range"]:
            if t >= k - 1:
                out[t, j] = hl[t - k + 1:t + 1].mean()
            j += 1
        for k in DEFAULT_WINDOWS["zscore"]:
            if t >= k - 1:
                w = c[t - k + 1:t + 1]
                sd = w.std(ddof=1)
                out[t, j] = (c[t] - w.mean()) / sd if sd > 0 else 0.0
            j += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loop-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    frame = generate_ohlcv("planted", args.rows, seed=0)
    n_feat = len(feature_names())
    t_copy = _best_of(lambda: frame.copy(deep=True), args.repeat)
    t_feat = _best_of(lambda: build_features(frame), args.repeat)

    small = frame.iloc[: args.loop_rows]
    t_vec_small = _best_of(lambda: build_features(small), args.repeat)
    t0 = time.perf_counter()
    naive_rolling_loop(small)
    t_loop_small = time.perf_counter() - t0
    t_loop_full = t_loop_small * args.rows / args.loop_rows

    rows = [
        ("copy OHLCV frame (floor)", args.rows, t_copy),
        (f"build_features fs-1 ({n_feat} cols)", args.rows, t_feat),
        (f"build_features on {args.loop_rows:,} bars", args.loop_rows, t_vec_small),
        (f"naive per-row loop, {args.loop_rows:,} bars (rolling families only)",
         args.loop_rows, t_loop_small),
        ("naive per-row loop, extrapolated", args.rows, t_loop_full),
    ]
    print(f"{'what':<62} {'rows':>10} {'seconds':>9} {'ns/row':>8}")
    for name, n, sec in rows:
        print(f"{name:<62} {n:>10,} {sec:>9.3f} {sec / n * 1e9:>8.0f}")
    print()
    print(f"build_features / frame copy            = {t_feat / t_copy:8.1f}x")
    print(f"naive loop (extrapolated) / build_features = {t_loop_full / t_feat:8.1f}x "
          "(the loop computes only part of the features)")
    print(f"throughput: {args.rows / t_feat / 1e6:.2f} M bars/s, output "
          f"{args.rows * n_feat * 8 / 2**20:.0f} MiB float64")


if __name__ == "__main__":
    main()
