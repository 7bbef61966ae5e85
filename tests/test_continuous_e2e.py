"""End to end on PostgreSQL + Redis with real processes: an external publisher (plain kombu)
sends drift.detected; `clm events consume` (a subprocess) starts a job; a real Celery
worker (subprocess) runs it and relays the outbox; an external subscriber (its own queue
bound to the topic exchange) receives training.started, evaluation.completed and
training.completed in causal order, each once by id; a malformed event lands in the
dead-letter record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from app.bus.outbox import make_envelope
from app.ml.data.synthetic import generate_ohlcv
from tests.support.continuous import make_production, seed_market, start
from tests.support.workers import REPO, WorkerSpec, running_workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture
def e2e(pg_url, redis_broker_url, make_settings):
    settings = make_settings(pg_url, CLM_BROKER_URL=redis_broker_url,
                             CLM_WORKER_CONCURRENCY="2")
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    flask_app = create_app(settings)
    with transaction(settings.database_url) as session:
        token = create_token(session, role="viewer", name="e2e-viewer")
    return settings, flask_app.test_client(), {"Authorization": f"Bearer {token}"}


def _consumer(log_path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "events", "consume"], cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=20)


def test_external_drift_event_runs_a_job_and_announces_it(e2e, tmp_path):
    from kombu import Connection, Exchange, Producer, Queue, binding

    from app.bus.inbound import inbound_queue

    settings, client, viewer = e2e
    frame = generate_ohlcv("random_walk", 1500, "1h", seed=21, start=start(1500))
    seed_market(settings, frame)
    production = make_production(settings, frame.iloc[:1300])
    model_id = production["model_id"]

    exchange = Exchange(settings.events_exchange, type="topic", durable=True)
    sub_queue = Queue(f"e2e-sub-{uuid.uuid4().hex[:6]}", exchange=exchange, durable=True,
                      bindings=[binding(exchange, routing_key="training.#"),
                                binding(exchange, routing_key="evaluation.#")])
    with Connection(settings.broker_url) as conn:
        channel = conn.channel()
        exchange(channel).declare()
        sub_queue(channel).declare()  # the external subscriber exists before anything
        inbound_queue(settings)(channel).declare()  # durable: waits for the consumer
        subscriber = conn.SimpleQueue(sub_queue)

        consumer = _consumer(tmp_path / "consumer.log")
        try:
            with running_workers([WorkerSpec("e2e-continuous", concurrency=2)],
                                 log_dir=tmp_path / "logs"):
                drift = make_envelope("drift.detected", {"model_id": model_id, "psi": 0.7},
                                      source="external-monitor")
                producer = Producer(channel, exchange=exchange)
                producer.publish(drift, routing_key="drift.detected", serializer="json",
                                 delivery_mode=2)
                producer.publish('{"id": "broken", "type": "drift.detected"}',
                                 routing_key="drift.detected",
                                 content_type="application/json", content_encoding="utf-8")

                def started_job() -> str | None:
                    items = client.get(f"/clm/triggers?model_id={model_id}",
                                       headers=viewer).get_json()["items"]
                    return items[0]["job_id"] if items else None

                job_id = wait_for(started_job, timeout=60, what="the drift decision")

                def finished() -> dict[str, Any] | None:
                    job = client.get(f"/clm/jobs/{job_id}", headers=viewer).get_json()
                    return job if job["status"] in ("succeeded", "failed") else None

                job = wait_for(finished, timeout=180, interval=0.3, what=f"job {job_id}")
                assert job["status"] == "succeeded", job.get("error")
                assert job["trigger_reason"] == "drift_detected"

                received: list[dict[str, Any]] = []
                wanted = {"training.started", "evaluation.completed", "training.completed"}

                def all_three() -> bool:
                    try:
                        message = subscriber.get(block=True, timeout=0.5)
                    except subscriber.Empty:
                        return False
                    body = message.payload
                    received.append(body if isinstance(body, dict) else json.loads(body))
                    message.ack()
                    mine = {e["type"] for e in received if e["payload"].get("job_id") == job_id}
                    return wanted <= mine

                wait_for(all_three, timeout=60, interval=0.0, what="the three job events")
                # Duplicates would arrive right behind; give them a moment to show up.
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    try:
                        message = subscriber.get(block=True, timeout=0.5)
                    except subscriber.Empty:
                        continue
                    received.append(message.payload)
                    message.ack()

                dead = wait_for(lambda: client.get("/clm/events/dead-letters",
                                                   headers=viewer).get_json()["items"],
                                timeout=30, what="the dead letter")
        finally:
            code = _stop(consumer)
            subscriber.close()
            sub_queue(channel).delete()

    mine = [e for e in received if e["payload"].get("job_id") == job_id]
    assert [e["type"] for e in mine] == ["training.started", "evaluation.completed",
                                         "training.completed"]
    assert len({e["id"] for e in mine}) == 3  # each once, by id
    for e in mine:
        assert set(e) == {"id", "type", "occurred_at", "source", "payload"}
        assert e["payload"]["model_id"] == model_id
    assert mine[-1]["payload"]["version"] == job["version"]
    # What was published is what the outbox holds, marked as published.
    served = client.get("/clm/events?published=true&limit=500",
                        headers=viewer).get_json()["items"]
    assert {e["id"] for e in mine} <= {e["id"] for e in served}

    assert len(dead) == 1 and dead[0]["event_id"] == "broken"
    assert "occurred_at" in dead[0]["reason"]
    log = (tmp_path / "consumer.log").read_text()
    assert code == 0, log
    assert '"status": "processed"' in log and '"status": "dead_letter"' in log
