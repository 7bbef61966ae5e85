"""The registry service on SQLite and PostgreSQL: registration, queries, lifecycle,
history, and promotions racing from threads and from processes."""

from __future__ import annotations

import multiprocessing
import queue
import re
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.timeutil import utcnow
from app.db import transaction
from app.models.registry import AuditEntry, ModelVersion, VersionStatusChange
from app.services import registry
from tests.support.registry_race import ProductionWatcher, process_promoter, promote_once

MODEL = "xgboost_btcusdt_1h"
GOOD = {
    "sharpe": 1.6,
    "win_rate": 0.56,
    "profit_factor": 1.5,
    "max_drawdown": 0.1,
    "trades": 80,
    "total_return": 0.3,
}


def register(url: str, **kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model_type": "xgboost",
        "symbol": "BTCUSDT",
        "timeframe": "1h",
        "metrics": GOOD,
        "actor": "test",
    }
    values.update(kw)
    with transaction(url, immediate=True) as session:
        return registry.register_version(session, **values)


def promote(url: str, version: str, model_id: str = MODEL, **kw: Any) -> dict[str, Any]:
    kw.setdefault("actor", "alice")
    kw.setdefault("reason", f"promote {version}")
    with transaction(url, immediate=True) as session:
        return registry.promote(session, model_id, version, **kw)


def rollback(url: str, target: str | None = None, model_id: str = MODEL) -> dict[str, Any]:
    with transaction(url, immediate=True) as session:
        return registry.rollback(session, model_id, target, actor="bob", reason="bad")


def production_version(url: str, model_id: str = MODEL) -> str | None:
    with transaction(url) as session:
        current = registry.get_production(session, model_id)
    return current["version"] if current else None


def assert_never_two_production(url: str, model_id: str = MODEL) -> int:
    """Replay the history: at no point may two versions be production. Returns #entries."""
    with transaction(url) as session:
        changes = session.scalars(
            select(VersionStatusChange)
            .where(VersionStatusChange.model_id == model_id)
            .order_by(VersionStatusChange.at, VersionStatusChange.id)
        ).all()
    in_production: set[str] = set()
    entries = 0
    for change in changes:
        if change.from_status == "production":
            in_production.discard(change.version)
        if change.to_status == "production":
            in_production.add(change.version)
            entries += 1
        assert len(in_production) <= 1, f"two production versions after {change.id}"
    return entries


# ---------------------------------------------------------------------------- register


def test_register_assigns_unique_versions_in_creation_order(db_url):
    versions = [register(db_url)["version"] for _ in range(5)]
    assert all(re.fullmatch(r"v\d{8}_\d{6}_\d{3}", v) for v in versions)
    assert versions == sorted(versions) and len(set(versions)) == 5

    first = register(db_url, symbol=" ethusdt ", timeframe="4h", model_type="lightgbm")
    assert first["model_id"] == "lightgbm_ethusdt_4h"
    assert first["symbol"] == "ETHUSDT"
    assert first["status"] == "candidate"
    # The registry fills in the promotion score (seed weights) when it is missing.
    assert 0 < first["metrics"]["promotion_score"] <= 100
    assert first["created_at"].endswith("Z")


def test_deleted_version_string_is_never_reused(db_url):
    a = register(db_url)["version"]
    b = register(db_url)["version"]
    with transaction(db_url, immediate=True) as session:
        registry.delete_version(session, MODEL, b, actor="admin", reason="oops")
    c = register(db_url)["version"]
    assert c not in (a, b) and c > b


