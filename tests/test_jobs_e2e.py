"""End to end through HTTP and real worker processes, on the embedded default (SQLite +
filesystem broker) and on PostgreSQL + Redis: planted signal → candidate with artifact and
lineage; random walk → failed at the gate; duplicate submission → 409; duplicate delivery
→ one run; bad requests → 4xx; a retrain with a production champion → champion folds."""

from __future__ import annotations

import pytest

from app.flows.pipeline import enqueue_job
from app.ml.artifacts import ArtifactStore
from app.ml.trainers import get_trainer, load_model
from tests.support.pipeline import SPAN_DAYS, make_backend, seed_market, wait_job
from tests.support.workers import WorkerSpec, running_workers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SMALL = {"n_estimators": 40, "max_depth": 3}


def _train(backend, model_type, symbol, **extra):
    body = {"model_type": model_type, "symbol": symbol, "timeframe": "1h",
            "dataset_span_days": SPAN_DAYS, "params": SMALL, **extra}
    return backend.client.post("/clm/train", json=body, headers=backend.auth("operator"))


@pytest.mark.parametrize("backend_name", ["embedded", "postgres_redis"])
def test_pipeline_end_to_end(backend_name, request, make_settings, tmp_path):
    backend = make_backend(request, make_settings, backend_name)
    seed_market(backend.settings)
    specs = [
        # `clm worker` and plain `celery` are interchangeable.
        WorkerSpec("steps", ("data", "evaluate", "default"), 1, via_clm=True),
        WorkerSpec("train", ("train",), 2),
    ]
    with running_workers(specs, log_dir=tmp_path / "logs"):
        r = _train(backend, "xgboost", "PLANTED")
        assert r.status_code == 202, r.get_json()
        planted = r.get_json()["job_id"]
        enqueue_job(planted, backend.settings)  # a duplicate delivery of the same step

        dup = _train(backend, "xgboost", "PLANTED", trigger_reason="drift_detected")
        assert dup.status_code == 409 and dup.get_json()["job_id"] == planted

        r = _train(backend, "lightgbm", "RANDOM")
        assert r.status_code == 202
        noise = r.get_json()["job_id"]

        for body, field in [({"symbol": "NODATA"}, "symbol"),
                            ({"dataset_span_days": 400}, "dataset_span_days"),
                            ({"model_type": "other"}, "params.trainer"),
                            ({"params": {"max_depth": 99}}, "params.max_depth")]:
            bad = {"model_type": "xgboost", "symbol": "RANDOM", "timeframe": "1h",
                   "dataset_span_days": SPAN_DAYS, **body}
            r = backend.client.post("/clm/train", json=bad, headers=backend.auth("operator"))
            assert r.status_code == 422 and r.get_json()["errors"][0]["field"] == field

        job = wait_job(backend, planted)
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"] == 1.0 and job["error"] is None
        assert [s["status"] for s in job["steps"]] == ["succeeded"] * 10
        assert all(s["started_at"] and s["finished_at"] and s["duration_s"] >= 0
                   for s in job["steps"])
        # The duplicate message found the job claimed (or done) and did nothing.
        assert {s["name"]: s["attempts"] for s in job["steps"]}["validate_request"] == 1
        assert job["attempts"] == 1
        evaluation = job["evaluation"]
        assert evaluation["passed"] is True and evaluation["failed_criteria"] == []
        assert evaluation["metrics"]["trades"] >= 50 and evaluation["promotion_score"] > 0
        assert job["version_status"] == "candidate"
        assert {(i["kind"], i["status"]) for i in job["folds"]["items"]} == {
            ("fold", "done"), ("final", "done")}
        assert all(i["worker"].startswith("train@") for i in job["folds"]["items"])

        v1 = job["version"]
        r = backend.client.get(f"/clm/models/xgboost_planted_1h/versions/{v1}",
                               headers=backend.auth("viewer"))
        version = r.get_json()
        assert version["status"] == "candidate"  # never production without a promote
        artifact = version["artifact"]
        assert artifact["format"] == "xgboost-ubj"
        lineage = version["lineage"]
        assert lineage["job"]["job_id"] == planted
        assert lineage["dataset"]["hash"] and lineage["dataset"]["symbol"] == "PLANTED"
        assert lineage["libraries"]["xgboost"]
        model = load_model(ArtifactStore(backend.settings.artifact_root),
                           get_trainer("xgboost"), artifact["uri"], artifact["sha256"])
        assert model.num_boosted_rounds() == SMALL["n_estimators"]

        job = wait_job(backend, noise)
        assert job["status"] == "succeeded", job["error"]
        assert job["evaluation"]["passed"] is False
        failed = {c["name"] for c in job["evaluation"]["failed_criteria"]}
        assert "sharpe" in failed
        assert job["version_status"] == "failed"
        r = backend.client.get(f"/clm/models/lightgbm_random_1h/versions/{job['version']}",
                               headers=backend.auth("viewer"))
        assert r.get_json()["status"] == "failed"

        # Promote v1 by hand; a retrain is then compared with it on the same folds.
        r = backend.client.post("/clm/promote", headers=backend.auth("admin"), json={
            "model_id": "xgboost_planted_1h", "version": v1, "promoted_by": "e2e",
            "reason": "passed the gate"})
        assert r.status_code == 200, r.get_json()
        r = _train(backend, "xgboost", "PLANTED", trigger_reason="periodic",
                   params={"n_estimators": 30, "max_depth": 3})
        assert r.status_code == 202
        retrain = wait_job(backend, r.get_json()["job_id"])
        assert retrain["status"] == "succeeded", retrain["error"]
        kinds = [i["kind"] for i in retrain["folds"]["items"]]
        assert kinds.count("champion") == kinds.count("fold") == 3
        champion = retrain["evaluation"]["champion"]
        assert champion["version"] == v1 and champion["champion_sharpe"] is not None
        assert retrain["version_status"] in ("candidate", "shadow", "failed")

    r = backend.client.get("/clm/models?model_id=xgboost_planted_1h",
                           headers=backend.auth("viewer"))
    versions = {v["version"]: v["status"] for v in r.get_json()["items"]}
    # One version per job, and production stayed where the person put it.
    assert len(versions) == 2 and versions[v1] == "production"
    r = backend.client.get("/clm/jobs?model_id=xgboost_planted_1h",
                           headers=backend.auth("viewer"))
    assert [j["job_id"] for j in r.get_json()["items"]][1] == planted
    metrics = backend.client.get("/metrics").get_data(as_text=True)
    assert ('clm_training_job_duration_seconds_count{model_type="xgboost",status="succeeded"} '
            '2.0') in metrics
    assert 'clm_training_step_duration_seconds_count{step="train_folds"} 3.0' in metrics
