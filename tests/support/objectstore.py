"""A real S3-compatible server for tests: moto in server mode, on 127.0.0.1.

Why moto: it is pure Python (pip-installable, no Docker), and in server mode it speaks
the S3 HTTP API over a real socket, so the code under test goes through boto3,
botocore's signing and HTTP exactly as against AWS or MinIO — nothing is patched in the
process. One server per test session (`MotoServer`, a `moto_server` subprocess on a
free port, waited for with a deadline); each test gets a bucket of its own
(`S3Bucket`), so tests never see each other's objects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.workers import wait_for

# Fake credentials: moto accepts any, and they must never be a real account's.
TEST_ENV = {"AWS_ACCESS_KEY_ID": "clm-test-key-id", "AWS_SECRET_ACCESS_KEY": "clm-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` as a subprocess; `endpoint_url` once it answers."""

    def __init__(self, log_path: Path, ready_timeout: float = 60.0, host: str = "127.0.0.1",
                 port: int | None = None, advertise: str | None = None) -> None:
        """`host`/`port`: where it binds (default 127.0.0.1, a free port); `advertise`:
        the address clients use when that is not `host` (e.g. bound to 0.0.0.0)."""
        port = port or free_port()
        self.endpoint_url = f"http://{advertise or host}:{port}"
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **TEST_ENV}, start_new_session=True)
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return True
            except OSError:
                return False

        try:
            wait_for(answers, timeout=ready_timeout, what="moto_server to answer")
        except TimeoutError:
            self.close()
            raise

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=TEST_ENV["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class S3Bucket:
    """A fresh bucket on the test server. `url(prefix)` is an `s3://` root for CLM_*;
    `env(...)` the variables that point CLM at it (endpoint included)."""

    endpoint_url: str
    name: str
    client: Any

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def env(self, data: str = "data", artifacts: str = "artifacts") -> dict[str, str]:
        return {"CLM_DATA_DIR": self.url(data), "CLM_ARTIFACT_ROOT": self.url(artifacts),
                "CLM_S3_ENDPOINT_URL": self.endpoint_url}

    def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            found += [o["Key"] for o in page.get("Contents", [])]
        return sorted(found)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)


def new_bucket(server: MotoServer) -> S3Bucket:
    client = server.client()
    name = f"clm-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(server.endpoint_url, name, client)