def test_concurrent_registrations_never_collide(db_url):
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            # A plain (deferred) transaction: the registry must cope without the
            # caller's BEGIN IMMEDIATE on SQLite.
            with transaction(db_url) as session:
                results.append(
                    registry.register_version(
                        session, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
                        metrics=GOOD, actor="t",
                    )["version"]
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 10 and len(set(results)) == 10


def test_register_is_idempotent_per_job(db_url):
    first = register(db_url, job_id="job-1", status="training", metrics={})
    again = register(db_url, job_id="job-1", status="candidate", metrics=GOOD)
    assert again == first
    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert registry.get_version_by_job(session, "job-1")["version"] == first["version"]
        assert registry.get_version_by_job(session, "job-2") is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"metrics": {**GOOD, "win_rate": 1.5}}, "metrics.win_rate"),
        ({"metrics": {**GOOD, "max_drawdown": -0.1}}, "metrics.max_drawdown"),
        ({"metrics": {**GOOD, "trades": 2.5}}, "metrics.trades"),
        ({"metrics": {**GOOD, "sharpe": float("nan")}}, "metrics.sharpe"),
        ({"metrics": {**GOOD, "sortino": "high"}}, "metrics.sortino"),
        ({"metrics": [1, 2]}, "metrics"),
        ({"model_type": "catboost"}, "model_type"),
        ({"timeframe": "2h"}, "timeframe"),
        ({"symbol": "BTC/USDT"}, "symbol"),
        ({"status": "production"}, "status"),
        ({"regime": "x" * 41}, "regime"),
        ({"artifact": {"uri": "file:///m", "sha256": "nothex", "format": "xgboost-ubj"}},
         "artifact.sha256"),
        ({"params": {"a": "nul\x00byte"}}, "params.a"),
        ({"actor": ""}, "actor"),
    ],
)
def test_register_refuses_bad_values_naming_the_field(sqlite_url, overrides, field):
    with pytest.raises(InvalidInput) as info:
        register(sqlite_url, **overrides)
    assert info.value.field == field


def test_register_keeps_documents_json_clean(db_url):
    version = register(
        db_url,
        params={"eta": 0.1, "weird": float("inf"), "depths": (3, 4)},
        metrics={**GOOD, "profit_factor": None, "sortino": 2},
        artifact={"uri": "file:///a.ubj", "sha256": "AB" * 32, "format": "xgboost-ubj"},
        evaluation={"folds": [{"sharpe": float("nan")}]},
        tags={"team": "quant"},
        regime="Trending_Up",
    )
    assert version["params"] == {"eta": 0.1, "weird": None, "depths": [3, 4]}
    assert version["metrics"]["profit_factor"] is None
    assert version["metrics"]["sortino"] == 2
    assert version["artifact"]["sha256"] == "ab" * 32
    assert version["evaluation"] == {"folds": [{"sharpe": None}]}
    assert version["regime"] == "trending_up"


# ---------------------------------------------------------------------------- lifecycle


def test_promote_retires_the_previous_one_and_records_everything(db_url):
    v1 = register(db_url)["version"]
    v2 = register(db_url, status="shadow")["version"]

    first = promote(db_url, v1, token="t1")
    assert first["noop"] is False and first["retired"] is None
    assert first["production"]["status"] == "production"

    second = promote(db_url, v2, actor="carol", reason="better sharpe")
    assert second["production"]["version"] == v2
    assert second["retired"]["version"] == v1 and second["retired"]["status"] == "retired"

    again = promote(db_url, v2)
    assert again["noop"] is True and again["retired"] is None

    with transaction(db_url) as session:
        one = registry.get_version(session, MODEL, v1, with_history=True)
        assert [(h["from_status"], h["to_status"]) for h in one["history"]] == [
            (None, "candidate"),
            ("candidate", "production"),
            ("production", "retired"),
        ]
        assert one["history"][2]["actor"] == "carol"
        audits = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "version.promoted")
            .order_by(AuditEntry.id)
        ).all()
        # The no-op writes no audit entry.
        assert [(a.version, a.actor) for a in audits] == [(v1, "alice"), (v2, "carol")]
        assert audits[0].details["token"] == "t1"
        assert audits[1].details["retired"] == v1
        assert registry.status_counts(session) == {
            "training": 0, "shadow": 0, "candidate": 0,
            "production": 1, "retired": 1, "failed": 0,
        }
    assert assert_never_two_production(db_url) == 2


