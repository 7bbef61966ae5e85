"""Load runs shared by tests/test_ops_load.py (small) and bench/bench_load.py (1,000 jobs):
many training jobs submitted over real HTTP by concurrent clients to `clm serve`, run by
real `clm worker` processes, then checked in the database for lost and doubled work.

One model_id per job (the one-active-job-per-model rule would 409 the rest), so every job
gets its own symbol with a tiny synthetic series and tiny trainer parameters: the load is
on the API, the broker, the database and the pipeline's hand-overs, not on training.

"Run twice" is counted from the database, where every claim is recorded: a job whose
stage was claimed more than once (attempts > 1), a pipeline step begun more than once,
a work item (fold / final fit) claimed more than once, or more than one model version
for a job or its model_id.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from app.core.config import Settings
from tests.support.workers import wait_for

BARS = 800  # 1h bars (~33 days) per symbol: enough rows for 2 walk-forward folds
SPAN_DAYS = 30
TINY_PARAMS: dict[str, Any] = {"n_estimators": 4, "max_depth": 2}
REPO = Path(__file__).resolve().parents[2]


def symbols(n: int) -> list[str]:
    return [f"LOAD{i:04d}" for i in range(n)]


def seed_symbols(settings: Settings, names: Sequence[str], bars: int = BARS) -> None:
    """A small random-walk series per symbol (different seeds) in the market data store."""
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    store = MarketDataStore(settings.data_dir)
    base = generate_ohlcv("random_walk", bars, seed=1)
    for i, name in enumerate(names):
        frame = base.copy()
        # Cheap per-symbol variation; the series only has to be valid OHLCV.
        scale = 1.0 + (i % 97) / 1000.0
        frame[["open", "high", "low", "close"]] *= scale
        store.merge(name, "1h", frame)


@dataclass
class Submission:
    symbol: str
    status: int
    latency_s: float
    job_id: str | None
    body: Any = None


@dataclass
class LoadResult:
    submissions: list[Submission]
    wall_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return sorted(s.latency_s for s in self.submissions)

    def percentile(self, q: float) -> float:
        values = self.latencies
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))
        return values[index]

    @property
    def accepted(self) -> list[str]:
        return [s.job_id for s in self.submissions if s.status == 202 and s.job_id]


def submit_all(base_url: str, token: str, names: Sequence[str], *, clients: int = 20,
               model_type: str = "xgboost", params: Mapping[str, Any] | None = None,
               span_days: int = SPAN_DAYS) -> LoadResult:
    """POST /clm/train once per symbol from `clients` threads (one HTTP session each)."""
    queue = list(reversed(names))
    lock = threading.Lock()
    results: list[Submission] = []
    errors: list[str] = []

    def client() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while True:
            with lock:
                if not queue:
                    return
                symbol = queue.pop()
            body = {"model_type": model_type, "symbol": symbol, "timeframe": "1h",
                    "dataset_span_days": span_days, "params": dict(params or TINY_PARAMS)}
            started = time.perf_counter()
            try:
                r = session.post(f"{base_url}/clm/train", json=body, timeout=60)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{symbol}: {exc}")
                continue
            latency = time.perf_counter() - started
            payload = r.json() if r.headers.get("content-type", "").endswith("json") else None
            job_id = payload.get("job_id") if isinstance(payload, dict) else None
            with lock:
                results.append(Submission(symbol, r.status_code, latency, job_id, payload))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(results, time.perf_counter() - started, errors)


def job_states(settings: Settings, job_ids: Sequence[str]) -> dict[str, str]:
    from sqlalchemy import select

    from app.db import transaction
    from app.models.jobs import TrainingJob

    with transaction(settings.database_url) as session:
        rows = session.execute(select(TrainingJob.id, TrainingJob.status)
                               .where(TrainingJob.id.in_(list(job_ids)))).all()
    return {job_id: getattr(status, "value", str(status)) for job_id, status in rows}


def wait_all_final(settings: Settings, job_ids: Sequence[str], timeout: float,
                   on_progress: Any = None) -> tuple[dict[str, str], float]:
    """Poll the database until every job is succeeded or failed (or the deadline)."""
    started = time.monotonic()
    states: dict[str, str] = {}

    def all_final() -> bool:
        states.update(job_states(settings, job_ids))
        final = sum(1 for s in states.values() if s in ("succeeded", "failed"))
        if on_progress is not None:
            on_progress(final, len(job_ids))
        return final == len(job_ids)

    # At the deadline the states so far are returned: the caller reports what is missing.
    with suppress(TimeoutError):
        wait_for(all_final, timeout=timeout, interval=0.5, what="every job to be final")
    return states, time.monotonic() - started


@dataclass
class Audit:
    """What the database says about a batch of jobs."""

    jobs: int
    by_status: dict[str, int]
    lost: list[str]  # accepted job ids with no row, or not final
    rerun_jobs: list[str]  # a stage claimed more than once
    rerun_steps: list[tuple[str, str, int]]  # (job, step, attempts > 1)
    rerun_items: list[tuple[str, str, int, int]]  # (job, kind, fold, attempts > 1)
    versions_per_job: dict[str, int]  # jobs with a number of versions != 1
    versions_per_model: dict[str, int]  # model_ids with != 1 version

    @property
    def duplicates(self) -> int:
        return (len(self.rerun_jobs) + len(self.rerun_steps) + len(self.rerun_items)
                + len(self.versions_per_job) + len(self.versions_per_model))


def audit(settings: Settings, job_ids: Sequence[str]) -> Audit:
    from sqlalchemy import func, select

    from app.db import transaction
    from app.models.jobs import TrainingJob, TrainingJobStep, TrainingJobWorkItem
    from app.models.registry import ModelVersion

    ids = list(job_ids)
    with transaction(settings.database_url) as session:
        jobs = session.execute(
            select(TrainingJob.id, TrainingJob.status, TrainingJob.attempts,
                   TrainingJob.model_id).where(TrainingJob.id.in_(ids))).all()
        steps = session.execute(
            select(TrainingJobStep.job_id, TrainingJobStep.name, TrainingJobStep.attempts)
            .where(TrainingJobStep.job_id.in_(ids), TrainingJobStep.attempts > 1)).all()
        items = session.execute(
            select(TrainingJobWorkItem.job_id, TrainingJobWorkItem.kind,
                   TrainingJobWorkItem.fold, TrainingJobWorkItem.attempts)
            .where(TrainingJobWorkItem.job_id.in_(ids), TrainingJobWorkItem.attempts > 1)
        ).all()
        per_job = dict(session.execute(
            select(ModelVersion.job_id, func.count()).where(ModelVersion.job_id.in_(ids))
            .group_by(ModelVersion.job_id)).all())
        model_ids = [m for _, _, _, m in jobs]
        per_model = dict(session.execute(
            select(ModelVersion.model_id, func.count())
            .where(ModelVersion.model_id.in_(model_ids))
            .group_by(ModelVersion.model_id)).all())
    found = {j: getattr(s, "value", str(s)) for j, s, _, _ in jobs}
    by_status: dict[str, int] = {}
    for status in found.values():
        by_status[status] = by_status.get(status, 0) + 1
    return Audit(
        jobs=len(found),
        by_status=by_status,
        lost=[j for j in ids if found.get(j) not in ("succeeded", "failed")],
        rerun_jobs=[j for j, _, attempts, _ in jobs if attempts > 1],
        rerun_steps=[(j, n, a) for j, n, a in steps],
        rerun_items=[(j, getattr(k, "value", str(k)), f, a) for j, k, f, a in items],
        versions_per_job={j: per_job.get(j, 0) for j in found if per_job.get(j, 0) != 1},
        versions_per_model={m: per_model.get(m, 0) for m in model_ids
                            if per_model.get(m, 0) != 1},
    )


def summary(result: LoadResult, audit_: Audit, drain_s: float) -> dict[str, Any]:
    lat = result.latencies
    total_s = result.wall_s + drain_s
    return {
        "jobs": len(result.submissions),
        "accepted": len(result.accepted),
        "post_p50_ms": round(result.percentile(50) * 1000, 1),
        "post_p99_ms": round(result.percentile(99) * 1000, 1),
        "post_max_ms": round(max(lat) * 1000, 1) if lat else None,
        "post_mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "submit_s": round(result.wall_s, 2),
        "posts_per_s": round(len(lat) / result.wall_s, 1) if result.wall_s else None,
        "all_final_s": round(total_s, 2),
        "jobs_per_s": round(len(result.accepted) / total_s, 2) if total_s else None,
        "by_status": audit_.by_status,
        "lost": len(audit_.lost),
        "duplicates": audit_.duplicates,
    }


@contextmanager
def running_api(log_dir: Path, env: Mapping[str, str] | None = None, *, workers: int = 2,
                threads: int = 8, ready_timeout: float = 60.0) -> Iterator[str]:
    """`clm serve` (gunicorn) on a free port; yields its base URL; always stopped."""
    from tests.support.private_services import free_port

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
             str(workers), "--threads", str(threads)],
            cwd=REPO, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"clm serve exited {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        with suppress(requests.RequestException):
            return requests.get(base + "/health", timeout=2).status_code == 200
        return False

    try:
        wait_for(healthy, timeout=ready_timeout, what="clm serve to answer /health")
        yield base
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
