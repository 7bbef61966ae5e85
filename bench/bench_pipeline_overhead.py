"""Overhead of the distributed pipeline: one training job through the API and real
workers vs the same computation called directly in one process.

Run: .venv/bin/python bench/bench_pipeline_overhead.py [--bars 200000] [--repeat 2]

Direct: `run_walk_forward(frame, model_type, params, fit_final=True)` in this process
with n_threads = all cores (the walk-forward folds, the gate and the final fit).
Pipeline: POST /clm/train to `clm serve`, with `clm worker` processes on the embedded
default (SQLite + filesystem broker) in a throw-away var dir — data and evaluate queues
on one worker (concurrency 1), the train queue on another (concurrency = cores, one
thread per child) — timed from the POST to the job's `succeeded`, which includes
fetching and validating the data, the dataset/prediction/model artifacts, lineage,
registering the version and every hand-over between steps. Process start-up is not
timed; a small warm-up job (and a warm-up direct run) go first so neither side pays
its imports. Prints both times (best and median of --repeat) and the ratio, then where
the pipeline's time went in its best run (from the job's own step timestamps): the API's
part, each step, the hand-overs between steps (a task published, queued, picked up), the
end of the job and the client's polling (every 0.1 s), against the direct run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMEFRAME = "5m"  # 200k bars of 5m ≈ 694 days


def _direct(frame: Any, model_type: str, params: dict[str, Any], threads: int) -> float:
    from app.core.config import get_settings
    from app.ml.evaluation import EvaluationConfig, run_walk_forward

    settings = get_settings()
    t0 = time.perf_counter()
    report = run_walk_forward(frame, model_type, params,
                              EvaluationConfig.from_settings(settings), n_threads=threads,
                              gate=settings.gate_for(model_type), fit_final=True)
    elapsed = time.perf_counter() - t0
    assert report.model is not None
    return elapsed


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def breakdown(job: dict[str, Any], posted: datetime, seen: datetime) -> list[tuple[str, float]]:
    """(what, seconds) from POST to the client seeing `succeeded`, from the job's steps."""
    created, finished = _at(job["created_at"]), _at(job["finished_at"])
    rows = [("POST -> job row committed (API)", (created - posted).total_seconds())]
    prev = created
    for step in job["steps"]:
        if not step["started_at"]:
            continue
        start, end = _at(step["started_at"]), _at(step["finished_at"])
        rows.append((f"hand-over -> {step['name']}", (start - prev).total_seconds()))
        rows.append((f"step {step['name']}", (end - start).total_seconds()))
        for key, value in sorted((step.get("detail") or {}).items()):
            if key.endswith("_s") and isinstance(value, (int, float)):  # the step's own timings
                rows.append((f"    of which {key}", float(value)))
        prev = end
    rows.append(("last step -> job succeeded", (finished - prev).total_seconds()))
    rows.append(("succeeded -> client sees it (polls 0.1 s)", (seen - finished).total_seconds()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model-type", default="xgboost", choices=["xgboost", "lightgbm"])
    parser.add_argument("--var-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    var_dir = Path(args.var_dir or tempfile.mkdtemp(prefix="clm-bench-"))
    # A throw-away embedded installation; set before any app import reads settings.
    for key in [k for k in os.environ if k.startswith("CLM_")]:
        del os.environ[key]
    os.environ.update(CLM_VAR_DIR=str(var_dir), CLM_LOG_JSON="1", CLM_LOG_LEVEL="WARNING")

    from app import migrate
    from app.cli_commands.demo import Api, Processes, _free_port, _health, _wait
    from app.core.config import get_settings
    from app.core.domain import timeframe_seconds
    from app.db import transaction
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv
    from app.services.auth import create_token

    settings = get_settings()
    migrate.upgrade(settings.database_url)
    frame = generate_ohlcv("planted", args.bars, TIMEFRAME, seed=7)
    warm = generate_ohlcv("planted", 4000, "1h", seed=8)
    store = MarketDataStore(settings.data_dir)
    store.merge("BENCH", TIMEFRAME, frame)
    store.merge("WARMUP", "1h", warm)
    span_days = int(args.bars * timeframe_seconds(TIMEFRAME) / 86_400)
    # The pipeline trains on the last span_days days: the direct run gets the same bars.
    from app.services.jobs import data_window

    start, _end = data_window(frame.index[-1].to_pydatetime(), span_days, TIMEFRAME)
    frame = frame[frame.index >= start]
    params: dict[str, Any] = {}
    print(f"{len(frame)} bars of {TIMEFRAME} synthetic 'planted' data, {args.model_type} "
          f"default params, {settings.walk_forward_folds} folds + final fit; {cores} cores")

    with transaction(settings.database_url) as session:
        token = create_token(session, role="operator", name="bench", actor="bench")
    log_dir = var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(log_dir, {**os.environ, "PYTHONUNBUFFERED": "1"})
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    pipeline_times: list[float] = []
    jobs: list[tuple[dict[str, Any], datetime, datetime]] = []
    try:
        api_proc = procs.start("api", ["serve", "--port", str(port), "--workers", "1"])
        workers = [
            procs.start("worker-steps", ["worker", "--queues", "data,evaluate,default",
                                         "--concurrency", "1", "--hostname", "b-steps@%h",
                                         "--loglevel", "INFO"]),
            procs.start("worker-train", ["worker", "--queues", "train", "--concurrency",
                                         str(cores), "--hostname", "b-train@%h",
                                         "--loglevel", "INFO"]),
        ]
        for w in workers:
            _wait(lambda w=w: " ready." in w.log.read_text(errors="replace"), 120,
                  f"{w.name}", procs.procs)
        _wait(lambda: _health(base), 60, "the API", [api_proc])
        api = Api(base, token)

        def run_job(symbol: str, timeframe: str, days: int) -> float:
            t0 = time.perf_counter()
            posted = datetime.now(UTC)
            job = api.ok("POST", "/clm/train", {
                "model_type": args.model_type, "symbol": symbol, "timeframe": timeframe,
                "dataset_span_days": days, "params": params}, expect=(202,))
            while True:
                body = api.ok("GET", f"/clm/jobs/{job['job_id']}")
                if body["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - t0
            if body["status"] != "succeeded":
                raise SystemExit(f"job failed: {body['error']}")
            jobs.append((body, posted, datetime.now(UTC)))
            return elapsed

        run_job("WARMUP", "1h", 160)
        _direct(warm, args.model_type, params, cores)
        direct_times = []
        for _ in range(args.repeat):
            direct_times.append(_direct(frame, args.model_type, params, cores))
            pipeline_times.append(run_job("BENCH", TIMEFRAME, span_days))
            print(f"  direct {direct_times[-1]:6.2f}s   pipeline {pipeline_times[-1]:6.2f}s")
    finally:
        procs.stop_all()
        if args.var_dir is None:
            shutil.rmtree(var_dir, ignore_errors=True)

    best_d, best_p = min(direct_times), min(pipeline_times)
    med_d, med_p = statistics.median(direct_times), statistics.median(pipeline_times)
    print(f"direct (one process, {cores} threads):          best {best_d:6.2f}s  "
          f"median {med_d:6.2f}s")
    print(f"pipeline (API + workers, {cores}×1 thread):      best {best_p:6.2f}s  "
          f"median {med_p:6.2f}s")
    print(f"ratio pipeline/direct: best {best_p / best_d:.2f}×  median {med_p / med_d:.2f}×"
          f"  (target <= 1.05×)")
    best = min(range(len(pipeline_times)), key=pipeline_times.__getitem__)
    rows = breakdown(*jobs[1 + best])  # jobs[0] is the warm-up
    print(f"\nwhere the best pipeline run ({pipeline_times[best]:.2f}s) went; the direct run "
          f"of that pair: {direct_times[best]:.2f}s")
    for what, secs in rows:
        print(f"  {what:<44} {secs:7.3f}s")
    handover = sum(v for w, v in rows if w.startswith("hand-over"))
    edges = sum(v for w, v in rows if not w.startswith(("hand-over", "step ", "    of which")))
    print(f"  {'hand-overs between steps, total':<44} {handover:7.3f}s")
    print(f"  {'API + job end + polling, total':<44} {edges:7.3f}s")


if __name__ == "__main__":
    main()