def test_promote_rules_for_training_failed_and_unknown(db_url):
    training = register(db_url, status="training", metrics={})["version"]
    failed = register(db_url, status="failed", metrics={})["version"]
    with pytest.raises(Conflict, match="training"):
        promote(db_url, training)
    with pytest.raises(Conflict, match="force"):
        promote(db_url, failed)
    with pytest.raises(Conflict):
        promote(db_url, training, force=True)  # training never, even forced
    with pytest.raises(NotFound):
        promote(db_url, "v20000101_000000_001")
    with pytest.raises(NotFound):
        promote(db_url, training, model_id="xgboost_nothere_1h")
    with pytest.raises(NotFound):
        promote(db_url, training, model_id="not a model id\x00")

    forced = promote(db_url, failed, force=True)
    assert forced["production"]["version"] == failed
    with transaction(db_url) as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.version == failed)).one()
    assert entry.details["force"] is True and entry.details["from_status"] == "failed"


def test_set_status_pipeline_transitions(db_url):
    v = register(db_url, status="training", metrics={}, job_id="j-9")
    assert v["metrics"]["promotion_score"] is None
    with transaction(db_url, immediate=True) as session:
        done = registry.set_status(
            session, MODEL, v["version"], "candidate", actor="pipeline", reason="gate passed",
            metrics=GOOD, evaluation={"passed": True},
            artifact={"uri": "file:///m.ubj", "sha256": "0" * 64, "format": "xgboost-ubj"},
        )
    assert done["status"] == "candidate" and done["metrics"]["sharpe"] == 1.6
    assert done["metrics"]["promotion_score"] > 0
    assert done["artifact"]["uri"] == "file:///m.ubj"
    with transaction(db_url, immediate=True) as session:
        # Same status again (a redelivered task) is a no-op, not an error.
        registry.set_status(session, MODEL, v["version"], "candidate", actor="pipeline")
        with pytest.raises(Conflict, match="promote"):
            registry.set_status(session, MODEL, v["version"], "production", actor="pipeline")
        with pytest.raises(InvalidInput):
            registry.set_status(session, MODEL, v["version"], "bogus", actor="pipeline")
        history = registry.history(session, MODEL, v["version"])
    assert [h["to_status"] for h in history] == ["training", "candidate"]

    failed = register(db_url, status="failed", metrics={})["version"]
    with transaction(db_url, immediate=True) as session, pytest.raises(Conflict):
        registry.set_status(session, MODEL, failed, "candidate", actor="pipeline")


def test_delete_refuses_production_and_keeps_history(db_url):
    v1 = register(db_url)["version"]
    v2 = register(db_url)["version"]
    promote(db_url, v1)
    with transaction(db_url, immediate=True) as session, pytest.raises(Conflict):
        registry.delete_version(session, MODEL, v1, actor="admin")
    with transaction(db_url, immediate=True) as session:
        gone = registry.delete_version(session, MODEL, v2, actor="admin", reason="junk")
    assert gone["version"] == v2
    with transaction(db_url) as session:
        with pytest.raises(NotFound):
            registry.get_version(session, MODEL, v2)
        assert registry.history(session, MODEL, v2)[-1]["to_status"] == "deleted"
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "version.deleted")
        ).one()
    assert (entry.actor, entry.version, entry.reason) == ("admin", v2, "junk")


