"""Live scoring per tick: N scored versions each receiving one new bar, vs a full recompute.

Run: .venv/bin/python bench/bench_live_scoring.py [--versions N] [--series S]
     [--artifacts A] [--history H] [--ticks T] [--backend sqlite|postgresql]

Set-up (not timed): S symbols (1h bars), each with a planted series; A real, tiny XGBoost
models trained on the first 600 bars of the first series and stored as artifacts; N
versions (default 1,000) registered as candidates round-robin over the S series and the A
artifacts (the artifacts are SHARED by many versions: training 1,000 real models is not
what this measures). Then H bars (default 200) after the training end are stored and
scored once (the catch-up).

Timed:
- tick: one new bar per series stored, then app.flows.live_scoring.score_live (what the
  scheduler tick runs): every version continued by its one new bar. Median of T ticks
  (default 5). Target < 1 s for 1,000 versions.
- full recompute: the same versions scored from scratch over all their H + T bars (what a
  design without stored state would do each tick); the ratio full / tick is printed.
Within a run, features are computed once per (series, windows) and predictions once per
(artifact, series): the printed counts say how many of each a tick needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CLM_LOG_JSON", "0")

N_TRAIN = 600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--artifacts", type=int, default=4)
    ap.add_argument("--history", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()

    from bench_scheduler import _database

    from app.core.config import load_settings
    from app.db import transaction
    from app.flows.live_scoring import score_live
    from app.ml.artifacts import ArtifactStore
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv
    from app.ml.evaluation import EvaluationConfig, prepare_dataset
    from app.ml.lineage import build_lineage
    from app.ml.trainers import get_trainer, save_model
    from app.models.live import LiveScore
    from app.services import registry

    total = N_TRAIN + args.history + args.ticks
    with TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url, drop = _database(args.backend, tmp)
        settings = load_settings({"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(tmp / "var"),
                                  "CLM_DATA_DIR": str(tmp / "data"),
                                  "CLM_ARTIFACT_ROOT": str(tmp / "artifacts"),
                                  "CLM_LOG_JSON": "0"})
        try:
            t0 = time.perf_counter()
            start = pd.Timestamp("2024-01-01", tz="UTC")
            frames = {}
            market = MarketDataStore(settings.data_dir)
            for s in range(args.series):
                frame = generate_ohlcv("planted", total, "1h", seed=100 + s, start=start)
                frames[f"SYM{s}USDT"] = frame
                market.merge(f"SYM{s}USDT", "1h", frame.iloc[:N_TRAIN + args.history])
            store = ArtifactStore(settings.artifact_root)
            cfg = EvaluationConfig.from_settings(settings)
            train = frames["SYM0USDT"].iloc[:N_TRAIN]
            dataset = prepare_dataset(train, cfg)
            trainer = get_trainer("xgboost")
            artifacts = []
            for a in range(args.artifacts):
                params = trainer.validate_params({"n_estimators": 20 + 5 * a, "max_depth": 3})
                model = trainer.fit(dataset.frame_X(), dataset.y, params, seed=a, n_threads=1)
                ref = save_model(store, trainer, model)
                artifacts.append(({"uri": ref.uri, "sha256": ref.sha256, "format": ref.format},
                                  params))
            with transaction(url, immediate=True) as session:
                for i in range(args.versions):
                    symbol = f"SYM{i % args.series}USDT"
                    art, params = artifacts[i % args.artifacts]
                    lineage = build_lineage(
                        frame=frames[symbol].iloc[:N_TRAIN], model_type="xgboost",
                        params=params, seed=0, n_threads=1, windows=dataset.windows,
                        symbol=symbol, timeframe="1h", evaluation=cfg.to_dict(), code_rev=None)
                    registry.register_version(
                        session, model_type="xgboost", symbol=symbol, timeframe="1h",
                        metrics={"sharpe": 1.0}, params=params, artifact=art, lineage=lineage,
                        actor="bench", reason="bench")
            setup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            score_live(settings)
            catch_up_s = time.perf_counter() - t0

            ticks = []
            last = {}
            for k in range(args.ticks):
                for symbol, frame in frames.items():
                    row = N_TRAIN + args.history + k
                    market.merge(symbol, "1h", frame.iloc[row:row + 1])
                t0 = time.perf_counter()
                last = score_live(settings)
                ticks.append(time.perf_counter() - t0)
                assert last["scored"] == args.versions, last
            tick_s = statistics.median(ticks)

            with transaction(url, immediate=True) as session:
                session.query(LiveScore).delete()
            t0 = time.perf_counter()
            full = score_live(settings)
            full_s = time.perf_counter() - t0
            assert full["bars"] == args.versions * (args.history + args.ticks), full
        finally:
            from app.db import dispose_engines

            dispose_engines()
            drop()

    print(f"backend={args.backend} versions={args.versions} series={args.series} "
          f"artifacts={args.artifacts} (shared) history={args.history} bars")
    print(f"set-up {setup_s:.1f} s; catch-up over {args.history} bars "
          f"{catch_up_s:.2f} s")
    print(f"tick (1 new bar x {args.versions} versions): median {tick_s * 1000:.0f} ms "
          f"over {args.ticks} ticks (min {min(ticks) * 1000:.0f}, max {max(ticks) * 1000:.0f}); "
          f"target < 1000 ms: {'PASS' if tick_s < 1.0 else 'FAIL'}")
    print(f"  per tick: {last['feature_builds']} feature windows, "
          f"{last['predict_calls']} predictions, {last['bars']} points")
    print(f"full recompute ({args.history + args.ticks} bars x {args.versions} versions): "
          f"{full_s:.2f} s; ratio full / tick = {full_s / tick_s:.1f}x")


if __name__ == "__main__":
    main()
