"""Files in object storage: CLM_DATA_DIR / CLM_ARTIFACT_ROOT = s3://bucket/prefix.

Against a real S3-compatible server (moto in server mode, started by the tests on
127.0.0.1; tests/support/objectstore.py): content-addressed artifacts round-trip and a
corrupted object is refused as locally; market data is imported, read, merged and
catalogued in the bucket; merges into one series from two processes are serialized by
the PostgreSQL advisory lock and lose no bar; a training job through real Celery
worker processes leaves its model in the bucket, downloadable and verified; a bad URL
or an unreachable endpoint is one clear message naming the variable, never a secret.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from app.core.config import ConfigError, S3Location, Settings, load_settings
from app.core.objectstore import ObjectStoreUnavailable, S3ObjectStore
from app.flows.pipeline import is_transient
from app.ml.artifacts import ArtifactCorrupt, ArtifactNotFound, ArtifactStore
from app.ml.data.catalog import sidecar_key
from app.ml.data.locks import advisory_key
from app.ml.data.store import DataNotFound, MarketDataStore, SeriesUnreadable
from tests.support.objectstore import S3Bucket, free_port
from tests.support.workers import wait_for
from tests.test_cli_data_backtest import clm, prices_csv
from tests.test_data_store import T0, H, bars

# ----------------------------------------------------------------------------- settings


def test_s3_roots_parse_and_local_stays_the_default(tmp_path: Path) -> None:
    local = load_settings({"CLM_VAR_DIR": str(tmp_path)})
    assert local.data_dir == (tmp_path / "data").resolve()
    assert isinstance(local.artifact_root, Path)
    s = load_settings({"CLM_VAR_DIR": str(tmp_path), "CLM_DATA_DIR": "s3://clm-data/a/b/",
                       "CLM_ARTIFACT_ROOT": "S3://clm-art",
                       "CLM_S3_ENDPOINT_URL": "http://minio:9000/"})
    assert s.data_dir == S3Location("clm-data", "a/b", "CLM_DATA_DIR", "http://minio:9000")
    assert s.artifact_root == S3Location("clm-art", "", "CLM_ARTIFACT_ROOT", "http://minio:9000")
    assert str(s.data_dir) == "s3://clm-data/a/b" and s.data_dir.key("X/1h.parquet") == \
        "a/b/X/1h.parquet"


@pytest.mark.parametrize(("env", "names", "secret"), [
    ({"CLM_DATA_DIR": "s3://"}, "CLM_DATA_DIR", None),
    ({"CLM_DATA_DIR": "s3://Bad_Bucket/x"}, "CLM_DATA_DIR", None),
    ({"CLM_ARTIFACT_ROOT": "s3://bucket/a/../b"}, "CLM_ARTIFACT_ROOT", None),
    ({"CLM_ARTIFACT_ROOT": "gs://bucket/x"}, "CLM_ARTIFACT_ROOT", None),
    ({"CLM_DATA_DIR": "s3://AKIAEXAMPLE:hunter2@bucket/x"}, "CLM_DATA_DIR", "hunter2"),
    ({"CLM_S3_ENDPOINT_URL": "ftp://minio:9000"}, "CLM_S3_ENDPOINT_URL", None),
    ({"CLM_S3_ENDPOINT_URL": "http://me:hunter2@minio:9000"}, "CLM_S3_ENDPOINT_URL", "hunter2"),
])
def test_bad_object_store_settings_name_the_variable_and_hide_credentials(
        env: dict[str, str], names: str, secret: str | None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLM_VAR_DIR": str(tmp_path), **env})
    assert names in str(info.value)
    if secret:
        assert secret not in str(info.value)
    # the CLI says it in one line, without a traceback
    r = clm({**os.environ, "CLM_VAR_DIR": str(tmp_path), **env}, "data", "list")
    assert r.returncode == 2 and names in r.stderr and "Traceback" not in r.stderr, r.stderr
    if secret:
        assert secret not in r.stderr


def test_an_unreachable_endpoint_is_a_503_naming_the_variables(
        sqlite_url: str, make_settings: Callable[..., Settings],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNREACHABLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shown-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(sqlite_url, CLM_DATA_DIR="s3://clm-nowhere/data",
                             CLM_ARTIFACT_ROOT="s3://clm-nowhere/artifacts",
                             CLM_S3_ENDPOINT_URL=dead)
    with pytest.raises(ObjectStoreUnavailable) as info:
        MarketDataStore.from_settings(settings).read("BTCUSDT", "1h")
    message = str(info.value)
    assert "CLM_DATA_DIR" in message and "CLM_S3_ENDPOINT_URL" in message and dead in message
    assert "never-shown-secret" not in message and "AKIAUNREACHABLE" not in message

    from app import create_app
    from app.db import transaction
    from app.services.auth import create_token

    app = create_app(settings)
    with transaction(settings.database_url) as session:
        token = create_token(session, role="operator", name="s3-dead")
    r = app.test_client().post("/clm/train", headers={"Authorization": f"Bearer {token}"},
                               json={"model_type": "xgboost", "symbol": "BTCUSDT",
                                     "timeframe": "1h", "dataset_span_days": 30})
    body = r.get_json()
    assert r.status_code == 503 and r.content_type == "application/problem+json", body
    assert "CLM_DATA_DIR" in body["detail"] and "CLM_S3_ENDPOINT_URL" in body["detail"]
    assert "never-shown-secret" not in r.get_data(as_text=True)
    health = app.test_client().get("/health")
    assert health.status_code == 503
    assert health.get_json()["object_store"] == {"reachable": False, "backend": "s3"}
    # inside a job, the outage is retried with backoff like a database outage
    assert is_transient(info.value)


# ---------------------------------------------------------------------------- artifacts


def _s3_root(bucket: S3Bucket, prefix: str, variable: str) -> S3Location:
    return S3Location(bucket.name, prefix, variable, bucket.endpoint_url)


def test_artifacts_round_trip_in_the_bucket_and_corruption_is_refused(
        s3_bucket: S3Bucket) -> None:
    store = ArtifactStore(_s3_root(s3_bucket, "team/artifacts", "CLM_ARTIFACT_ROOT"))
    data = b"model bytes \x00\x01" * 100
    sha = hashlib.sha256(data).hexdigest()
    ref = store.put_bytes(data, fmt="xgboost-ubj", suffix=".ubj")
    key = f"team/artifacts/{sha[:2]}/{sha}.ubj"
    assert ref.uri == f"cas://{sha}.ubj" and s3_bucket.keys() == [key]
    assert s3_bucket.get(key) == data  # the bytes are really in the bucket
    assert store.get_bytes(ref.uri, ref.sha256) == data and store.exists(ref.uri)
    assert store.put_bytes(data, fmt="xgboost-ubj", suffix=".ubj") == ref  # idempotent
    frame = bars(range(10))
    fref = store.put_frame(frame)
    pd.testing.assert_frame_equal(store.get_frame(fref.uri, fref.sha256), frame)
    assert store.get_json(store.put_json({"b": 1, "a": [1, 2]}).uri) == {"a": [1, 2], "b": 1}

    flipped = bytearray(data)
    flipped[500] ^= 0x01
    s3_bucket.put(key, bytes(flipped))  # a corrupted object, written behind CLM's back
    with pytest.raises(ArtifactCorrupt, match="corrupt") as info:
        store.get_bytes(ref.uri, ref.sha256)
    assert f"s3://{s3_bucket.name}/{key}" in str(info.value)
    with pytest.raises(ArtifactCorrupt, match="does not match"):
        store.get_bytes(ref.uri, "0" * 64)
    store.put_bytes(data, fmt="xgboost-ubj", suffix=".ubj")  # a new put repairs it
    assert s3_bucket.get(key) == data and store.get_bytes(ref.uri) == data
    missing = f"cas://{'ab' * 32}.ubj"
    with pytest.raises(ArtifactNotFound):
        store.get_bytes(missing)
    assert not store.exists(missing)
    with pytest.raises(ValueError, match="no local files"):
        store.path_for(ref.uri)


# -------------------------------------------------------------------------- market data


def test_market_data_import_read_merge_and_catalog_in_the_bucket(
        s3_bucket: S3Bucket, sqlite_url: str, make_settings: Callable[..., Settings],
        tmp_path: Path) -> None:
    settings = make_settings(sqlite_url, **s3_bucket.env())
    # `clm data import` writes into the bucket (CLI, subprocess, same environment)
    csv = tmp_path / "prices.csv"
    prices_csv(csv, 48, start=T0 // 10**9)
    r = clm(dict(os.environ), "data", "import", str(csv), "--symbol", "CSVSYM",
            "--timeframe", "1h")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "48 added" in r.stdout
    assert s3_bucket.keys("data/") == ["data/CSVSYM/.1h.catalog.json", "data/CSVSYM/1h.parquet"]
    assert not (settings.var_dir / "data").exists()  # nothing went to a local folder

    store = MarketDataStore.from_settings(settings)
    assert len(store.read("CSVSYM", "1h")) == 48
    report = store.merge("CSVSYM", "1h", bars(range(40, 60), value=2.0))
    assert (report.added, report.overlapping, report.changed, report.rows_after) == (
        12, 8, 8, 60)
    window = store.read("CSVSYM", "1h", pd.Timestamp(T0 + 45 * H, unit="ns", tz="UTC"),
                        pd.Timestamp(T0 + 50 * H, unit="ns", tz="UTC"))
    assert len(window) == 6 and (window["close"] == 2.0).all()
    cov = store.coverage("CSVSYM", "1h")
    assert cov is not None and cov.rows == 60
    assert cov.last == pd.Timestamp(T0 + 59 * H, unit="ns", tz="UTC")
    store.merge("CSVSYM", "1h", bars([70, 71]))  # a gap of 10 bars
    assert store.gap_counts("CSVSYM", "1h") == (1, 10)

    # the catalog sidecar describes the object version it was written for
    extent = store.extent("CSVSYM", "1h")
    assert extent is not None and (extent.rows, len(extent.run_starts)) == (62, 2)
    side = json.loads(s3_bucket.get("data/" + sidecar_key("CSVSYM/1h.parquet")))
    assert side["rows"] == 62
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="data/CSVSYM/1h.parquet")
    assert side["file"] == [head["ContentLength"], head["ETag"].strip('"')]
    # another writer replaces the object: the old sidecar no longer describes it
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pq.read_table(pa.BufferReader(s3_bucket.get("data/CSVSYM/1h.parquet")))
    sink = pa.BufferOutputStream()
    pq.write_table(old.slice(0, 20), sink)
    s3_bucket.put("data/CSVSYM/1h.parquet", sink.getvalue().to_pybytes())
    fresh = MarketDataStore.from_settings(settings).extent("CSVSYM", "1h")
    assert fresh is not None and fresh.rows == 20
    assert store.extent("CSVSYM", "1h").rows == 20  # type: ignore[union-attr]

    # listing, verify, and an unreadable object named by its series
    store.merge("OTHER", "4h", bars([0, 4, 8]))
    assert [(c.symbol, c.timeframe, c.rows) for c in store.list()] == [
        ("CSVSYM", "1h", 20), ("OTHER", "4h", 3)]
    assert store.verify() == []
    s3_bucket.put("data/OTHER/4h.parquet", b"PAR1 not really parquet")
    s3_bucket.put("data/.TRASH/notes.txt", b"x")  # a "folder" that is no symbol
    found = {(p.symbol, p.problem.split(" ")[0]) for p in store.verify()}
    assert found == {("OTHER", "unreadable:"), (".TRASH", "folder")}, found
    with pytest.raises(SeriesUnreadable) as info:
        store.read("OTHER", "4h")
    assert s3_bucket.name not in info.value.detail  # names the series, not the bucket
    covered, broken = store.list_all()
    assert [c.symbol for c in covered] == ["CSVSYM"] and [b.symbol for b in broken] == ["OTHER"]
    with pytest.raises(DataNotFound):
        store.read("ABSENT", "1h")
    assert store.coverage("ABSENT", "1h") is None and store.extent("ABSENT", "1h") is None
    r = clm(dict(os.environ), "data", "verify")
    assert r.returncode == 1 and "2 problem(s)" in r.stdout, r.stdout + r.stderr


def test_a_missing_bucket_is_unavailable_not_an_absent_series(
        s3_bucket: S3Bucket, sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sqlite_url, CLM_DATA_DIR="s3://clm-no-such-bucket/data",
                             CLM_S3_ENDPOINT_URL=s3_bucket.endpoint_url)
    store = MarketDataStore.from_settings(settings)
    for call in (lambda: store.extent("BTCUSDT", "1h"), lambda: store.read("BTCUSDT", "1h"),
                 lambda: store.merge("BTCUSDT", "1h", bars(range(3)))):
        with pytest.raises(ObjectStoreUnavailable, match="CLM_DATA_DIR") as info:
            call()
        assert "clm-no-such-bucket" in str(info.value)


def test_a_remote_store_without_a_shared_lock_refuses_to_merge(s3_bucket: S3Bucket) -> None:
    store = MarketDataStore(_s3_root(s3_bucket, "data", "CLM_DATA_DIR"))
    with pytest.raises(RuntimeError, match="from_settings"):
        store.merge("NOLOCK", "1h", bars(range(3)))
    assert s3_bucket.keys() == []


# ------------------------------------------------------------ merges across processes


def _merge_many(env: dict[str, str], offset: int, rounds: int, go: str) -> None:
    """Merge `rounds` batches of 4 bars (interleaved with the other process's)."""
    settings = load_settings(env)
    store = MarketDataStore.from_settings(settings)
    # Start together: the merges must overlap in time.
    wait_for(Path(go).exists, timeout=60, interval=0.01, what="the go signal")
    for i in range(rounds):
        base = (i * 2 + offset) * 4
        store.merge("RACE", "1h", bars(range(base, base + 4)))


def _clm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k.startswith(("CLM_", "AWS_")) or k in ("PATH", "PYTHONPATH", "HOME")}


