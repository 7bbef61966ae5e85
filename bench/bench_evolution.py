"""Benchmark of the distributed strategy search (prints figures; not a timed test).

1. Throughput: the same search (population × generations trials, walk-forward xgboost on
   SYNTHETIC planted data) on 1 and on 2 real Celery worker processes (prefork,
   concurrency 1 each, SQLite + the embedded filesystem broker: the embedded default).
   Reports trials per minute and the speed-up (target >= 1.7x on >= 2 free cores).
2. Optimizer overhead: the search run in-process with timers around Optuna's ask (per
   generation) and tell (per trial) versus the trial's evaluation time (target <= 10%).

    .venv/bin/python bench/bench_evolution.py [--bars 3000] [--population 8]
        [--generations 2] [--trees 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app import migrate  # noqa: E402
from app.config import Settings, get_settings, load_settings  # noqa: E402
from app.db import dispose_engines, transaction  # noqa: E402
from app.evolution import dispatch, evaluate, search, service  # noqa: E402
from app.evolution.space import ParamDef, StrategySpace  # noqa: E402
from tests.support.workers import WorkerSpec, running_workers, wait_for  # noqa: E402
from tests.test_evolution_search import TINY_WINDOWS, planted_frame  # noqa: E402


def _space(trees: int) -> StrategySpace:
    return StrategySpace(
        "xgboost",
        (ParamDef("window_returns", "int", 12, 2, 96),
         ParamDef("entry_threshold", "float", 0.52, 0.50, 0.60, step=0.01),
         ParamDef("min_hold_bars", "int", 1, 1, 8)),
        fixed={"model_n_estimators": trees, "model_max_depth": 3},
        base_windows=TINY_WINDOWS,
    )


def _environment(root: Path) -> tuple[Settings, dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'clm.db'}"
    migrate.upgrade(url)
    env = {"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var"),
           "CLM_DATA_DIR": str(root / "var" / "data"),
           "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0",
           "CLM_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engines()
    search.dispose_storages()
    return load_settings(), env


def _start(settings: Settings, args: argparse.Namespace, frame: Any) -> str:
    with transaction(settings.database_url) as session:
        started = service.start_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=200, frame=frame, population=args.population,
            generations=args.generations, base_space=_space(args.trees), seed=11,
            evaluation={"fee_bps": 2.0, "min_train_rows": 300})
    return str(started["search_id"])


def throughput(n_workers: int, args: argparse.Namespace, frame: Any, root: Path) -> float:
    settings, env = _environment(root)
    sid = _start(settings, args, frame)
    specs = [WorkerSpec(f"bench{i}", queues=("evaluate", "default")) for i in range(n_workers)]
    with running_workers(specs, log_dir=root / "logs", env=env):
        t0 = time.perf_counter()
        dispatch.publish([dispatch.advance(sid)], settings)

        def done() -> bool:
            with transaction(settings.database_url) as session:
                return service.get_search(session, sid)["status"] in ("succeeded", "failed")

        wait_for(done, timeout=1800, interval=0.2, what="the search")
        elapsed = time.perf_counter() - t0
    with transaction(settings.database_url) as session:
        s = service.get_search(session, sid)
    trials = s["trials_evaluated"] + s["trials_failed"]
    rate = trials / elapsed * 60
    print(f"{n_workers} worker(s): {trials} trials in {elapsed:.1f} s = {rate:.1f} trials/min "
          f"(status {s['status']})")
    return rate


def overhead(args: argparse.Namespace, frame: Any, root: Path) -> None:
    settings, _env = _environment(root)
    timers = {"ask": 0.0, "tell": 0.0, "evaluate": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[name] += time.perf_counter() - t
        return wrapper

    search.ask_generation = timed("ask", search.ask_generation)
    search.tell_trial = timed("tell", search.tell_trial)
    service.evaluate_strategy = timed("evaluate", evaluate.evaluate_strategy)
    sid = _start(settings, args, frame)
    t0 = time.perf_counter()
    result = service.drive_inline(settings, sid, timeout_s=1800)
    total = time.perf_counter() - t0
    n = result["trials_evaluated"] + result["trials_failed"]
    optimizer = timers["ask"] + timers["tell"]
    print(f"in-process: {n} trials in {total:.1f} s; per trial: evaluation "
          f"{timers['evaluate'] / n * 1000:.0f} ms, Optuna ask {timers['ask'] / n * 1000:.1f} ms"
          f" + tell {timers['tell'] / n * 1000:.1f} ms")
    print(f"optimizer overhead: {optimizer / timers['evaluate'] * 100:.1f}% of trial "
          f"evaluation time (target <= 10%); all bookkeeping (DB + Optuna) "
          f"{(total - timers['evaluate']) / timers['evaluate'] * 100:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=3000)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--trees", type=int, default=100)
    args = parser.parse_args()
    frame = planted_frame(args.bars)
    print(f"cores: {os.cpu_count()}; search: {args.population} x {args.generations} trials, "
          f"{args.bars} SYNTHETIC bars, xgboost {args.trees} trees, 3 walk-forward folds")
    with tempfile.TemporaryDirectory(prefix="clm-bench-evo-") as tmp:
        root = Path(tmp)
        overhead(args, frame, root / "inline")
        one = throughput(1, args, frame, root / "w1")
        two = throughput(2, args, frame, root / "w2")
        print(f"speed-up 2 workers vs 1: {two / one:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
