"""The event bus: the outbox is part of the caller's transaction, the relay publishes in
order with stable ids and loses nothing when killed, inbound events are handled once by
id, malformed ones are dead-lettered, live performance reports (API and event), and the
events API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.bus.outbox import emit, make_envelope
from app.db import transaction
from app.flows.inbound import process_inbound
from app.flows.outbox import relay_outbox
from app.models.continuous import DeadLetter, InboxEvent, OutboxEvent
from tests.support.workers import REPO


@pytest.fixture(autouse=True)
def _no_relay_kick():
    from app.bus.outbox import set_relay_kicker

    set_relay_kicker(None)
    yield
    set_relay_kicker(None)


@pytest.fixture(params=["embedded", "redis"])
def bus_settings(request, make_settings):
    """Settings on both brokers: SQLite + the filesystem broker, PostgreSQL + Redis."""
    if request.param == "embedded":
        return make_settings(request.getfixturevalue("sqlite_url"))
    return make_settings(request.getfixturevalue("pg_url"),
                         CLM_BROKER_URL=request.getfixturevalue("redis_broker_url"))


@pytest.fixture
def redis_settings(pg_url, redis_broker_url, make_settings):
    return make_settings(pg_url, CLM_BROKER_URL=redis_broker_url)


@contextmanager
def subscriber(settings, keys=("training.#", "evaluation.#", "model.#", "test.#")
               ) -> Iterator[Any]:
    """An external subscriber: its own durable queue bound to the topic exchange (plain
    kombu, nothing from CLM). Yields a function returning the envelopes received so far."""
    from kombu import Connection, Exchange, Queue, binding

    from app.bus.broker import transport_options

    exchange = Exchange(settings.events_exchange, type="topic", durable=True)
    name = f"test-subscriber-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, exchange=exchange, bindings=[binding(exchange, routing_key=k)
                                                     for k in keys], durable=True)
    received: list[dict[str, Any]] = []
    with Connection(settings.broker_url, transport_options=transport_options(settings)) as conn:
        channel = conn.channel()
        exchange(channel).declare()
        queue(channel).declare()
        simple = conn.SimpleQueue(queue)

        def drain(expect: int, timeout: float = 20.0) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout
            while len(received) < expect and time.monotonic() < deadline:
                try:
                    message = simple.get(block=True, timeout=0.5)
                except simple.Empty:
                    continue
                body = message.payload
                received.append(body if isinstance(body, dict) else json.loads(body))
                message.ack()
            return list(received)

        try:
            yield drain
        finally:
            queue(channel).delete()
            simple.close()


def _emit(settings, type: str, **payload: Any) -> str:
    with transaction(settings.database_url) as session:
        return emit(session, type, payload)


def _outbox(settings) -> list[OutboxEvent]:
    with transaction(settings.database_url) as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


# -- outbox -----------------------------------------------------------------------------
def test_emit_commits_and_rolls_back_with_the_callers_transaction(settings):
    with pytest.raises(RuntimeError), transaction(settings.database_url) as session:
        emit(session, "test.rolled_back", {"n": 1})
        raise RuntimeError("the change failed")
    assert _outbox(settings) == []
    event_id = _emit(settings, "test.kept", n=2, when=datetime(2025, 1, 1, tzinfo=UTC))
    [row] = _outbox(settings)
    envelope = row.envelope()
    assert set(envelope) == {"id", "type", "occurred_at", "source", "payload"}
    assert envelope["id"] == event_id and envelope["type"] == "test.kept"
    assert envelope["payload"] == {"n": 2, "when": "2025-01-01T00:00:00Z"}
    assert envelope["occurred_at"].endswith("Z") and envelope["source"] == "clm"
    assert row.published_at is None
    with pytest.raises(ValueError, match="dotted"), transaction(settings.database_url) as s:
        emit(s, "Not A Type", {})
    with pytest.raises(ValueError, match="JSON"), transaction(settings.database_url) as s:
        emit(s, "test.bad", {"x": object()})


def test_promotion_and_rollback_are_announced_in_the_same_transaction(settings):
    from app.core.errors import NotFound
    from app.services import registry

    metrics = {"sharpe": 1.0, "win_rate": 0.5, "profit_factor": 1.2, "max_drawdown": 0.1,
               "trades": 10, "total_return": 0.1}
    with transaction(settings.database_url, immediate=True) as session:
        v1 = registry.register_version(session, model_type="xgboost", symbol="BTCUSDT",
                                       timeframe="1h", metrics=metrics, actor="t")
        v2 = registry.register_version(session, model_type="xgboost", symbol="BTCUSDT",
                                       timeframe="1h", metrics=metrics, actor="t")
    for v in (v1, v2):
        with transaction(settings.database_url, immediate=True) as session:
            registry.promote(session, v["model_id"], v["version"], actor="alice", reason="r")
    with pytest.raises(NotFound), transaction(settings.database_url, immediate=True) as s:
        registry.promote(s, v1["model_id"], "v99999999_000000_001", actor="a", reason="r")
    with transaction(settings.database_url, immediate=True) as session:
        registry.rollback(session, v1["model_id"], actor="bob", reason="bad fills")
    events = [(e.type, e.payload["version"], e.payload["retired"]) for e in _outbox(settings)]
    assert events == [("model.promoted", v1["version"], None),
                      ("model.promoted", v2["version"], v1["version"]),
                      ("model.rolled_back", v1["version"], v2["version"])]
    assert _outbox(settings)[-1].payload["reason"] == "bad fills"


# -- relay ------------------------------------------------------------------------------
def test_relay_publishes_in_order_with_the_event_ids(bus_settings):
    settings = bus_settings
    with subscriber(settings) as received:
        ids = [_emit(settings, t, n=i) for i, t in enumerate(
            ["training.started", "evaluation.completed", "training.completed"])]
        result = relay_outbox(settings)
        assert result.published == 3 and result.error is None
        got = received(3)
        assert [e["id"] for e in got] == ids
        assert [e["type"] for e in got] == ["training.started", "evaluation.completed",
                                            "training.completed"]
        assert all(e["payload"]["n"] == i for i, e in enumerate(got))
        assert all(row.published_at is not None for row in _outbox(settings))
        assert relay_outbox(settings).published == 0
        assert received(4, timeout=1.0) == got  # nothing published twice


_RELAY_THEN_DIE = """
import os, signal
from app.core.config import get_settings
from app.flows.outbox import relay_outbox
die = lambda ids: os.kill(os.getpid(), signal.SIGKILL)
relay_outbox(get_settings(), **{{"{hook}": die}})
"""


def _relay_subprocess(hook: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _RELAY_THEN_DIE.format(hook=hook)],
                          cwd=REPO, env={**os.environ}, timeout=60, capture_output=True)
    return proc.returncode


def test_relay_killed_after_publishing_loses_nothing_and_resends_the_same_ids(
        redis_settings):
    settings = redis_settings
    with subscriber(settings) as received:
        ids = [_emit(settings, "training.started", n=i) for i in range(2)]
        # Publishes both, then dies (SIGKILL) before marking them published.
        assert _relay_subprocess("after_publish") == -signal.SIGKILL
        first = received(2)
        assert [e["id"] for e in first] == ids
        assert all(row.published_at is None for row in _outbox(settings))
        # The next relay sends them again: duplicates, with the same ids.
        assert relay_outbox(settings).published == 2
        both = received(4)
        assert [e["id"] for e in both] == ids + ids
        assert all(row.published_at is not None for row in _outbox(settings))


def test_relay_killed_before_publishing_loses_nothing(redis_settings):
    settings = redis_settings
    with subscriber(settings) as received:
        event_id = _emit(settings, "training.completed", n=1)
        assert _relay_subprocess("before_publish") == -signal.SIGKILL
        assert received(1, timeout=1.0) == []
        assert relay_outbox(settings).published == 1
        assert [e["id"] for e in received(1)] == [event_id]


# -- inbound ----------------------------------------------------------------------------
def _market_and_production(settings) -> dict[str, Any]:
    from app.ml.data.synthetic import generate_ohlcv
    from app.services import registry
    from tests.support.continuous import seed_market, start

    seed_market(settings, generate_ohlcv("random_walk", 1500, "1h", seed=2, start=start(1500)))
    metrics = {"sharpe": 1.0, "win_rate": 0.5, "profit_factor": 1.2, "max_drawdown": 0.1,
               "trades": 10, "total_return": 0.1}
    with transaction(settings.database_url, immediate=True) as session:
        v = registry.register_version(session, model_type="xgboost", symbol="BTCUSDT",
                                      timeframe="1h", metrics=metrics, actor="t")
        registry.promote(session, v["model_id"], v["version"], actor="t", reason="t")
    return v


def _counts(settings) -> tuple[int, int]:
    with transaction(settings.database_url) as session:
        return (session.scalar(select(func.count()).select_from(InboxEvent)),
                session.scalar(select(func.count()).select_from(DeadLetter)))


def test_inbound_events_are_handled_once_by_id(settings, client, auth):
    from app.models.jobs import TrainingJob

    v = _market_and_production(settings)
    drift = make_envelope("drift.detected", {"model_id": v["model_id"], "psi": 0.4},
                          source="monitor")
    first = process_inbound(settings, json.dumps(drift).encode())
    assert first.status == "processed" and len(first.job_ids) == 1
    assert first.outcome["outcome"] == "triggered"
    again = process_inbound(settings, json.dumps(drift))
    assert again.status == "duplicate" and again.job_ids == []
    assert _counts(settings) == (1, 0)
    with transaction(settings.database_url) as session:  # the redelivery started nothing
        assert session.scalars(select(TrainingJob.id)).all() == first.job_ids

    # A person asks for training while the drift job runs: recorded and coalesced.
    train = make_envelope("training.requested", {
        "model_type": "xgboost", "symbol": "btcusdt", "timeframe": "1h",
        "dataset_span_days": 60, "params": {"n_estimators": 10}})
    manual = process_inbound(settings, train)
    assert manual.status == "processed" and manual.outcome["outcome"] == "coalesced"
    assert manual.outcome["job_id"] == first.job_ids[0]
    decisions = client.get("/clm/triggers", headers=auth("viewer")).get_json()["items"]
    assert [(d["reason"], d["outcome"], d["source"]) for d in decisions] == [
        ("manual", "coalesced", "event"), ("drift_detected", "triggered", "event")]
    assert decisions[1]["requested_by"] == "event:monitor"


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"type": "drift.detected", "payload": {}}), "id"),
    (json.dumps({"id": "e1", "type": "drift.detected", "occurred_at": "yesterday",
                 "source": "x", "payload": {}}), "occurred_at"),
    (json.dumps({"id": "e2", "type": "drift.detected", "occurred_at": "2025-01-01T00:00:00",
                 "source": "x", "payload": {}}), "timezone"),
    (json.dumps(make_envelope("model.exploded", {})), "unsupported event type"),
    (json.dumps(make_envelope("drift.detected", {"symbol": "BTCUSDT"})),
     "model_id, or model_type"),
    (json.dumps(make_envelope("drift.detected", {"model_id": "nonsense"})), "not a model id"),
    (json.dumps(make_envelope("training.requested", {"model_type": "xgboost"})),
     "payload.symbol"),
    (json.dumps(make_envelope("regime.changed", {"model_id": "xgboost_btcusdt_1h",
                                                 "regime": "Bad Regime!"})), "payload.regime"),
    (json.dumps(make_envelope("performance.reported", {"model_id": "xgboost_btcusdt_1h",
                                                       "returns": [0.1, "x"]})),
     "payload.returns"),
])
def test_malformed_events_land_in_the_dead_letter_record(sqlite_url, make_settings, body,
                                                         reason):
    settings = make_settings(sqlite_url)
    result = process_inbound(settings, body, routing_key="drift.detected")
    assert result.status == "dead_letter" and reason in result.reason
    with transaction(settings.database_url) as session:
        [dead] = session.scalars(select(DeadLetter)).all()
        assert reason in dead.reason and dead.routing_key == "drift.detected"
        assert dead.body  # the raw message is kept for inspection
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 0


def test_dead_letters_are_served_by_the_api(settings, client, auth):
    process_inbound(settings, b"garbage", routing_key="drift.detected")
    body = client.get("/clm/events/dead-letters", headers=auth("viewer")).get_json()
    assert len(body["items"]) == 1 and "not JSON" in body["items"][0]["reason"]
    assert body["items"][0]["body"] == "garbage"


def test_consumer_reads_the_bus(redis_settings):
    """`consume_events` on its durable queue: a valid and a malformed message, both acked."""
    from kombu import Connection, Producer

    from app.bus.inbound import inbound_queue
    from app.bus.relay import exchange
    from app.flows.inbound import consume_events

    settings = redis_settings
    _market_and_production(settings)
    with Connection(settings.broker_url) as conn:
        channel = conn.channel()
        inbound_queue(settings)(channel).declare()
        producer = Producer(channel, exchange=exchange(settings))
        good = make_envelope("drift.detected", {"model_id": "xgboost_btcusdt_1h"})
        producer.publish(good, routing_key="drift.detected", serializer="json")
        producer.publish("{broken", routing_key="drift.detected",
                         content_type="application/json", content_encoding="utf-8")
    results: list[Any] = []
    handled = consume_events(settings, max_messages=2, idle_timeout=10,
                             on_result=results.append)
    assert handled == 2
    assert [r.status for r in results] == ["processed", "dead_letter"]
    assert results[0].event_id == good["id"]
    assert _counts(settings) == (1, 1)


# -- live performance -------------------------------------------------------------------
def _live(returns: list[float], **extra: Any) -> dict[str, Any]:
    return {"model_id": "xgboost_btcusdt_1h", "returns": returns, **extra}


def test_live_report_degrades_and_the_guard_rolls_back(db_url, make_settings, client_for):
    settings = make_settings(db_url, CLM_AUTO_ROLLBACK="1", CLM_AUTO_ROLLBACK_SHARPE_FLOOR="0",
                             CLM_PERFORMANCE_MIN_TRADES="5")
    client, auth = client_for(settings)
    v1 = _market_and_production(settings)
    v2 = _market_and_production(settings)  # v2 replaced v1 in production
    losing = [-0.002, 0.001, -0.003, 0.0005, -0.002, -0.001] * 10

    few = client.post("/clm/performance", json=_live(losing[:10], trades=2),
                      headers=auth("operator"))
    assert few.status_code == 201
    assert few.get_json()["rolling"]["degraded"] is False  # 2 trades: not enough to judge

    r = client.post("/clm/performance", json=_live(losing, trades=8), headers=auth("operator"))
    assert r.status_code == 201, r.get_json()
    out = r.get_json()
    assert out["rolling"]["trades"] == 10 and out["rolling"]["sharpe"] < 0
    assert out["rolling"]["degraded"] is True
    assert out["decision"]["reason"] == "performance_degraded"
    assert out["decision"]["outcome"] == "triggered"
    assert out["rollback"]["rolled_back"] is True
    assert out["rollback"]["production"] == v1["version"]
    assert out["report"]["version"] == v2["version"]

    audit = client.get(f"/clm/audit?model_id={v1['model_id']}",
                       headers=auth("viewer")).get_json()["items"]
    rolled = [a for a in audit if a["action"] == "version.rolled_back"]
    assert rolled and "auto-rollback guard" in rolled[0]["reason"]
    assert rolled[0]["actor"] == "clm-performance-guard"
    assert any(e.type == "model.rolled_back" for e in _outbox(settings))

    reports = client.get("/clm/performance?source=live", headers=auth("viewer")).get_json()
    assert len(reports["items"]) == 2


def test_live_report_input_errors(settings, client, auth):
    assert client.post("/clm/performance", json=_live([0.1]),
                       headers=auth("viewer")).status_code == 403
    unknown = client.post("/clm/performance", json=_live([0.01, 0.02]),
                          headers=auth("operator"))
    assert unknown.status_code == 404
    bad = client.post("/clm/performance", json={"model_id": "xgboost_btcusdt_1h"},
                      headers=auth("operator"))
    assert bad.status_code == 422
    nan = client.post("/clm/performance", data='{"model_id": "xgboost_btcusdt_1h", '
                      '"returns": [NaN, 0.1]}', content_type="application/json",
                      headers=auth("operator"))
    assert nan.status_code in (400, 422)
    from app.services import registry

    with transaction(settings.database_url, immediate=True) as session:
        registry.register_version(session, model_type="xgboost", symbol="BTCUSDT",
                                  timeframe="1h", metrics={"sharpe": 1.0, "trades": 3,
                                                           "win_rate": 0.5,
                                                           "profit_factor": 1.1,
                                                           "max_drawdown": 0.1,
                                                           "total_return": 0.0}, actor="t")
    none = client.post("/clm/performance", json=_live([0.01, 0.02]), headers=auth("operator"))
    assert none.status_code == 409


def test_live_report_by_event_is_idempotent(settings):
    _market_and_production(settings)
    envelope = make_envelope("performance.reported", _live([0.001, -0.002, 0.003],
                                                           trades=1))
    assert process_inbound(settings, envelope).status == "processed"
    assert process_inbound(settings, envelope).status == "duplicate"
    from app.models.continuous import PerformanceReport

    with transaction(settings.database_url) as session:
        [report] = session.scalars(select(PerformanceReport)).all()
    assert report.source == "live" and report.event_id == envelope["id"]


# -- events API -------------------------------------------------------------------------
def test_events_api_filters_and_pages(settings, client, auth):
    for i in range(3):
        _emit(settings, "training.started", n=i)
    _emit(settings, "training.completed", n=9)
    with transaction(settings.database_url) as session:
        first = session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).first()
        first.published_at = datetime.now(UTC)
    items = client.get("/clm/events", headers=auth("viewer")).get_json()["items"]
    assert [e["type"] for e in items] == ["training.completed"] + ["training.started"] * 3
    started = client.get("/clm/events?type=training.started&limit=2",
                         headers=auth("viewer")).get_json()
    assert len(started["items"]) == 2 and started["next_cursor"]
    rest = client.get(f"/clm/events?type=training.started&limit=2&cursor="
                      f"{started['next_cursor']}", headers=auth("viewer")).get_json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    published = client.get("/clm/events?published=true", headers=auth("viewer")).get_json()
    assert [e["payload"]["n"] for e in published["items"]] == [0]
    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/clm/events", query_string={"since": since},
                      headers=auth("viewer")).get_json()["items"] == []
    naive = client.get("/clm/events?since=2025-01-01T00:00:00", headers=auth("viewer"))
    assert naive.status_code == 422 and naive.get_json()["errors"][0]["field"] == "since"
    assert client.get("/clm/events").status_code == 401


@pytest.fixture
def client_for():
    """A Flask client and auth helper for settings built inside the test."""

    def build(settings):
        from app import create_app
        from app.services.auth import create_token

        flask_app = create_app(settings)
        flask_app.config["TESTING"] = True
        with transaction(settings.database_url) as session:
            tokens = {r: create_token(session, role=r, name=f"t-{r}")
                      for r in ("viewer", "operator", "admin")}
        return flask_app.test_client(), lambda role: {
            "Authorization": f"Bearer {tokens[role]}"}

    return build