@pytest.mark.timeout(180)
def test_concurrent_merges_on_s3_from_two_processes_lose_no_bar(
        s3_bucket: S3Bucket, db_url: str, make_settings: Callable[..., Settings],
        tmp_path: Path) -> None:
    """PostgreSQL: the advisory lock; SQLite (one machine): the file lock beside it."""
    settings = make_settings(db_url, **s3_bucket.env())
    rounds = 15
    go = tmp_path / "go"
    ctx = mp.get_context("spawn")  # no fork of a process with pyarrow / boto3 threads
    procs = [ctx.Process(target=_merge_many, args=(_clm_env(), off, rounds, str(go)))
             for off in (0, 1)]
    for p in procs:
        p.start()
    go.touch()
    for p in procs:
        p.join(timeout=150)
        assert p.exitcode == 0
    frame = MarketDataStore.from_settings(settings).read("RACE", "1h")
    expected = pd.DatetimeIndex([T0 + h * H for h in range(2 * rounds * 4)]).tz_localize("UTC")
    assert frame.index.equals(expected.rename("timestamp"))
    extent = MarketDataStore.from_settings(settings).extent("RACE", "1h")
    assert extent is not None and extent.rows == 2 * rounds * 4


_MERGE_ONCE = """
from app.core.config import load_settings
from app.ml.data.store import MarketDataStore
from tests.test_data_store import bars
print(MarketDataStore.from_settings(load_settings()).merge("HELD", "1h", bars(range(5))).added)
"""