def test_rollback_restores_the_previous_production_version(db_url):
    v1, v2, v3, v4 = (register(db_url)["version"] for _ in range(4))
    with pytest.raises(Conflict, match="no production"):
        rollback(db_url)
    promote(db_url, v1)
    with pytest.raises(Conflict, match="no previous"):
        rollback(db_url)
    promote(db_url, v2)
    promote(db_url, v3)

    result = rollback(db_url)
    assert result["production"]["version"] == v2
    assert result["retired"]["version"] == v3
    assert production_version(db_url) == v2
    # A second rollback walks further back; it never returns to v3, the version just
    # rolled back from (no `kubectl rollout undo` toggle back to a bad model).
    assert rollback(db_url)["production"]["version"] == v1
    with pytest.raises(Conflict, match="no previous"):
        rollback(db_url)
    # A named target is a deliberate choice: it goes on top of the history...
    assert rollback(db_url, target=v4)["production"]["version"] == v4
    assert rollback(db_url, target=v4)["noop"] is True
    # ...so rolling it back returns to what was in production before it.
    assert rollback(db_url)["production"]["version"] == v1
    promote(db_url, v2)
    assert rollback(db_url)["production"]["version"] == v1
    with pytest.raises(NotFound):
        rollback(db_url, target="v19990101_000000_001")

    with transaction(db_url) as session:
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "version.rolled_back")
            .order_by(AuditEntry.id)
        ).all()
    assert [(e.version, e.details["from_version"], e.details["undo"], e.actor)
            for e in entries] == [
        (v2, v3, True, "bob"),
        (v1, v2, True, "bob"),
        (v4, v1, False, "bob"),
        (v1, v4, True, "bob"),
        (v1, v2, True, "bob"),
    ]
    assert_never_two_production(db_url)


def test_rollback_refuses_failed_or_deleted_targets(db_url):
    v1 = register(db_url)["version"]
    v2 = register(db_url)["version"]
    bad = register(db_url, status="failed", metrics={})["version"]
    promote(db_url, v1)
    promote(db_url, v2)
    with pytest.raises(Conflict, match="failed"):
        rollback(db_url, target=bad)
    with transaction(db_url, immediate=True) as session:
        registry.delete_version(session, MODEL, v1, actor="admin")
    with pytest.raises(Conflict, match="deleted"):
        rollback(db_url)
    assert production_version(db_url) == v2


def test_production_at_answers_who_when_and_why(db_url):
    v1 = register(db_url)["version"]
    v2 = register(db_url)["version"]
    before = utcnow()
    with transaction(db_url) as session:
        assert registry.production_at(session, MODEL, before) is None
        assert registry.model_known(session, MODEL)
        assert not registry.model_known(session, "xgboost_nothere_1h")
    promote(db_url, v1, actor="alice", reason="first")
    promote(db_url, v2, actor="carol", reason="second")
    rollback(db_url)  # v1 again, by bob

    with transaction(db_url) as session:
        changes = session.scalars(
            select(VersionStatusChange)
            .where(VersionStatusChange.to_status == "production")
            .order_by(VersionStatusChange.id)
        ).all()
        t1, t2, t3 = (c.at for c in changes)
        tick = timedelta(microseconds=1)

        def at(t):
            return registry.production_at(session, MODEL, t)

        assert at(t1 - tick) is None
        assert at(t1) == {"model_id": MODEL, "version": v1, "since": at(t1)["since"],
                          "actor": "alice", "reason": "first"}
        assert at(t2 - tick)["version"] == v1
        assert (at(t2)["version"], at(t2)["actor"], at(t2)["reason"]) == (v2, "carol", "second")
        assert (at(t3)["version"], at(t3)["actor"], at(t3)["reason"]) == (v1, "bob", "bad")
        assert at(utcnow() + timedelta(days=1))["version"] == v1


# ---------------------------------------------------------------------------- queries


