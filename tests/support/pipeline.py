"""Helpers for end-to-end pipeline tests: a backend (embedded or PostgreSQL + Redis) with
its settings, Flask client and tokens; seeded synthetic market data; polling a job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from tests.support.workers import wait_for

# 3000 1h bars (125 days): the planted series clears the gate's 50-trade minimum out of
# sample, and each fold trains in well under a second with few trees.
BARS = 3000
SPAN_DAYS = 120


@dataclass
class Backend:
    name: str
    settings: Settings
    client: Any
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_backend(request: Any, make_settings: Callable[..., Settings], name: str,
                 **env: Any) -> Backend:
    """`embedded`: SQLite + filesystem broker. `postgres_redis`: fresh PG database + Redis."""
    # Several workers share this machine's cores: one training thread each (the workers
    # would otherwise each take cores ÷ their own concurrency and oversubscribe).
    env.setdefault("CLM_TRAIN_THREADS", 1)
    if name == "embedded":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        env.setdefault("CLM_BROKER_URL", request.getfixturevalue("redis_broker_url"))
    settings = make_settings(url, **env)
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    with transaction(settings.database_url) as session:
        tokens = {r: create_token(session, role=r, name=f"e2e-{r}")
                  for r in ("viewer", "operator", "admin")}
    return Backend(name, settings, flask_app.test_client(), tokens)


def seed_market(settings: Settings, bars: int = BARS) -> None:
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    store = MarketDataStore.from_settings(settings)
    store.merge("PLANTED", "1h", generate_ohlcv("planted", bars, seed=11))
    store.merge("RANDOM", "1h", generate_ohlcv("random_walk", bars, seed=12))


def wait_job(backend: Backend, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll GET /clm/jobs/{id} until it succeeded or failed."""

    def finished() -> dict[str, Any] | None:
        r = backend.client.get(f"/clm/jobs/{job_id}", headers=backend.auth("viewer"))
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        return body if body["status"] in ("succeeded", "failed") else None

    return wait_for(finished, timeout=timeout, interval=0.2, what=f"job {job_id}")


def run_job_inline(settings: Settings, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    """Run a training job's stages and work items in this process with the pipeline's own
    executors (what the Celery tasks call), until it finishes. Returns the job."""
    import time

    from app.db import transaction
    from app.flows import pipeline
    from app.services import jobs

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with transaction(settings.database_url) as session:
            job = jobs.get_job(session, job_id)
            todo = jobs.pending_dispatches(session, job_id)
        if job["status"] in ("succeeded", "failed"):
            return job
        for d in todo:
            if d.kind is None:
                pipeline.execute_stage(settings, d.job_id, d.task.rsplit(".", 1)[1])
            else:
                pipeline.execute_work_item(settings, d.job_id, d.kind, int(d.fold or 0))
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s}s")