@pytest.mark.timeout(120)
def test_a_merge_waits_for_the_advisory_lock_another_host_holds(
        s3_bucket: S3Bucket, pg_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pg_url, **s3_bucket.env())
    key = advisory_key(str(settings.data_dir), "HELD", "1h")
    engine = create_engine(pg_url, pool_size=1)
    try:
        with engine.connect() as holder:
            holder.begin()
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            proc = subprocess.Popen([sys.executable, "-c", _MERGE_ONCE], env=_clm_env(),
                                    cwd=Path(__file__).resolve().parents[1],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def waiting() -> bool | None:
                assert proc.poll() is None, proc.communicate()
                n = holder.execute(text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted "
                    "AND d.datname = current_database()")).scalar_one()
                return True if n else None

            wait_for(waiting, timeout=60, interval=0.1, what="the merge to wait on the lock")
            assert s3_bucket.keys("data/") == []  # it wrote nothing while waiting
            holder.rollback()  # releases the lock: the merge goes ahead
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "5"
        assert len(MarketDataStore.from_settings(settings).read("HELD", "1h")) == 5
    finally:
        engine.dispose()


# ------------------------------------------------------------------ end to end (Celery)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_job_with_both_roots_on_s3_through_real_workers(
        s3_bucket: S3Bucket, request: pytest.FixtureRequest,
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from app.ml.trainers import get_trainer, load_model
    from tests.support.pipeline import SPAN_DAYS, make_backend, seed_market, wait_job
    from tests.support.workers import WorkerSpec, running_workers

    backend = make_backend(request, make_settings, "postgres_redis", **s3_bucket.env())
    assert isinstance(backend.settings.data_dir, S3Location)
    seed_market(backend.settings)
    with running_workers([WorkerSpec("s3", ("data", "train", "evaluate", "default"), 2)],
                         log_dir=tmp_path / "logs"):
        r = backend.client.post("/clm/train", headers=backend.auth("operator"), json={
            "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
            "dataset_span_days": SPAN_DAYS, "params": {"n_estimators": 20, "max_depth": 3}})
        assert r.status_code == 202, r.get_json()
        job = wait_job(backend, r.get_json()["job_id"], timeout=200)
    assert job["status"] == "succeeded", job["error"]
    health = backend.client.get("/health").get_json()
    assert health["object_store"] == {"reachable": True, "backend": "s3"}
    version = job["version"]
    v = backend.client.get(f"/clm/models/xgboost_planted_1h/versions/{version}",
                           headers=backend.auth("viewer")).get_json()
    art = v["artifact"]
    sha = art["sha256"]
    key = f"artifacts/{sha[:2]}/{sha}.ubj"
    keys = s3_bucket.keys()
    assert key in keys, keys  # the model is in the bucket ...
    dataset = v["lineage"]["dataset"]
    assert any(k.startswith(f"artifacts/{dataset['uri'][6:8]}/") for k in keys)
    # ... and nowhere on a local disk of the workers or the API
    assert not (backend.settings.var_dir / "artifacts").exists()
    assert not (backend.settings.var_dir / "data").exists()

    url = f"/clm/models/xgboost_planted_1h/versions/{version}/artifact"
    r = backend.client.get(url, headers=backend.auth("viewer"))
    assert r.status_code == 200 and r.headers["ETag"] == f'"{sha}"'
    assert hashlib.sha256(r.data).hexdigest() == sha and r.data == s3_bucket.get(key)
    model = load_model(ArtifactStore.from_settings(backend.settings), get_trainer("xgboost"),
                       art["uri"], sha)
    assert model.num_boosted_rounds() == 20

    # a corrupted object is never served, and `clm artifacts verify` finds it
    s3_bucket.put(key, r.data[:-1] + bytes([r.data[-1] ^ 1]))
    r = backend.client.get(url, headers=backend.auth("viewer"))
    assert r.status_code == 500 and r.content_type == "application/problem+json"
    out = clm(dict(os.environ), "artifacts", "verify", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    problems = {p["uri"]: p["problem"] for p in json.loads(out.stdout)["problems"]}
    assert problems == {art["uri"]: "corrupt"}


def test_s3_store_lists_folders_and_objects_one_level_down(s3_bucket: S3Bucket) -> None:
    objects = S3ObjectStore(_s3_root(s3_bucket, "p", "CLM_DATA_DIR"))
    for i in range(3):
        objects.put(f"D{i}/x.bin", b"x")
    objects.put("top.bin", b"y")
    assert objects.children() == (["D0", "D1", "D2"], ["top.bin"])
    assert objects.children("D1") == ([], ["x.bin"])
    stat = objects.stat("top.bin")
    assert stat is not None and stat.size == 1 and objects.stat("absent") is None
    objects.delete("top.bin")
    assert not objects.exists("top.bin")
