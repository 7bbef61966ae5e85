"""The `clm` commands this issue owns, run as real subprocesses: db upgrade/current/check,
token create/revoke, and serve (gunicorn) refusing an unmigrated database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from app import migrate

CLM = str(Path(sys.executable).with_name("clm"))


def clm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLM, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, make_settings):
    """An empty database (no schema) on each backend, configured for subprocesses."""
    dbs = request.getfixturevalue("sqlite_dbs" if request.param == "sqlite" else "postgres_dbs")
    url = dbs.empty()
    make_settings(url)
    yield url
    if request.param == "postgresql":
        dbs.drop(url)


def test_db_upgrade_migrates_to_head(empty_url):
    behind = clm("db", "current")
    assert behind.returncode == 0 and "clm db upgrade" in behind.stdout

    result = clm("db", "upgrade")
    assert result.returncode == 0, result.stderr
    head = migrate.heads(empty_url)[0]
    assert migrate.current_revision(empty_url) == head
    assert head in result.stdout

    again = clm("db", "current")
    assert again.returncode == 0 and "at head" in again.stdout


def test_token_create_prints_a_token_that_authenticates(settings):
    from app import create_app

    result = clm("token", "create", "--role", "operator", "--name", "ci-bot")
    assert result.returncode == 0, result.stderr
    raw = result.stdout.strip().splitlines()[-1]
    assert raw.startswith("clm_") and " " not in raw

    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/clm/status", headers=headers).status_code == 200
    # operator < admin
    assert client.post("/clm/promote", json={}, headers=headers).status_code == 403

    revoked = clm("token", "revoke", "--name", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/clm/status", headers=headers).status_code == 401
    assert clm("token", "revoke", "--name", "ci-bot").returncode == 1  # none left


def test_token_create_refuses_a_bad_role(sqlite_url, make_settings):
    make_settings(sqlite_url)
    result = clm("token", "create", "--role", "root", "--name", "x")
    assert result.returncode == 2  # click usage error
    for role in ("viewer", "operator", "admin"):
        assert role in result.stderr


def test_commands_refuse_an_unmigrated_database(sqlite_dbs, make_settings):
    make_settings(sqlite_dbs.empty())
    for args in (("serve", "--port", "1"), ("token", "create", "--role", "admin", "--name", "x")):
        result = clm(*args)
        assert result.returncode == 1, args
        assert "clm db upgrade" in result.stderr
        assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw(port: int, request: str) -> tuple[int, str, str]:
    """Send `request` as raw bytes; (status, content type, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                if len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return (int(lines[0].split()[1]), headers.get("content-type", "").split(";")[0],
            body.decode("utf-8", "replace"))


def test_serve_runs_the_api_under_gunicorn(sqlite_url, make_settings):
    make_settings(sqlite_url)
    raw = clm("token", "create", "--role", "viewer", "--name", "web").stdout.splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen(
        [CLM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    try:
        # The master binds the socket before "Listening at"; from then on connections
        # wait in the backlog until the worker has loaded the app, so no polling is needed.
        output = []
        for line in server.stdout:  # ends (EOF) if the server exits
            output.append(line)
            if "Listening at" in line:
                break
        assert server.poll() is None, "".join(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
            assert r.status == 200
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/clm/models", headers={"Authorization": f"Bearer {raw}"}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
            assert r.headers["Server"].startswith("gunicorn")
        # Every 4xx is problem+json, whoever answers it: the app (a request line over
        # 8190 bytes: gunicorn's own limit is off) or gunicorn itself (requests it cannot
        # parse: a header field over its limit (431), a request line that is not HTTP).
        answers = {
            414: _raw(port, f"GET /clm/models?model_id={'x' * 9000} HTTP/1.1\r\n"
                            "Host: x\r\n\r\n"),
            431: _raw(port, f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'y' * 9000}"
                            "\r\n\r\n"),
            400: _raw(port, "NOT A REQUEST\r\n\r\n"),
        }
        for expected, (status, content_type, body) in answers.items():
            assert status == expected, (expected, status, body[:200])
            assert content_type == "application/problem+json", (expected, content_type, body)
            assert json.loads(body)["status"] == expected
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
