"""Private Redis and PostgreSQL servers for fault tests: started, killed and restarted at will.

The machine's shared servers (PostgreSQL on 5432, Redis on 6379) serve other test runs,
so a test that takes a server down starts its own on a free port, in a temporary folder:

- `PrivateRedis`: `redis-server --save '' --appendonly no` (keeps nothing on disk, so a
  restart loses every queued message, which is the point), `kill()` with SIGKILL, `start()`
  again on the same port.
- `PrivatePostgres`: a throw-away cluster (`initdb`, trust auth, fsync off), started and
  stopped with `pg_ctl` on its own port and socket folder. When the tests run as root, the
  cluster is run as the `postgres` user (PostgreSQL refuses to run as root).

Both are context managers that always stop what they started; both are skipped (or
failed, with CLM_REQUIRE_SERVICES=1) when the binaries are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

from tests.support.services import unavailable
from tests.support.workers import wait_for

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin",
                     "/usr/lib/postgresql/14/bin")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """A redis-server on a free port that persists nothing (`--save '' --appendonly no`)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server", "binary not found")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5,
                                    socket_connect_timeout=0.5).ping())
        except Exception:
            return False

    def start(self, timeout: float = 20.0) -> PrivateRedis:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                 "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(lambda: self.ping() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 timeout=timeout, interval=0.05, what=f"redis on port {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL: whatever was queued is gone (nothing is on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        wait_for(lambda: not _port_open(self.port), timeout=10, interval=0.05,
                 what=f"port {self.port} to close")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _pg_bin() -> Path | None:
    for candidate in PG_BIN_CANDIDATES:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, in `workdir` (deleted by `close`)."""

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.bin = _pg_bin()
        if self.bin is None:
            unavailable("PostgreSQL server binaries", "initdb not found")
        # A short path straight under /tmp: the server's user must reach it (pytest's
        # folders are private to their owner) and the socket path has a length limit.
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="clm-pg-"))
        self.port = port or free_port()
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.as_root = os.geteuid() == 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            # PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            shutil.chown(self.workdir, "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                   "-U", "postgres", "--no-sync", "-E", "UTF8"], timeout=60)

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): "
                               f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
        return result

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PrivatePostgres:
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                   "-t", str(int(timeout)), "-l", str(self.log_path), "start"],
                  timeout=timeout + 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                   "stop"], timeout=60)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.admin_url(name)

    def close(self) -> None:
        with suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server of CLM_TEST_PG_ADMIN_URL did not answer."""


@contextmanager
def benchmark_stack(prefix: str) -> Iterator[tuple[Path, str, str]]:
    """PostgreSQL + Redis for a benchmark run, as deployed, and nothing left behind.

    Clears CLM_* from the environment (but CLM_TEST_PG_ADMIN_URL), creates a throw-away
    database `<prefix>_<random>` on that server and a private redis-server in a temporary
    folder; yields (folder, database URL, broker URL). Afterwards: redis stopped, engines
    disposed, the database dropped, the folder removed. Raises PostgresUnavailable (before
    anything runs) when the server does not answer.
    """
    from sqlalchemy import create_engine, text

    from tests.support.services import PG_ADMIN_URL, pg_url_for

    for key in [k for k in os.environ if k.startswith("CLM_") and k != "CLM_TEST_PG_ADMIN_URL"]:
        del os.environ[key]
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    database = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
    except Exception as exc:
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
        raise PostgresUnavailable(
            f"needs a PostgreSQL server (CLM_TEST_PG_ADMIN_URL={PG_ADMIN_URL}): {exc}") from exc
    redis_server = PrivateRedis(work / "redis").start()
    try:
        yield work, pg_url_for(database), redis_server.url()
    finally:
        redis_server.stop()
        from app.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
