"""What the distributed scenarios share: seeding series, submitting and awaiting jobs
over HTTP from the client host, and reading the outcome from the database."""

from __future__ import annotations

import time
from typing import Any

from tests.distributed.cluster import Cluster
from tests.support.workers import wait_for

TINY = {"n_estimators": 8, "max_depth": 3}


def seed(c: Cluster, symbol: str, kind: str = "planted", bars: int = 3000,
         seed_value: int = 11) -> None:
    """Store a synthetic series where every host reads market data (CLM_DATA_DIR, in
    the object store), over the lab's network."""
    from app.ml.data.synthetic import generate_ohlcv

    c.merge(symbol, generate_ohlcv(kind, bars, seed=seed_value))


def submit(c: Cluster, symbol: str, *, model_type: str = "xgboost", span: int = 120,
           params: dict[str, Any] | None = None) -> tuple[str, float]:
    status, body, seconds = c.http("POST", "/clm/train", {
        "model_type": model_type, "symbol": symbol, "timeframe": "1h",
        "dataset_span_days": span, "params": params or TINY})
    assert status == 202, body
    return body["job_id"], seconds


def job(c: Cluster, job_id: str) -> dict[str, Any]:
    status, body, _ = c.http("GET", f"/clm/jobs/{job_id}")
    assert status == 200, body
    return body


def wait_done(c: Cluster, job_id: str, timeout: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = job(c, job_id)
        return body if body["status"] in ("succeeded", "failed") else None

    return wait_for(finished, timeout=timeout, interval=0.25, what=f"job {job_id}")


def items(c: Cluster, job_id: str) -> list[Any]:
    return c.sql("SELECT kind, fold, status, attempts, lease_owner, result "
                 "FROM training_job_work_items WHERE job_id = :j ORDER BY kind, fold",
                 j=job_id)


def versions_per_job(c: Cluster, job_ids: list[str]) -> dict[str, int]:
    rows = c.sql("SELECT job_id, count(*) FROM model_versions WHERE job_id = ANY(:ids) "
                 "GROUP BY job_id", ids=list(job_ids))
    return {r[0]: int(r[1]) for r in rows}


def outcome(c: Cluster, job_ids: list[str]) -> dict[str, int]:
    """jobs, succeeded, lost (not succeeded), duplicates (a job with more than one
    version, or a model with more versions than jobs), re-run work items."""
    rows = c.sql("SELECT id, status, model_id FROM training_jobs WHERE id = ANY(:ids)",
                 ids=list(job_ids))
    per_job = versions_per_job(c, job_ids)
    models = {r[2] for r in rows}
    per_model = c.sql("SELECT model_id, count(*) FROM model_versions "
                      "WHERE model_id = ANY(:m) GROUP BY model_id", m=list(models))
    jobs_per_model: dict[str, int] = {}
    for r in rows:
        jobs_per_model[r[2]] = jobs_per_model.get(r[2], 0) + 1
    reruns = c.sql("SELECT count(*) FROM training_job_work_items "
                   "WHERE job_id = ANY(:ids) AND attempts > 1", ids=list(job_ids))[0][0]
    succeeded = sum(1 for r in rows if r[1] == "succeeded")
    return {
        "jobs": len(job_ids),
        "succeeded": succeeded,
        "lost": len(job_ids) - succeeded,
        "without_version": sum(1 for j in job_ids if per_job.get(j, 0) == 0),
        "duplicates": sum(1 for n in per_job.values() if n > 1)
        + sum(1 for m, n in per_model if n > jobs_per_model.get(m, 0)),
        "rerun_items": int(reruns),
    }


def p(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def poll(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    return wait_for(predicate, timeout=timeout, interval=interval, what=what)


def since(t0: float) -> float:
    return round(time.monotonic() - t0, 1)
