"""Issue 19, finding 2: a series file or an artifact that cannot be read is answered
clearly and found by `verify`.

A truncated Parquet series: POST /clm/train (and /clm/evolve) answer 409 problem+json
naming the series (the request is valid; the store's state forbids it until the series
is re-imported or restored) and queue no job; `clm data list` lists every readable
series and marks the broken one; `clm data verify` reports every problem and exits 1.
A corrupted or missing artifact: `clm artifacts verify` re-hashes every artifact the
registry refers to and reports it, naming the versions, and exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.core.config import Settings
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore, SeriesUnreadable
from tests.support.pipeline import seed_market
from tests.test_cli_data_backtest import clm
from tests.test_data_store import bars


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken(sqlite_url: str, make_settings: Callable[..., Settings]) -> Settings:
    """PLANTED 1h and RANDOM 1h stored; RANDOM's file truncated as by a disk fault."""
    settings = make_settings(sqlite_url)
    seed_market(settings, bars=600)
    truncate(MarketDataStore(settings.data_dir).path_for("RANDOM", "1h"))
    return settings


def test_the_store_names_the_unreadable_series(broken: Settings) -> None:
    store = MarketDataStore(broken.data_dir)
    for call in (lambda: store.read("RANDOM", "1h"), lambda: store.coverage("RANDOM", "1h"),
                 lambda: store.gap_counts("RANDOM", "1h"),
                 lambda: store.merge("RANDOM", "1h", bars(range(3)))):
        with pytest.raises(SeriesUnreadable) as info:
            call()
        assert (info.value.symbol, info.value.timeframe) == ("RANDOM", "1h")
        assert info.value.status == 409 and "RANDOM 1h" in info.value.detail
    covered, unreadable = store.list_all()
    assert [c.symbol for c in covered] == ["PLANTED"]
    assert [(p.symbol, p.timeframe) for p in unreadable] == [("RANDOM", "1h")]


def test_train_on_an_unreadable_series_is_a_409_and_queues_nothing(broken: Settings) -> None:
    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    app = create_app(broken)
    with transaction(broken.database_url) as session:
        token = create_token(session, role="admin", name="t")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for path, extra in (("/clm/train", {}), ("/clm/evolve", {"population": 4,
                                                             "generations": 1})):
        r = client.post(path, headers=headers, json={
            "model_type": "xgboost", "symbol": "random", "timeframe": "1h",
            "dataset_span_days": 10, **extra})
        assert r.status_code == 409, (path, r.status_code, r.get_json())
        body = r.get_json()
        assert r.mimetype == "application/problem+json"
        assert body["symbol"] == "RANDOM" and body["timeframe"] == "1h"
        assert "RANDOM 1h" in body["detail"] and "cannot be read" in body["detail"]
        assert body["errors"] == [{"field": "symbol",
                                   "message": "stored RANDOM 1h data is unreadable"}]
        assert str(broken.data_dir) not in body["detail"]  # no server paths in answers
    jobs = client.get("/clm/jobs", headers=headers).get_json()
    assert jobs["items"] == []
    # the readable series still trains
    r = client.post("/clm/train", headers=headers, json={
        "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
        "dataset_span_days": 20})
    assert r.status_code == 202, r.get_json()


