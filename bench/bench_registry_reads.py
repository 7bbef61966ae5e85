"""Registry reads under concurrency: 20 HTTP clients reading versions through `clm serve`.

Run: .venv/bin/python bench/bench_registry_reads.py [--clients 20] [--requests 20]
         [--models 50] [--versions 20] [--repeat 3] [--workers 2] [--threads 8]

PostgreSQL + Redis as deployed (a throw-away database and a private redis-server, see
tests/support/private_services.benchmark_stack); `clm serve` (gunicorn, `--workers`
processes × `--threads` threads, default 2 × 8). The registry is seeded over HTTP with
`--models` model ids × `--versions`
versions, then every client sends `--requests` reads, cycling through the three reads a
consumer makes: a version (GET /clm/models/{id}/versions/{v}), a model's production
version, and a filtered listing (GET /clm/models?model_id=…&limit=20). Baseline, in the
same run and under the same load: GET /health, which also reaches the database and the
broker but reads no registry row. Prints p50 / p99 latency and requests/s of both and the
ratio of the p50s, best of `--repeat` rounds. Only HTTP and the `clm` command are used, so
the same script measures any checkout (run it from that checkout's root).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _clm(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=300)
    return done.stdout


def _seed(base: str, token: str, models: int, versions: int) -> list[tuple[str, str]]:
    import requests

    headers = {"Authorization": f"Bearer {token}"}
    made: list[tuple[str, str]] = []
    with requests.Session() as http:
        for m in range(models):
            symbol = f"BENCH{m:04d}"
            for v in range(versions):
                body = {"model_type": "xgboost", "symbol": symbol, "timeframe": "1h",
                        "metrics": {"sharpe": 1.0 + v / 100, "win_rate": 0.55,
                                    "profit_factor": 1.4, "max_drawdown": 0.1,
                                    "total_return": 0.2, "trades": 120},
                        "tags": {"seq": str(v)}}
                r = http.post(f"{base}/clm/models", json=body, headers=headers, timeout=30)
                r.raise_for_status()
                made.append((r.json()["model_id"], r.json()["version"]))
            model_id, version = made[-1]
            r = http.post(f"{base}/clm/promote", headers=headers, timeout=30,
                          json={"model_id": model_id, "version": version,
                                "promoted_by": "bench", "reason": "bench"})
            r.raise_for_status()
    return made


def _load(base: str, token: str, paths: list[str], clients: int, per_client: int
          ) -> tuple[list[float], float]:
    import requests

    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(offset: int) -> None:
        mine: list[float] = []
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            for i in range(per_client):
                path = paths[(offset * per_client + i) % len(paths)]
                t0 = time.perf_counter()
                r = http.get(base + path, timeout=30)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed reads, e.g. {errors[:3]}")
    return latencies, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20, help="reads per client")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")
    args = parser.parse_args()

    from tests.support.private_services import PostgresUnavailable, benchmark_stack

    try:
        with benchmark_stack("clm-bench-reads") as (work, url, broker):
            os.environ.update(CLM_VAR_DIR=str(work / "var"), CLM_DATABASE_URL=url,
                              CLM_BROKER_URL=broker, CLM_LOG_LEVEL="WARNING")
            return run(args, work)
    except PostgresUnavailable as exc:
        print(exc)
        return 2


def run(args: argparse.Namespace, work: Path) -> int:
    from tests.support.load import running_api

    _clm("db", "upgrade")
    token = _clm("token", "create", "--role", "admin", "--name", "bench").strip().splitlines()[-1]
    with running_api(work / "logs", workers=args.workers, threads=args.threads) as base:
        t0 = time.perf_counter()
        made = _seed(base, token, args.models, args.versions)
        print(f"seeded {len(made)} versions of {args.models} models in "
              f"{time.perf_counter() - t0:.1f}s; {args.clients} clients × {args.requests} "
              f"reads, {os.cpu_count()} cores", flush=True)
        reads: list[str] = []
        for i, (model_id, version) in enumerate(made):
            reads.append([f"/clm/models/{model_id}/versions/{version}",
                          f"/clm/models/{model_id}/production",
                          f"/clm/models?model_id={model_id}&limit=20"][i % 3])
        rounds = []
        for _ in range(args.repeat):
            base_lat, base_wall = _load(base, token, ["/health"], args.clients, args.requests)
            read_lat, read_wall = _load(base, token, reads, args.clients, args.requests)
            rounds.append((read_lat, read_wall, base_lat, base_wall))
    n = args.clients * args.requests
    print(f"{'round':>5} {'reads p50':>10} {'p99':>8} {'req/s':>7}   "
          f"{'/health p50':>11} {'p99':>8} {'req/s':>7}   p50 ratio")
    ratios = []
    for i, (rl, rw, bl, bw) in enumerate(rounds, start=1):
        ratio = statistics.median(rl) / statistics.median(bl)
        ratios.append(ratio)
        print(f"{i:>5} {statistics.median(rl) * 1e3:>8.1f}ms {_percentile(rl, 0.99) * 1e3:>6.1f}ms "
              f"{n / rw:>7.0f}   {statistics.median(bl) * 1e3:>9.1f}ms "
              f"{_percentile(bl, 0.99) * 1e3:>6.1f}ms {n / bw:>7.0f}   {ratio:.2f}×")
    print(f"registry read p50 / /health p50: best {min(ratios):.2f}×, "
          f"median {statistics.median(ratios):.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
