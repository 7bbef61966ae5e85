"""Rolling restart under load: jobs from 10 concurrent clients in flight while every worker
process (two per worker host) is restarted one at a time with SIGTERM — Celery's soft
shutdown: the running task gets CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S to finish, reserved
messages go back to the broker. Nothing may be lost, nothing may run twice into two
versions; the p99 of POST /clm/train is reported.

CLM_DIST_JOBS sets the number of jobs (default 200, the issue's figure; tiny ones: 1500
bars, 5 trees, so that on a 2-core machine they finish in about two minutes).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from tests.distributed.cluster import ROLES, owner_host
from tests.distributed.conftest import report
from tests.distributed.helpers import outcome, p, poll, seed

pytestmark = [pytest.mark.distributed, pytest.mark.services, pytest.mark.slow]

JOBS = int(os.environ.get("CLM_DIST_JOBS", "200"))
CLIENTS = 10
SMALL = {"n_estimators": 5, "max_depth": 2}


def test_rolling_restart_under_load_loses_nothing(lab_cluster):
    c = lab_cluster
    symbols = [f"ROLL{i:03d}" for i in range(JOBS)]
    t_seed = time.monotonic()
    for i, s in enumerate(symbols):
        seed(c, s, bars=1500, seed_value=1000 + i)
    seed_s = time.monotonic() - t_seed

    latencies: list[float] = []
    job_ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    submitted_at: list[float] = []

    def client(mine: list[str]) -> None:
        for s in mine:
            status, body, seconds = c._http("POST", "/clm/train", {
                "model_type": "xgboost", "symbol": s, "timeframe": "1h",
                "dataset_span_days": 60, "params": SMALL}, 30)
            with lock:
                latencies.append(seconds)
                if status == 202:
                    job_ids.append(body["job_id"])
                else:
                    errors.append(f"{status} {body}")
        with lock:
            submitted_at.append(time.monotonic())

    pool = c.lab.pool("client", CLIENTS)  # ten threads on the client host
    t0 = time.monotonic()
    futures = [pool.submit(client, symbols[i::CLIENTS]) for i in range(CLIENTS)]

    # Restart each worker process in turn while the jobs are in flight.
    poll(lambda: len(job_ids) >= min(JOBS, 20), timeout=60, what="the first submissions")
    restarts: list[str] = []
    for host in c.worker_hosts:
        for role in ROLES:
            proc = c.workers[f"{host.name}-{role}"]
            t_r = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)  # the main process: Celery's soft shutdown
            code = proc.wait(60)
            assert code is not None, f"{proc.name} on {host.name} did not stop on SIGTERM"
            stopped_s = time.monotonic() - t_r
            c.start_worker(host, role)
            restarts.append(f"{host.name}-{role} stopped in {stopped_s:.1f}s, back in "
                            f"{time.monotonic() - t_r:.1f}s")
    for f in futures:
        f.result()
    submitted_s = max(submitted_at) - t0
    assert not errors, errors[:5]
    assert len(job_ids) == JOBS

    def all_finished() -> bool:
        rows = c.sql("SELECT count(*) FROM training_jobs WHERE id = ANY(:ids) AND status "
                     "IN ('succeeded', 'failed')", ids=job_ids)
        return rows[0][0] == JOBS

    poll(all_finished, timeout=600, what=f"all {JOBS} jobs", interval=1.0)
    total_s = time.monotonic() - t0
    out = outcome(c, job_ids)
    hosts = Counter(owner_host((r[0] or {}).get("worker")) for r in c.sql(
        "SELECT result FROM training_job_work_items WHERE job_id = ANY(:ids) AND kind = "
        "'final'", ids=job_ids))
    assert out["lost"] == 0 and out["duplicates"] == 0 and out["without_version"] == 0, out
    report(f"rolling restart: jobs {JOBS} from {CLIENTS} clients, lost {out['lost']}, "
           f"duplicates {out['duplicates']}, work items re-run {out['rerun_items']}; POST "
           f"/clm/train p50 {p(latencies, 0.5) * 1000:.0f} ms, p99 "
           f"{p(latencies, 0.99) * 1000:.0f} ms (all submitted in {submitted_s:.1f}s); "
           f"all done in {total_s:.1f}s ({JOBS / total_s:.2f} jobs/s); final fits by host "
           f"{dict(hosts)}; restarts: {'; '.join(restarts)}; seeding {seed_s:.1f}s")
