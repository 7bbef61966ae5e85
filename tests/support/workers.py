"""Real Celery worker processes for tests (and the demo/benchmark): start, wait, kill.

`running_workers([...])` starts one `celery -A workers.celery_app worker` (or `clm worker`)
subprocess per spec, each in its own process group, waits until every one logged that it
is ready (polling its log with a deadline, failing fast with the log tail if it died), and
always stops them on exit: SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: a node name (unique per test), its queues and pool size."""

    name: str
    queues: Sequence[str] = ("data", "train", "evaluate", "default")
    concurrency: int = 1
    via_clm: bool = False  # `clm worker` instead of plain `celery ... worker`
    extra_args: Sequence[str] = ()


@dataclass
class WorkerProcess:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def nodename_prefix(self) -> str:
        return f"{self.spec.name}@"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole worker (main process and pool children)."""
        self.killed = True
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Whatever is left of the group (pool children included) goes now.
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)


def worker_command(spec: WorkerSpec) -> list[str]:
    queues = ",".join(spec.queues)
    if spec.via_clm:
        base = [sys.executable, "-m", "app.cli", "worker", "--queues", queues,
                "--concurrency", str(spec.concurrency), "--hostname", f"{spec.name}@%h",
                "--loglevel", "INFO"]
    else:
        base = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                "--queues", queues, "--concurrency", str(spec.concurrency),
                "--hostname", f"{spec.name}@%h", "--pool", "prefork", "--loglevel", "INFO",
                "--without-mingle", "--without-gossip"]
    return [*base, *spec.extra_args]


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running_workers(
    specs: Sequence[WorkerSpec],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 90.0,
) -> Iterator[list[WorkerProcess]]:
    """Start the workers, wait until all are ready, yield them, always stop them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    started: list[WorkerProcess] = []
    try:
        for spec in specs:
            log_path = log_dir / f"worker-{spec.name}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    worker_command(spec), cwd=REPO, env=full_env, stdout=log_file,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own group: kill() reaches the children
                )
            started.append(WorkerProcess(spec, proc, log_path))
        deadline = time.monotonic() + ready_timeout
        pending = list(started)
        while pending:
            for w in list(pending):
                text = w.log_text()
                if " ready." in text:
                    pending.remove(w)
                elif not w.alive():
                    raise RuntimeError(
                        f"worker {w.spec.name} exited with {w.proc.returncode} before it was "
                        f"ready:\n{tail(text)}"
                    )
            if pending and time.monotonic() > deadline:
                names = ", ".join(w.spec.name for w in pending)
                raise TimeoutError(
                    f"workers not ready after {ready_timeout:.0f}s: {names}\n"
                    + "\n".join(tail(w.log_text(), 15) for w in pending)
                )
            if pending:
                time.sleep(0.1)
        yield started
    finally:
        stop_all(started)


def stop_all(workers: Sequence[WorkerProcess], grace: float = 5.0) -> None:
    """SIGTERM every worker at once (warm shutdown in parallel), SIGKILL what is left.

    A Celery worker on the filesystem transport takes several seconds to close its
    connection after a warm shutdown; nothing is running by then, so the grace is short.
    """
    for w in workers:
        if w.alive():
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in workers:
        with suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        w.stop(grace=0)


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate()` until it returns something truthy; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def running_beat(*, log_dir: Path, env: Mapping[str, str] | None = None,
                 ready_timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """`clm beat` as a subprocess (own process group), stopped on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "beat.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "beat", "--loglevel", "INFO"], cwd=REPO,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, stdout=log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    handle = WorkerProcess(WorkerSpec("beat"), proc, log_path)
    try:
        wait_for(lambda: "Starting" in handle.log_text() or not handle.alive(),
                 timeout=ready_timeout, what="beat to start")
        if not handle.alive():
            raise RuntimeError(f"beat exited early:\n{tail(handle.log_text())}")
        yield proc
    finally:
        handle.stop()
