"""POST /clm/train latency through `clm serve` alone (no CLM workers), PostgreSQL + Redis,
against a registry GET measured in the same run.

Run: .venv/bin/python bench/bench_train_submit.py [--single 100] [--clients 20]
         [--requests 20] [--workers 2] [--threads 4]

A throw-away database and a private redis-server (tests/support/private_services
.benchmark_stack); `clm serve` with `--workers`/`--threads` (default: the command's own
defaults). Every POST names a new model (a symbol each, seeded with a tiny series), so
each is a 202 that creates a job and publishes its first task; nothing consumes the
tasks. Phases, after a warm-up that reaches every gunicorn worker:
  1. one client, alternating POST /clm/train and GET /clm/models/{id}/versions/{v}
     (`--single` of each): p50 of both and their ratio (the target is a ratio that holds
     on a noisy machine: POST p50 <= 2x GET p50);
  2. `--clients` concurrent clients × `--requests` POSTs: p50, p99, requests/s;
  3. the same concurrency on the registry GET (the baseline under load).
Only HTTP and the `clm` command are used, so the same script measures any checkout (run
it from that checkout's root). Prints the load average: the box is shared.
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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _clm(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=300)
    return done.stdout


def _train_body(symbol: str) -> dict[str, object]:
    return {"model_type": "xgboost", "symbol": symbol, "timeframe": "1h",
            "dataset_span_days": 30, "params": {"n_estimators": 4, "max_depth": 2}}


def _concurrent(base: str, token: str, clients: int, per_client: int,
                request: object) -> tuple[list[float], float]:
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        mine: list[float] = []
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            for i in range(per_client):
                t0 = time.perf_counter()
                r = request(http, c * per_client + i)  # type: ignore[operator]
                mine.append(time.perf_counter() - t0)
                if r.status_code not in (200, 202):
                    errors.append(f"{r.status_code} {r.text[:200]}")
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
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    return latencies, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=100, help="one-client POSTs (and GETs)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20, help="POSTs per client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    from tests.support.private_services import PostgresUnavailable, benchmark_stack

    try:
        with benchmark_stack("clm-bench-submit") as (work, url, broker):
            os.environ.update(CLM_VAR_DIR=str(work / "var"), CLM_DATABASE_URL=url,
                              CLM_BROKER_URL=broker, CLM_LOG_LEVEL="WARNING")
            return run(args, work)
    except PostgresUnavailable as exc:
        print(exc)
        return 2


def run(args: argparse.Namespace, work: Path) -> int:
    import requests

    from app.core.config import get_settings
    from tests.support.load import running_api, seed_symbols

    _clm("db", "upgrade")
    token = _clm("token", "create", "--role", "admin", "--name", "bench").strip().splitlines()[-1]
    warm = 4 * args.workers * args.threads
    names = [f"SUB{i:05d}" for i in range(warm + args.single + args.clients * args.requests)]
    t0 = time.perf_counter()
    seed_symbols(get_settings(), names)
    print(f"seeded {len(names)} symbols in {time.perf_counter() - t0:.1f}s; "
          f"clm serve --workers {args.workers} --threads {args.threads}; "
          f"{os.cpu_count()} cores", flush=True)
    headers = {"Authorization": f"Bearer {token}"}
    with running_api(work / "logs", workers=args.workers, threads=args.threads) as base:
        r = requests.post(f"{base}/clm/models", headers=headers, timeout=30, json={
            "model_type": "xgboost", "symbol": "REGREAD", "timeframe": "1h",
            "metrics": {"sharpe": 1.0, "win_rate": 0.55, "profit_factor": 1.4,
                        "max_drawdown": 0.1, "total_return": 0.2, "trades": 120}})
        r.raise_for_status()
        get_path = f"/clm/models/{r.json()['model_id']}/versions/{r.json()['version']}"
        queue = iter(names)

        def post(http: requests.Session, _i: int) -> requests.Response:
            return http.post(f"{base}/clm/train", json=_train_body(next(queue)), timeout=30)

        def get(http: requests.Session, _i: int) -> requests.Response:
            return http.get(base + get_path, timeout=30)

        # warm-up: concurrent, so every worker process and thread has imported and pooled
        _concurrent(base, token, args.workers * args.threads, 4, post)
        _concurrent(base, token, args.workers * args.threads, 4, get)
        load_before = os.getloadavg()[0]
        post_lat: list[float] = []
        get_lat: list[float] = []
        with requests.Session() as http:
            http.headers.update(headers)
            for i in range(args.single):
                for fn, out in ((post, post_lat), (get, get_lat)):
                    t = time.perf_counter()
                    resp = fn(http, i)
                    out.append(time.perf_counter() - t)
                    if resp.status_code not in (200, 202):
                        raise RuntimeError(f"{resp.status_code} {resp.text[:300]}")
        many_post, post_wall = _concurrent(base, token, args.clients, args.requests, post)
        many_get, get_wall = _concurrent(base, token, args.clients, args.requests, get)
        load_after = os.getloadavg()[0]
    n = args.clients * args.requests
    p50_post, p50_get = statistics.median(post_lat), statistics.median(get_lat)
    print(f"load average {load_before:.2f} before, {load_after:.2f} after "
          f"({os.cpu_count()} cores shared)")
    print(f"one client  POST /clm/train p50 {p50_post * 1e3:6.1f} ms  p99 "
          f"{_pct(post_lat, 0.99) * 1e3:6.1f} ms | registry GET p50 {p50_get * 1e3:6.1f} ms"
          f"  -> POST/GET p50 {p50_post / p50_get:.2f}x")
    print(f"{args.clients} clients POST /clm/train p50 {statistics.median(many_post) * 1e3:6.1f}"
          f" ms  p99 {_pct(many_post, 0.99) * 1e3:6.1f} ms  {n / post_wall:6.0f} req/s")
    print(f"{args.clients} clients registry GET  p50 {statistics.median(many_get) * 1e3:6.1f}"
          f" ms  p99 {_pct(many_get, 0.99) * 1e3:6.1f} ms  {n / get_wall:6.0f} req/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