def test_cli_list_marks_and_verify_reports_every_problem(broken: Settings) -> None:
    env = _env(broken)
    store = MarketDataStore(broken.data_dir)
    # two more problems: a non-monotonic series and a stray folder
    frame = bars(range(5))
    store.merge("BACKWARDS", "1h", frame)
    table = pq.read_table(store.path_for("BACKWARDS", "1h"))
    pq.write_table(table.take(pa.array(np.array([0, 2, 1, 3, 4]))),
                   store.path_for("BACKWARDS", "1h"))
    (broken.data_dir / ".TRASH").mkdir()

    r = clm(env, "data", "list")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("PLANTED") for line in lines)
    assert any(line.startswith("BACKWARDS") for line in lines)
    assert any(line.startswith("RANDOM") and "UNREADABLE" in line for line in lines), r.stdout
    assert "Traceback" not in r.stderr and "data verify" in r.stderr
    r = clm(env, "data", "list", "--json")
    body = json.loads(r.stdout)
    assert {i["symbol"] for i in body["items"]} == {"PLANTED", "BACKWARDS"}
    assert [u["symbol"] for u in body["unreadable"]] == ["RANDOM"]

    r = clm(env, "data", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    found = {(p["symbol"], p["problem"].split(" ")[0]) for p in json.loads(r.stdout)["problems"]}
    assert found == {("RANDOM", "unreadable:"), ("BACKWARDS", "timestamps"),
                     (".TRASH", "folder")}, found
    r = clm(env, "data", "verify")
    assert r.returncode == 1 and "3 problem(s)" in r.stdout and "RANDOM 1h: unreadable" in r.stdout

    # recovery as docs/OPERATIONS.md says: move the broken files aside, re-import
    for sym in ("RANDOM", "BACKWARDS"):
        store.path_for(sym, "1h").rename(broken.var_dir / f"{sym}.broken")
    (broken.data_dir / ".TRASH").rmdir()
    store.merge("RANDOM", "1h", bars(range(10)))
    r = clm(env, "data", "verify")
    assert r.returncode == 0 and "no problem(s)" in r.stdout, r.stdout
    assert clm(env, "data", "list").returncode == 0


def _env(settings: Settings) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()} | {
        "CLM_DATABASE_URL": settings.database_url, "CLM_VAR_DIR": str(settings.var_dir),
        "CLM_DATA_DIR": str(settings.data_dir), "CLM_ARTIFACT_ROOT": str(settings.artifact_root)}


def test_artifacts_verify_finds_corrupt_and_missing_artifacts(broken: Settings) -> None:
    from app.db import transaction
    from app.services import registry

    store = ArtifactStore.from_settings(broken)
    model = store.put_bytes(b"model-bytes-1", fmt="ubj", suffix=".ubj")
    other = store.put_bytes(b"model-bytes-2", fmt="ubj", suffix=".ubj")
    dataset = store.put_frame(bars(range(4)))
    with transaction(broken.database_url) as session:
        for ref in (model, other):
            registry.register_version(
                session, model_type="xgboost", symbol="PLANTED", timeframe="1h",
                metrics={"sharpe": 1.0}, artifact=ref.to_dict(),
                lineage={"dataset": {"uri": dataset.uri, "sha256": dataset.sha256}},
                actor="test")
    env = _env(broken)
    r = clm(env, "artifacts", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == {"versions": 2, "checked": 3, "external": 0,
                                    "problems": []}

    corrupt = store.path_for(model.uri)
    corrupt.write_bytes(b"flipped")
    store.path_for(dataset.uri).unlink()
    r = clm(env, "artifacts", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    problems = {p["uri"]: p for p in json.loads(r.stdout)["problems"]}
    assert problems[model.uri]["problem"] == "corrupt"
    assert len(problems[model.uri]["referenced_by"]) == 1
    assert problems[dataset.uri]["problem"] == "missing"
    assert len(problems[dataset.uri]["referenced_by"]) == 2  # both versions' lineage
    assert other.uri not in problems
    r = clm(env, "artifacts", "verify")
    assert r.returncode == 1 and "2 problem(s)" in r.stdout and "corrupt" in r.stdout


def test_recovered_series_answers_again(broken: Settings) -> None:
    """Re-importing over an unreadable file is refused (the operator moves it aside)."""
    store = MarketDataStore(broken.data_dir)
    with pytest.raises(SeriesUnreadable):
        store.merge("RANDOM", "1h", bars(range(5)))
    store.path_for("RANDOM", "1h").unlink()
    store.merge("RANDOM", "1h", bars(range(5)))
    assert store.coverage("RANDOM", "1h") is not None
