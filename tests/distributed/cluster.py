"""A CLM deployment across network-namespace hosts (tests/support/netns.py):

    services 10.231.0.2   its own PostgreSQL (initdb + pg_ctl, port 5432), its own
                          redis-server (port 6379) and an S3-compatible object store
                          (moto in server mode, port 9000; bucket `clm-dist`)
    api      10.231.0.3   `clm serve` (gunicorn, port 8000) and `clm beat`
    w1, w2   10.231.0.4/5 two `clm worker`s each, as the Procfile runs them: `train`
                          (queue train) and `eval` (queues data, evaluate, default: the
                          stages, the reaper, the ticks), one pool process each
    client   10.231.0.1   the test itself (HTTP calls and database reads, over the lab)

Every host gets the services' addresses through the environment only (CLM_DATABASE_URL,
CLM_BROKER_URL, CLM_DATA_DIR / CLM_ARTIFACT_ROOT = s3://clm-dist/..., CLM_S3_ENDPOINT_URL,
AWS_* credentials) and its own CLM_VAR_DIR: the hosts share nothing but PostgreSQL, Redis
and the object store. Why moto: pure Python (a test dependency already, see
tests/support/objectstore.py), it speaks the S3 HTTP API over a real socket, so boto3's
requests cross the lab's network like any other service's.

Knobs for fast failure detection, as an operator would set them: a 4 s job lease,
a reaper every second, a 2 s scheduler tick.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns import REPO, Host, Lab, Proc
from tests.support.objectstore import TEST_ENV as S3_TEST_ENV
from tests.support.private_services import _pg_bin
from tests.support.services import unavailable
from tests.support.workers import wait_for

PG_PORT, REDIS_PORT, API_PORT, S3_PORT = 5432, 6379, 8000, 9000
BUCKET = "clm-dist"
LEASE_S = 4
ROLES = {"train": "train", "eval": "data,evaluate,default"}  # the Procfile's workers


class NsPostgres:
    """PostgreSQL of the services host: its own cluster, listening on the lab address."""

    def __init__(self, lab: Lab, host: Host) -> None:
        self.lab, self.host = lab, host
        self.bin = _pg_bin()
        if self.bin is None:
            unavailable("PostgreSQL server binaries", "initdb not found")
        # Short, world-reachable path: the server runs as `postgres`.
        self.workdir = Path(tempfile.mkdtemp(prefix="clm-dist-pg-"))
        shutil.chown(self.workdir, "postgres")
        self.data = self.workdir / "data"
        lab.cleanups.append(self.close)
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.231.0.0/24 trust\n")

    def _pg(self, tool: str, *args: str) -> None:
        assert self.bin is not None
        self.lab.netns_exec(self.host, "runuser", "-u", "postgres", "--",
                            str(self.bin / tool), *args)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host.ip}:{PG_PORT}/{database}"

    def start(self) -> None:
        options = (f"-p {PG_PORT} -k {self.workdir} -c listen_addresses={self.host.ip} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=300")
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60",
                 "-l", str(self.workdir / "postgres.log"), "start")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with suppress(Exception):
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Cluster:
    lab: Lab
    root: Path
    services: Host
    api: Host
    worker_hosts: list[Host]
    pg: NsPostgres
    database_url: str = ""
    broker_url: str = ""
    redis: Proc | None = None
    s3: Proc | None = None
    web: Proc | None = None
    beat: Proc | None = None
    workers: dict[str, Proc] = field(default_factory=dict)
    token: str = ""
    env_overrides: dict[str, str] = field(default_factory=dict)

    # -- environment ----------------------------------------------------------------------
    def env(self, host: Host) -> dict[str, str]:
        """What a CLM process on `host` is told: the services' addresses, its own var dir."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("CLM_")}
        var = self.root / "hosts" / host.name / "var"
        var.mkdir(parents=True, exist_ok=True)
        return {
            **base,
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "CLM_LOG_JSON": "0",
            "CLM_DATABASE_URL": self.database_url,
            "CLM_BROKER_URL": self.broker_url,
            "CLM_VAR_DIR": str(var),
            "CLM_DATA_DIR": f"s3://{BUCKET}/data",
            "CLM_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
            "CLM_S3_ENDPOINT_URL": self.s3_endpoint,
            **S3_TEST_ENV,
            "CLM_JOB_LEASE_SECONDS": str(LEASE_S),
            "CLM_REAPER_INTERVAL_S": "1",
            "CLM_SCHEDULER_TICK_S": "2",
            "CLM_OUTBOX_RELAY_INTERVAL_S": "1",
            "CLM_TRAIN_THREADS": "1",
            "CLM_WORKER_CONCURRENCY": "1",
            "CLM_WORKER_MAX_TASKS_PER_CHILD": "10000",
            "CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S": "30",
            **self.env_overrides,
        }

    def cli(self, host: Host, *args: str) -> list[str]:
        return [sys.executable, "-m", "app.cli", *args]

    # -- services -------------------------------------------------------------------------
    def start_redis(self) -> None:
        work = self.root / "redis"
        work.mkdir(exist_ok=True)
        self.redis = self.lab.spawn(self.services, "redis", [
            shutil.which("redis-server") or "redis-server", "--bind", self.services.ip,
            "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--dir", str(work)], self.env(self.services))
        wait_for(lambda: self.lab.client(self._redis_ping), timeout=20, interval=0.1,
                 what="redis on the services host")

    def _redis_ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.services.ip, port=REDIS_PORT,
                                    socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except Exception:
            return False

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.services.ip}:{S3_PORT}"

    def start_s3(self) -> None:
        """moto's S3 server on the services host, and the bucket every host uses."""
        self.s3 = self.lab.spawn(self.services, "s3", [
            sys.executable, "-m", "moto.server", "-H", self.services.ip, "-p", str(S3_PORT)],
            {**self.env(self.services), **S3_TEST_ENV})
        wait_for(lambda: self.lab.client(self._s3_up), timeout=60, interval=0.2,
                 what="the S3 server on the services host")
        self.lab.client(lambda: self._s3_client().create_bucket(Bucket=BUCKET))

    def _s3_client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"]).client(
                "s3", endpoint_url=self.s3_endpoint)

    def _s3_up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.s3_endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    def s3_keys(self, prefix: str) -> list[str]:
        def keys() -> list[str]:
            found: list[str] = []
            for page in self._s3_client().get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=prefix):
                found += [o["Key"] for o in page.get("Contents", [])]
            return found

        return self.lab.client(keys)

    def merge(self, symbol: str, frame: Any) -> None:
        """Store bars as a host does (S3, under the database's series lock), from the
        client host."""
        def run() -> None:
            from app.core.config import load_settings
            from app.ml.data.store import MarketDataStore

            settings = load_settings(self.env(self.lab.hosts["client"]))
            MarketDataStore.from_settings(settings).merge(symbol, "1h", frame)

        self.lab.client(run)

    def restart_redis(self) -> float:
        """SIGKILL redis (it keeps nothing: every queued message is gone) and start it
        again on the same address; returns the seconds it was away."""
        assert self.redis is not None
        t0 = time.monotonic()
        self.redis.signal(signal.SIGKILL)
        self.redis.wait(10)
        self.start_redis()
        return time.monotonic() - t0

    # -- CLM processes --------------------------------------------------------------------
    def start_worker(self, host: Host, role: str, *, wait: bool = True) -> Proc:
        """`clm worker` for `role` (train | eval) on `host`; key `<host>-<role>`."""
        key = f"{host.name}-{role}"
        runs = sum(1 for p in self.lab.procs if p.host is host and p.name.startswith(role))
        proc = self.lab.spawn(host, f"{role}-{runs}", self.cli(
            host, "worker", "--queues", ROLES[role], "--concurrency", "1", "--hostname",
            f"{role}@%h", "--loglevel", "INFO"), self.env(host))
        self.workers[key] = proc
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: Proc) -> None:
        wait_for(lambda: " ready." in proc.log_text() or not proc.alive(), timeout=90,
                 interval=0.2, what=f"{proc.name} on {proc.host.name}")
        if not proc.alive():
            raise RuntimeError(f"{proc.name} on {proc.host.name} exited:\n"
                               f"{proc.log_text()[-3000:]}")

    def host_logs(self, host_name: str) -> str:
        """Everything the worker processes of a host wrote so far."""
        return "".join(p.log_text() for p in self.lab.procs
                       if p.host.name == host_name and p.name[:5] in ("train", "eval-"))

    def start(self) -> None:
        self.pg.start()
        self.database_url = self.pg.url("clm")
        self.lab.client(self._create_database)
        self.start_redis()
        self.broker_url = f"redis://{self.services.ip}:{REDIS_PORT}/0"
        self.start_s3()
        self.lab.netns_exec(self.api, "env", *[f"{k}={v}" for k, v in self.env(self.api).items()],
                            *self.cli(self.api, "db", "upgrade"))
        self.token = self.lab.client(self._token)
        self.web = self.lab.spawn(self.api, "web", self.cli(
            self.api, "serve", "--host", self.api.ip, "--port", str(API_PORT), "--workers",
            "2"), self.env(self.api))
        self.beat = self.lab.spawn(self.api, "beat", self.cli(self.api, "beat"),
                                   self.env(self.api))
        started = [self.start_worker(h, role, wait=False)
                   for h in self.worker_hosts for role in ROLES]
        for proc in started:
            self.wait_ready(proc)
        wait_for(lambda: self.lab.client(self._healthy), timeout=60, interval=0.2,
                 what="the API on the api host")

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"host={self.services.ip} port={PG_PORT} user=postgres "
                             "dbname=postgres connect_timeout=5", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "clm"')

    def _token(self) -> str:
        from app.db import transaction
        from app.services.auth import create_token

        with transaction(self.database_url) as session:
            return create_token(session, role="admin", name="distributed-test")

    def _healthy(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.base_url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    # -- the test's calls (on the client host) ---------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.api.ip}:{API_PORT}"

    def http(self, method: str, path: str, body: Any = None,
             timeout: float = 30) -> tuple[int, Any, float]:
        """(status, JSON body, seconds) of one request from the client host."""
        return self.lab.client(self._http, method, path, body, timeout)

    def _http(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any, float]:
        import requests

        t0 = time.perf_counter()
        r = requests.request(method, f"{self.base_url}{path}", json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {self.token}"})
        elapsed = time.perf_counter() - t0
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        return r.status_code, payload, elapsed

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Rows of a read-only query, run from the client host."""
        return self.lab.client(self._sql, query, params)

    def _sql(self, query: str, params: dict[str, Any]) -> list[Any]:
        from sqlalchemy import text

        from app.db import transaction

        with transaction(self.database_url) as session:
            return list(session.execute(text(query), params).all())

    def on_client(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.lab.client(fn, *args)



def owner_host(owner: str | None) -> str:
    """The host of a lease owner / worker id (`train@w1:1234/…` → `w1`)."""
    return str(owner or "").split("@", 1)[-1].split(":", 1)[0]


@contextmanager
def cluster(root: Path, **env: str) -> Iterator[Cluster]:
    """Build the lab and start everything; always tear it all down."""
    # The test's own S3 calls (seeding bars, listing keys) use the fake credentials too.
    saved = {k: os.environ.get(k) for k in S3_TEST_ENV}
    os.environ.update(S3_TEST_ENV)
    lab = Lab(root)
    try:
        services = lab.add_host("services")
        api = lab.add_host("api")
        workers = [lab.add_host("w1"), lab.add_host("w2")]
        c = Cluster(lab, root, services, api, workers, NsPostgres(lab, services),
                    env_overrides={k: str(v) for k, v in env.items()})
        c.start()
        yield c
    finally:
        from app.db import dispose_engines

        with suppress(Exception):
            lab.client(dispose_engines)
        lab.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
