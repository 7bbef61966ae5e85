"""Load: 1,000 training jobs submitted by 20 concurrent HTTP clients — none lost, none run
twice — with the POST /clm/train latency and the throughput.

Run: .venv/bin/python bench/bench_load.py [--jobs 1000] [--clients 20]
         [--steps-concurrency 2] [--train-concurrency 2]

PostgreSQL + Redis, as deployed: a throw-away database on the PostgreSQL server of
CLM_TEST_PG_ADMIN_URL (default postgres@127.0.0.1:5432) and a private redis-server on a
free port (nothing on disk); `clm serve` (gunicorn, 2 workers × 8 threads) and two `clm`
workers (data/evaluate/default and train queues). One model_id per job (a symbol each,
with a tiny synthetic series and 4-tree models: the load is on the API, broker, database
and the pipeline's hand-overs, not on training). After every job is final, the database
is audited: lost = accepted jobs not final; duplicates = jobs whose stage, a step or a
work item was claimed more than once, or with a number of versions other than one.
Prints p50 / p99 POST latency, POSTs/s, jobs/s end to end, lost and duplicates (exit 1 if
either is not 0). The same harness runs with 60 jobs in tests/test_ops_load.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--steps-concurrency", type=int, default=2)
    parser.add_argument("--train-concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait for every job to be final")
    args = parser.parse_args()

    from tests.support.private_services import PostgresUnavailable, benchmark_stack

    # Only benchmark_stack raises PostgresUnavailable (before anything runs).
    try:
        with benchmark_stack("clm-bench-load") as (work, url, broker):
            os.environ.update(
                CLM_VAR_DIR=str(work / "var"), CLM_DATABASE_URL=url,
                CLM_BROKER_URL=broker, CLM_WALK_FORWARD_FOLDS="2",
                CLM_TRAIN_THREADS="1", CLM_LOG_LEVEL="WARNING", CLM_LOG_JSON="1",
                OMP_NUM_THREADS="1")
            return run(args, work)
    except PostgresUnavailable as exc:
        print(exc)
        return 2


def run(args: argparse.Namespace, work: Path) -> int:
    from app import migrate
    from app.core.config import get_settings
    from app.db import transaction
    from app.services.auth import create_token
    from tests.support.load import (
        audit,
        running_api,
        seed_symbols,
        submit_all,
        summary,
        symbols,
        wait_all_final,
    )
    from tests.support.workers import WorkerSpec, running_workers

    settings = get_settings()
    migrate.upgrade(settings.database_url)
    names = symbols(args.jobs)
    t0 = time.perf_counter()
    seed_symbols(settings, names)
    print(f"seeded {len(names)} symbols in {time.perf_counter() - t0:.1f}s; "
          f"{args.clients} clients, workers steps×{args.steps_concurrency} "
          f"train×{args.train_concurrency}, {os.cpu_count()} cores", flush=True)
    with transaction(settings.database_url) as session:
        token = create_token(session, role="operator", name="bench-load", actor="bench")
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), args.steps_concurrency),
             WorkerSpec("train", ("train",), args.train_concurrency)]
    last = {"t": 0.0}

    def progress(final: int, total: int) -> None:
        if time.monotonic() - last["t"] > 10:
            last["t"] = time.monotonic()
            print(f"  {final}/{total} final", flush=True)

    with running_workers(specs, log_dir=work / "logs"), running_api(work / "logs") as base:
        result = submit_all(base, token, names, clients=args.clients)
        print(f"submitted {len(result.submissions)} in {result.wall_s:.1f}s "
              f"({len(result.accepted)} accepted, {len(result.errors)} client errors)",
              flush=True)
        _states, drain_s = wait_all_final(settings, result.accepted, args.timeout, progress)
    report = audit(settings, result.accepted)
    figures = summary(result, report, drain_s)
    refused = len(result.submissions) - len(result.accepted) + len(result.errors)
    print(f"POST /clm/train latency: p50 {figures['post_p50_ms']:.0f} ms   "
          f"p99 {figures['post_p99_ms']:.0f} ms   max {figures['post_max_ms']:.0f} ms   "
          f"({figures['posts_per_s']} POST/s)")
    print(f"all {figures['accepted']} jobs final after {figures['all_final_s']:.1f}s: "
          f"{figures['jobs_per_s']} jobs/s; by status {report.by_status}")
    print(f"refused={refused} lost={figures['lost']} duplicates={figures['duplicates']}")
    print(json.dumps(figures))
    return 0 if figures["lost"] == 0 and figures["duplicates"] == 0 and refused == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
