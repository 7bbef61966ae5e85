"""Faults across hosts: a worker host partitioned mid-training, a worker paused past its
lease (SIGSTOP), and the broker restarted with jobs queued and running.

Each scenario reports jobs, lost, duplicates and the recovery time. The stale worker's
late writes must be refused by the fencing token (the claim's attempt number, checked in
every write: app/services/jobs/fencing.py), and its log must say `fencing: refused`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.distributed.cluster import LEASE_S, Cluster, owner_host
from tests.distributed.conftest import report
from tests.distributed.helpers import (
    items,
    job,
    outcome,
    poll,
    seed,
    submit,
    versions_per_job,
    wait_done,
)

pytestmark = [pytest.mark.distributed, pytest.mark.services, pytest.mark.slow]

# Heavy enough (a few seconds a work item on one thread) that the host is cut while it
# holds a work item, not after it finished.
HEAVY = {"n_estimators": 1500, "max_depth": 6}


def _held_item(c: Cluster, job_id: str) -> tuple[str, Any]:
    """Wait until a worker host holds a work item of the job: (host name, item row)."""
    def held() -> tuple[str, Any] | None:
        for row in items(c, job_id):
            if row.status == "running" and row.lease_owner:
                return owner_host(row.lease_owner), row
        return None

    return poll(held, timeout=120, what=f"a worker to claim a work item of {job_id}",
                interval=0.05)


def _stale_scenario(c: Cluster, name: str, symbol: str,
                    isolate: Callable[[str], None], rejoin: Callable[[str], None]) -> None:
    """Isolate the host holding a work item, let the other host finish the job, rejoin
    it, and check that its late writes are refused by the fencing token."""
    seed(c, symbol, seed_value=21)
    job_id, _ = submit(c, symbol, params=HEAVY)
    host, row = _held_item(c, job_id)
    other = next(h.name for h in c.worker_hosts if h.name != host)
    worker = c.workers[f"{host}-train"]
    mark = len(worker.log_text())
    t_cut = time.monotonic()
    isolate(host)

    def the_item() -> Any:
        return next(r for r in items(c, job_id) if (r.kind, r.fold) == (row.kind, row.fold))

    # The reaper (on the other host's eval worker) sees the lease expire: a new attempt.
    poll(lambda: the_item().attempts > row.attempts, timeout=60,
         what=f"the reaper to recover {row.kind} {row.fold}", interval=0.1)
    reaped_s = time.monotonic() - t_cut
    poll(lambda: owner_host(the_item().lease_owner) == other or the_item().status == "done",
         timeout=120, what=f"{other} to claim {row.kind} {row.fold}", interval=0.1)
    takeover_s = time.monotonic() - t_cut
    done = wait_done(c, job_id, timeout=180)
    recovery_s = time.monotonic() - t_cut
    assert done["status"] == "succeeded", done.get("error")
    assert versions_per_job(c, [job_id]) == {job_id: 1}
    final = next(r for r in items(c, job_id) if (r.kind, r.fold) == (row.kind, row.fold))
    assert owner_host(final.result["worker"]) == other, final.result
    assert final.attempts == row.attempts + 1

    t_back = time.monotonic()
    rejoin(host)

    def refused() -> list[str]:
        return [line for line in worker.log_text()[mark:].splitlines()
                if "fencing: refused" in line and job_id in line]

    lines = poll(refused, timeout=150, what=f"{host}'s late write to be refused",
                 interval=0.5)
    refused_s = time.monotonic() - t_back
    assert f"attempt {row.attempts}" in lines[0] and f"attempt {row.attempts + 1}" in lines[0]
    # Nothing the stale worker did afterwards changed the outcome.
    after = job(c, job_id)
    assert (after["status"], after["version"]) == ("succeeded", done["version"])
    assert versions_per_job(c, [job_id]) == {job_id: 1}
    out = outcome(c, [job_id])
    assert out["lost"] == 0 and out["duplicates"] == 0
    report(f"{name}: jobs 1, lost {out['lost']}, duplicates {out['duplicates']}; "
           f"{row.kind} {row.fold} held by {host}: lease recovered {reaped_s:.1f}s after the "
           f"{name} (lease {LEASE_S}s), claimed by {other} at {takeover_s:.1f}s; job done "
           f"{recovery_s:.1f}s after it; "
           f"{host}'s late write refused {refused_s:.1f}s after it came back: "
           f"{lines[0].split('fencing: ')[1][:160]}")


def test_partitioned_worker_is_fenced_off(lab_cluster):
    c = lab_cluster
    hosts = {h.name: h for h in c.worker_hosts}
    _stale_scenario(c, "partition", "PARTED",
                    lambda name: c.lab.cut(hosts[name]),
                    lambda name: c.lab.restore(hosts[name]))


def test_worker_paused_past_its_lease_is_fenced_off(lab_cluster):
    c = lab_cluster
    _stale_scenario(c, "sigstop", "PAUSED",
                    lambda name: c.workers[f"{name}-train"].signal(signal.SIGSTOP),
                    lambda name: c.workers[f"{name}-train"].signal(signal.SIGCONT))


def test_broker_restart_loses_no_job(lab_cluster):
    """Redis SIGKILLed and started again (it keeps nothing) while jobs are queued and
    running: the reaper republishes from the database, every job finishes once."""
    c = lab_cluster
    symbols = [f"BRK{i}" for i in range(6)]
    for i, s in enumerate(symbols):
        seed(c, s, bars=1500, seed_value=40 + i)
    job_ids = [submit(c, s, span=60, params={"n_estimators": 300, "max_depth": 5})[0]
               for s in symbols]

    def some_running() -> bool:
        rows = c.sql("SELECT status, count(*) FROM training_jobs WHERE id = ANY(:ids) "
                     "GROUP BY status", ids=job_ids)
        counts = {r[0]: r[1] for r in rows}
        return counts.get("running", 0) >= 1 and counts.get("queued", 0) >= 1

    poll(some_running, timeout=60, what="jobs both running and queued")
    queued = c.sql("SELECT count(*) FROM training_jobs WHERE id = ANY(:ids) AND status = "
                   "'queued'", ids=job_ids)[0][0]
    t0 = time.monotonic()
    away_s = c.restart_redis()
    finished = poll(lambda: all(job(c, j)["status"] in ("succeeded", "failed")
                                for j in job_ids) or None,
                    timeout=240, what="every job after the broker restart", interval=0.5)
    assert finished
    recovery_s = time.monotonic() - t0
    out = outcome(c, job_ids)
    republished = c.sql("SELECT count(*) FROM training_jobs WHERE id = ANY(:ids) AND "
                        "dispatches > 1", ids=job_ids)[0][0]
    republished_items = c.sql("SELECT count(*) FROM training_job_work_items WHERE job_id = "
                              "ANY(:ids) AND dispatches > 1", ids=job_ids)[0][0]
    reaper_lines = sum(line.count("published again") for line in
                       (c.host_logs(h.name) for h in c.worker_hosts))
    assert out["lost"] == 0 and out["duplicates"] == 0 and out["without_version"] == 0, out
    report(f"broker loss: jobs {out['jobs']} ({queued} queued at the restart), lost "
           f"{out['lost']}, duplicates {out['duplicates']}, redis away {away_s:.1f}s, all "
           f"done {recovery_s:.1f}s after the restart; republished by the reaper: "
           f"{republished} stages, {republished_items} work items ({reaper_lines} log "
           f"lines); {out['rerun_items']} work items re-run")
