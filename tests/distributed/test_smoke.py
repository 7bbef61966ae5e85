"""End to end across hosts: a training job, a strategy search and live scoring, with the
API and beat on one host, workers on two others, PostgreSQL and Redis on a fourth —
nothing shared but those services (and the file store, see cluster.py)."""

from __future__ import annotations

import time

import pytest

from tests.distributed.cluster import owner_host
from tests.distributed.conftest import report
from tests.distributed.helpers import TINY, items, poll, seed, submit, wait_done

pytestmark = [pytest.mark.distributed, pytest.mark.services, pytest.mark.slow]


def test_job_search_and_live_scoring_run_across_the_hosts(lab_cluster):
    c = lab_cluster
    seed(c, "PLANTED")
    t0 = time.monotonic()
    job_id, _ = submit(c, "PLANTED", params=TINY)
    done = wait_done(c, job_id)
    train_s = time.monotonic() - t0
    assert done["status"] == "succeeded", done.get("error")
    owners = {owner_host((r.result or {}).get("worker")) for r in items(c, job_id)}
    assert owners <= {"w1", "w2"} and owners, owners
    # The files went to the object store on the services host, nowhere else.
    assert c.s3_keys("artifacts/") and c.s3_keys("data/PLANTED")
    version = done["version"]
    status, body, _ = c.http("GET", f"/clm/models/{done['model_id']}/versions/{version}")
    assert status == 200 and body["status"] in ("candidate", "shadow"), body

    # A strategy search: its trials run on the worker hosts, its front comes back.
    t1 = time.monotonic()
    status, search, _ = c.http("POST", "/clm/evolve", {
        "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
        "dataset_span_days": 120, "population": 4, "generations": 1})
    assert status == 202, search

    def search_done():
        s, b, _ = c.http("GET", f"/clm/searches/{search['search_id']}")
        assert s == 200, b
        return b if b["status"] in ("succeeded", "failed") else None

    result = poll(search_done, timeout=240, what="the strategy search")
    search_s = time.monotonic() - t1
    assert result["status"] == "succeeded", result.get("error")
    assert result["trials_evaluated"] >= 4

    # Live scoring: new bars in the store; beat's tick on a worker host scores the version.
    from app.ml.data.synthetic import generate_ohlcv

    t2 = time.monotonic()
    longer = generate_ohlcv("planted", 3048, seed=11)  # the same series, 48 bars on
    c.merge("PLANTED", longer)

    def scored():
        s, b, _ = c.http("GET", f"/clm/models/{done['model_id']}/versions/{version}/live")
        assert s == 200, b
        return b if b["bars"] >= 48 else None

    live = poll(scored, timeout=120, what="live scoring of the new bars")
    live_s = time.monotonic() - t2
    report(f"smoke: job {train_s:.1f}s on workers {sorted(owners)}; search "
           f"{result['trials_evaluated']} trials in {search_s:.1f}s; live: "
           f"{live['bars']} bars scored {live_s:.1f}s after they were stored")
