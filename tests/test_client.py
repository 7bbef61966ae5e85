"""The Python client (`from clm.client import Client`) against a real server: `clm serve`
(gunicorn) on PostgreSQL + Redis with real worker processes — train and wait, page the
versions, the report, promote, serving, download with the hash checked, rollback, jobs,
problem+json errors; and its 503 retry against a local HTTP server that answers 503."""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clm.client import ApiError, ArtifactHashMismatch, Client, Job, Version
from tests.support.load import running_api
from tests.support.pipeline import SPAN_DAYS, seed_market
from tests.support.workers import WorkerSpec, running_workers

SMALL = {"n_estimators": 20, "max_depth": 3}
ROOT = Path(__file__).resolve().parents[1]


def test_client_imports_nothing_but_the_standard_library():
    for path in (ROOT / "clm").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in ("__future__", "clm") or top in _stdlib(), (path.name, name)


def _stdlib() -> frozenset[str]:
    import sys
    return frozenset(sys.stdlib_module_names)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(300)
def test_client_against_a_real_server_and_workers(pg_url, redis_broker_url, make_settings,
                                                  tmp_path):
    settings = make_settings(pg_url, CLM_BROKER_URL=redis_broker_url, CLM_TRAIN_THREADS=1,
                             CLM_WALK_FORWARD_FOLDS=2, CLM_LOG_LEVEL="WARNING")
    from app.db import transaction
    from app.services.auth import create_token

    with transaction(settings.database_url) as session:
        tokens = {r: create_token(session, role=r, name=f"client-{r}")
                  for r in ("viewer", "operator", "admin")}
    seed_market(settings)
    specs = [WorkerSpec("client", ("data", "train", "evaluate", "default"), 2)]
    with running_workers(specs, log_dir=tmp_path / "logs"), \
            running_api(tmp_path / "logs", workers=1, threads=4) as base:
        operator = Client(base, tokens["operator"])
        admin = Client(base, tokens["admin"])
        viewer = Client(base, tokens["viewer"])

        job = operator.train_and_wait("xgboost", "PLANTED", "1h", SPAN_DAYS, params=SMALL,
                                      timeout_s=240, poll_s=0.2)
        assert isinstance(job, Job) and job.status == "succeeded", job.raw.get("error")
        assert job.version and job.model_id == "xgboost_planted_1h"
        model_id = job.model_id

        # A second job for the model while none is active, then a duplicate: 409 + job_id.
        second = operator.train("xgboost", "PLANTED", "1h", SPAN_DAYS, params=SMALL)
        with pytest.raises(ApiError) as conflict:
            operator.train("xgboost", "PLANTED", "1h", SPAN_DAYS, params=SMALL)
        assert conflict.value.status == 409 and conflict.value.extra["job_id"] == second.job_id
        second = operator.wait_job(second.job_id, timeout_s=240, poll_s=0.2)
        assert second.status == "succeeded"

        # Pages of one version each follow the cursor to both, newest first.
        first_page = viewer.versions(model_id=model_id, limit=1)
        assert len(first_page.items) == 1 and first_page.next_cursor
        every = list(viewer.iter_versions(model_id=model_id, page_size=1))
        assert [v.version for v in every] == [second.version, job.version]
        assert all(isinstance(v, Version) for v in every)
        assert viewer.jobs(model_id=model_id).items[0].job_id == second.job_id

        report = viewer.report(model_id, job.version)
        assert report["available"] is True and report["attributions"]
        assert report["trades"]["count"] == viewer.version(model_id, job.version).metrics[
            "trades"]

        promoted = admin.promote(model_id, job.version, reason="client test",
                                 promoted_by="alice", force=True)
        assert promoted["production"]["version"] == job.version
        admin.promote(model_id, second.version, reason="newer", promoted_by="alice",
                      force=True)
        serving = viewer.serving(model_id)
        assert serving["version"] == second.version
        data = viewer.download_artifact(model_id, second.version, tmp_path / "model.ubj")
        expected = viewer.version(model_id, second.version).artifact["sha256"]
        assert hashlib.sha256(data).hexdigest() == expected
        assert (tmp_path / "model.ubj").read_bytes() == data
        back = admin.rollback(model_id, reason="client test", rollback_by="alice")
        assert back["production"]["version"] == job.version
        assert viewer.serving(model_id)["version"] == job.version

        # Errors carry the problem+json detail.
        with pytest.raises(ApiError) as bad:
            operator.train("xgboost", "PLANTED", "1h", 0)
        assert bad.value.status == 422
        assert bad.value.errors[0]["field"] == "dataset_span_days"
        with pytest.raises(ApiError) as forbidden:
            viewer.promote(model_id, job.version, reason="no", promoted_by="bob")
        assert forbidden.value.status == 403 and forbidden.value.title
        with pytest.raises(ApiError) as missing:
            viewer.report(model_id, "v0")
        assert missing.value.status == 404 and missing.value.detail


class _Flaky(BaseHTTPRequestHandler):
    """503 for the first `fail` requests, then the canned answer for the path."""

    fail = 0
    seen: list[str] = []
    answers: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:  # http.server calls it by this name
        type(self).seen.append(self.path)
        if len(type(self).seen) <= type(self).fail:
            self._reply(503, json.dumps({"type": "about:blank", "title": "Unavailable",
                                         "status": 503, "detail": "database down"}).encode(),
                        {"Retry-After": "5", "Content-Type": "application/problem+json"})
            return
        status, body = type(self).answers.get(self.path.split("?")[0], (404, b"{}"))
        self._reply(status, body, {"Content-Type": "application/json"})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Handler", (_Flaky,), {"fail": 0, "seen": [], "answers": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_retries_503_with_bounded_backoff_then_raises(flaky):
    base, handler = flaky
    handler.answers["/clm/jobs/j1"] = (200, json.dumps({"job_id": "j1", "status": "queued",
                                                        "model_id": "m"}).encode())
    handler.fail = 2
    sleeps: list[float] = []
    client = Client(base, "t", retries=3, backoff_s=0.5, max_backoff_s=2.0,
                    sleep=sleeps.append)
    assert client.job("j1").status == "queued"
    assert len(handler.seen) == 3 and sleeps == [2.0, 2.0]  # Retry-After 5, capped at 2

    handler.seen.clear()
    handler.fail = 100
    sleeps.clear()
    with pytest.raises(ApiError) as down:
        client.job("j1")
    assert down.value.status == 503 and down.value.detail == "database down"
    assert len(handler.seen) == 4 and len(sleeps) == 3  # 1 + retries, then it gives up


def test_download_refuses_an_artifact_whose_hash_differs(flaky):
    base, handler = flaky
    version = {"model_id": "m", "version": "v1", "status": "candidate", "metrics": {},
               "artifact": {"uri": "x", "sha256": hashlib.sha256(b"right").hexdigest(),
                            "format": "xgboost-ubj"}}
    handler.answers["/clm/models/m/versions/v1"] = (200, json.dumps(version).encode())
    handler.answers["/clm/models/m/versions/v1/artifact"] = (200, b"wrong")
    with pytest.raises(ArtifactHashMismatch):
        Client(base, "t").download_artifact("m", "v1")
