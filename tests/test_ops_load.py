"""Load: training jobs submitted over HTTP by 20 concurrent clients to `clm serve`
(gunicorn) on PostgreSQL + Redis, run by real worker processes — none lost, none run
twice, and the POST /clm/train latency reported.

The full 1,000-job run is bench/bench_load.py; this is the same harness
(tests/support/load.py) with fewer jobs so the suite stays within its time budget.
"""

from __future__ import annotations

import json

import pytest

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

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(300)]

# Enough to keep 20 clients and 4 worker processes contending; bench/bench_load.py runs
# 1,000 for the figures.
JOBS = 60
CLIENTS = 20


def test_concurrent_clients_submit_jobs_none_lost_none_run_twice(
        pg_url, redis_broker_url, make_settings, tmp_path, record_property):
    settings = make_settings(pg_url, CLM_BROKER_URL=redis_broker_url,
                             CLM_WALK_FORWARD_FOLDS=2, CLM_TRAIN_THREADS=1,
                             CLM_LOG_LEVEL="WARNING")
    from app.db import transaction
    from app.services.auth import create_token

    with transaction(settings.database_url) as session:
        token = create_token(session, role="operator", name="load")
    names = symbols(JOBS)
    seed_symbols(settings, names)
    specs = [WorkerSpec("steps", ("data", "evaluate", "default"), 2),
             WorkerSpec("train", ("train",), 2)]
    with running_workers(specs, log_dir=tmp_path / "logs"), \
            running_api(tmp_path / "logs") as base:
        result = submit_all(base, token, names, clients=CLIENTS)
        assert not result.errors, result.errors[:5]
        refused = [(s.symbol, s.status, s.body) for s in result.submissions
                   if s.status != 202]
        assert not refused, refused[:5]
        _states, drain_s = wait_all_final(settings, result.accepted, timeout=240)

    report = audit(settings, result.accepted)
    figures = summary(result, report, drain_s)
    record_property("load", figures)
    print("\nload:", json.dumps(figures))
    assert len(result.accepted) == JOBS
    assert len(set(result.accepted)) == JOBS  # one job per POST
    assert report.jobs == JOBS and report.lost == []
    assert report.by_status == {"succeeded": JOBS}, report.by_status
    assert report.rerun_jobs == [] and report.rerun_steps == [] and report.rerun_items == []
    assert report.versions_per_job == {} and report.versions_per_model == {}
    assert figures["post_p99_ms"] < 5000  # a sanity bound for a loaded 2-core machine
