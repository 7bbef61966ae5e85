"""Benchmark: peak memory of training XGBoost and LightGBM on 1M bars × all features.

Run: .venv/bin/python bench/bench_training_memory.py [--rows 1000000] [--threads 1]
Each measurement runs in a fresh child process and reads its own peak RSS with
resource.getrusage(RUSAGE_SELF).ru_maxrss, so nothing the parent allocated counts.
ru_maxrss survives fork+exec, so the parent stays lean (imports nothing heavy) and a
first child builds the dataset once (synthetic planted bars → fs-1 features → float32 X)
and saves X and y as .npy files; then one fresh child per measurement:
  - load      imports numpy/xgboost/lightgbm and loads X, y (the baseline a worker pays)
  - prepare   generates the bars and runs prepare_dataset (the dataset step's peak)
  - xgboost / lightgbm   load + fit with default params (200 trees) + predict
Target: every peak ≤ 1.5 GB. Ratios are against the in-memory size of X (float32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_BYTES = 1.5e9


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(mode: str, workdir: Path, rows: int, threads: int) -> None:
    import lightgbm  # noqa: F401  (baseline includes the libraries a worker imports)
    import numpy as np
    import xgboost  # noqa: F401

    out: dict[str, float | int | str] = {"mode": mode}
    t0 = time.perf_counter()
    if mode == "build":
        from app.ml.data.synthetic import generate_ohlcv
        from app.ml.evaluation import EvaluationConfig, prepare_dataset

        ds = prepare_dataset(generate_ohlcv("planted", rows, seed=0), EvaluationConfig())
        np.save(workdir / "X.npy", ds.X)
        np.save(workdir / "y.npy", ds.y)
        out["x_bytes"] = int(ds.X.nbytes)
        out["shape"] = f"{ds.X.shape[0]:,} rows × {ds.X.shape[1]} features"
    elif mode == "prepare":
        from app.ml.data.synthetic import generate_ohlcv
        from app.ml.evaluation import EvaluationConfig, prepare_dataset

        ds = prepare_dataset(generate_ohlcv("planted", rows, seed=0), EvaluationConfig())
        out["x_bytes"] = int(ds.X.nbytes)
    else:
        X = np.load(workdir / "X.npy")
        y = np.load(workdir / "y.npy")
        out["x_bytes"] = int(X.nbytes)
        if mode in ("xgboost", "lightgbm"):
            from app.ml.trainers import get_trainer

            trainer = get_trainer(mode)
            model = trainer.fit(X, y, {}, seed=0, n_threads=threads)
            proba = trainer.predict_proba(model, X[-10_000:], n_threads=threads)
            out["model_bytes"] = len(trainer.dump(model))
            out["train_acc_tail"] = float(np.mean((proba > 0.5) == (y[-10_000:] == 1)))
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss"] = _peak_rss_bytes()
    print(json.dumps(out))


def run_child(mode: str, workdir: Path, rows: int, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--workdir", str(workdir),
         "--rows", str(rows), "--threads", str(threads)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["build", "load", "prepare", "xgboost", "lightgbm"])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.rows, args.threads)
        return

    with tempfile.TemporaryDirectory(prefix="clm-bench-") as tmp:
        workdir = Path(tmp)
        shape = run_child("build", workdir, args.rows, args.threads)["shape"]
        results = [run_child(m, workdir, args.rows, args.threads)
                   for m in ("load", "prepare", "xgboost", "lightgbm")]

    x_bytes = results[0]["x_bytes"]
    base = results[0]["peak_rss"]
    print(f"X: {shape} float32 = {x_bytes / 2**20:.0f} MiB; parent peak "
          f"{_peak_rss_bytes() / 2**20:.0f} MiB; "
          f"threads={args.threads}")
    print(f"{'child':<10} {'seconds':>8} {'peak RSS MiB':>13} {'peak / X':>9} "
          f"{'(peak − load) / X':>18} {'≤ 1.5 GB':>9}")
    for r in results:
        peak = r["peak_rss"]
        print(f"{r['mode']:<10} {r['seconds']:>8.1f} {peak / 2**20:>13.0f} "
              f"{peak / x_bytes:>9.2f} {(peak - base) / x_bytes:>18.2f} "
              f"{'yes' if peak <= TARGET_BYTES else 'NO':>9}")
    for r in results:
        if "model_bytes" in r:
            print(f"{r['mode']}: model artifact {r['model_bytes'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