def test_query_versions_filters_and_pages(db_url):
    a = register(db_url, metrics={**GOOD, "sharpe": 0.4})
    b = register(db_url, symbol="ETHUSDT", metrics={**GOOD, "sharpe": 2.0}, regime="ranging")
    c = register(db_url, model_type="lightgbm", timeframe="4h", status="shadow")
    d = register(db_url, status="training", metrics={})
    promote(db_url, a["version"])

    def versions(**filters: Any) -> list[str]:
        with transaction(db_url) as session:
            items, _ = registry.query_versions(
                session, registry.VersionQuery(**filters), limit=500
            )
        return [f"{i['model_id']}/{i['version']}" for i in items]

    def key(v: dict[str, Any]) -> str:
        return f"{v['model_id']}/{v['version']}"

    assert versions() == [key(d), key(c), key(b), key(a)]  # newest first
    assert versions(model_id=MODEL) == [key(d), key(a)]
    assert versions(model_id="garbage\x00") == []
    assert versions(model_type="lightgbm") == [key(c)]
    assert versions(symbol="ethusdt") == [key(b)]
    assert versions(timeframe="4h") == [key(c)]
    assert versions(status="production") == [key(a)]
    assert versions(status="shadow") == [key(c)]
    assert versions(regime="ranging") == [key(b)]
    assert versions(min_sharpe=1.0) == [key(c), key(b)]  # d has no sharpe: left out
    created_c = registry_time(c["created_at"])
    assert versions(created_after=created_c) == [key(d), key(c)]
    assert versions(created_before=created_c) == [key(b), key(a)]
    with pytest.raises(InvalidInput):
        versions(status="bogus")

    seen: list[str] = []
    after = None
    while True:
        with transaction(db_url) as session:
            items, after = registry.query_versions(session, limit=3, after_key=after)
        seen += [key(i) for i in items]
        if after is None:
            break
    assert seen == versions()


def registry_time(iso: str):
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------- races


def _race_setup(url: str, n: int) -> tuple[str, list[str]]:
    first = register(url)["version"]
    promote(url, first)  # so a reader must always see exactly one
    return first, [register(url, status="shadow" if i % 2 else "candidate")["version"]
                   for i in range(n)]


def _assert_race_outcome(url: str, first: str, targets: list[str], results: list[tuple]) -> None:
    assert all(kind == "ok" for _, kind, _ in results), results
    retired = [r["retired"]["version"] for _, _, r in results]
    final = production_version(url)
    # Serialized: each promotion retired the one before it, so the retired versions are
    # all distinct and, with the final one, are exactly everything that was promoted.
    assert len(set(retired)) == len(retired)
    assert set(retired) | {final} == set(targets) | {first}
    with transaction(url) as session:
        count = session.scalar(
            select(func.count()).where(
                ModelVersion.model_id == MODEL, ModelVersion.status == "production"
            )
        )
    assert count == 1
    assert assert_never_two_production(url) == len(targets) + 1


def test_twenty_promotions_racing_in_threads_leave_one_production(db_url):
    first, targets = _race_setup(db_url, 20)
    watcher = ProductionWatcher(db_url, MODEL)
    watcher.start()
    assert watcher.first_read.wait(60)
    start = threading.Barrier(len(targets))
    results: list[tuple] = []

    def work(version: str) -> None:
        start.wait(30)
        try:
            results.append((version, *promote_once(db_url, MODEL, version, f"t-{version}")))
        except BaseException as exc:
            results.append((version, "error", repr(exc)))

    threads = [threading.Thread(target=work, args=(v,)) for v in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    watcher.stop.set()
    watcher.join(30)
    assert watcher.error is None
    assert watcher.reads > 0 and watcher.counts == {1}, watcher.counts
    _assert_race_outcome(db_url, first, targets, results)


def test_ten_promotions_racing_in_processes_leave_one_production(db_url):
    # Ten spawned interpreters (each imports the app: seconds on 2 cores); the thread
    # race above runs twenty.
    first, targets = _race_setup(db_url, 10)
    ctx = multiprocessing.get_context("spawn")
    ready, results_q, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=process_promoter, args=(db_url, MODEL, v, ready, go, results_q))
        for v in targets
    ]
    for p in procs:
        p.start()
    watcher = ProductionWatcher(db_url, MODEL)
    try:
        deadline = time.monotonic() + 120
        for _ in procs:
            ready.get(timeout=max(1.0, deadline - time.monotonic()))
        watcher.start()
        assert watcher.first_read.wait(60)
        go.set()
        results = []
        for _ in procs:
            try:
                results.append(results_q.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"only {len(results)} of {len(procs)} promoters reported")
    finally:
        go.set()
        for p in procs:
            p.join(60)
        watcher.stop.set()
        if watcher.is_alive():
            watcher.join(30)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert watcher.error is None
    assert watcher.reads > 0 and watcher.counts == {1}, watcher.counts
    _assert_race_outcome(db_url, first, targets, results)
