"""What every pipeline task runs on: worker identity and threads, the lease heartbeat, the
per-step unit of work, JSON-safe results and the artifact helpers.

Owns `LeaseKeeper` (a daemon thread renewing a lease while the work runs), `StageRun` /
`StepRecord` (a step = one short transaction to mark it running, the body, one closing
transaction that checks the lease, runs the step's callbacks and marks it succeeded),
`PipelineError`, `is_transient`, `train_threads` / `worker_identity` and the fork-safety
guard, `clean` (numpy → JSON), and the stores, `put_frame` and `load_dataset`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.logs import job_logger
from app.core.objectstore import ObjectStoreUnavailable
from app.db import transaction
from app.ml.artifacts import ArtifactRef, ArtifactStore
from app.ml.data.store import MarketDataStore
from app.ml.evaluation import Dataset, dataset_from_frame
from app.services import jobs

log = logging.getLogger("app.flows.pipeline")  # one logger for the whole pipeline

# Set by the worker's main process (workers/tasks.py, worker_init) before it forks.
MAIN_PID_ENV = "CLM_WORKER_MAIN_PID"
THREADS_ENV = "CLM_TRAIN_THREADS"


class PipelineError(RuntimeError):
    """A permanent problem with the job's input (the job fails with this message)."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry with backoff: the database or the object store (an s3://
    root) went away for a moment."""
    if isinstance(exc, OperationalError | ObjectStoreUnavailable):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def train_threads(settings: Settings) -> int:
    """Threads per training call: cores ÷ this worker's concurrency (at least 1)."""
    value = os.environ.get(THREADS_ENV)
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, (os.cpu_count() or 1) // max(1, settings.worker_concurrency))


def worker_identity(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}"


def assert_not_worker_main() -> None:
    """Refuse to train in the worker's main process: OpenMP does not survive fork."""
    if os.environ.get(MAIN_PID_ENV) == str(os.getpid()):
        raise RuntimeError(
            "refusing to train in the worker's main process (OpenMP is not fork-safe): "
            "run workers with the prefork pool (`clm worker` does)"
        )


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars → Python, NaN/inf → None (JSONB refuses them)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


# -- lease heartbeat --------------------------------------------------------------------
class LeaseKeeper:
    """A daemon thread renewing a lease every lease/3 seconds while the work runs.

    If a renewal finds the lease gone (the reaper or another worker took over), `lost` is
    set and `check()` raises LeaseLost at the next step boundary; the final conditional
    write would refuse anyway, so the work is simply dropped.
    """

    def __init__(self, settings: Settings, renew: Callable[[Session], bool],
                 logger: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self.settings = settings
        self.renew = renew
        self.log = logger
        self.interval = max(0.5, settings.job_lease_seconds / 3)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clm-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with transaction(self.settings.database_url) as session:
                    ok = self.renew(session)
            except Exception as exc:  # a missed beat is not fatal; the lease has slack
                self.log.warning("lease renewal failed (%s: %s)", type(exc).__name__, exc)
                continue
            if not ok and not self._stop.is_set():
                # a stale attempt was logged `fencing: refused` by the renewal itself
                self.log.warning("lease lost: this claim no longer holds the work")
                self.lost.set()
                return

    def check(self) -> None:
        if self.lost.is_set():
            raise jobs.LeaseLost("lease lost while working")


# -- stage runs -------------------------------------------------------------------------
@dataclass
class StepRecord:
    """What a step body reports: `detail` for the API, `finish` callbacks that run in the
    step's closing transaction (so a step's effect and its 'succeeded' commit together)."""

    detail: dict[str, Any] = field(default_factory=dict)
    finish: list[Callable[[Session], None]] = field(default_factory=list)


@dataclass
class StageRun:
    settings: Settings
    job: dict[str, Any]
    owner: str
    keeper: LeaseKeeper | None = None
    current_step: str | None = None

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    @property
    def attempt(self) -> int:
        """This claim's attempt: the fencing token every write of the stage names."""
        return int(self.job["attempts"])

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return job_logger(log, self.job_id, owner=self.owner)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        if self.keeper is not None:
            self.keeper.check()
        self.current_step = name
        url = self.settings.database_url
        with transaction(url, immediate=True) as session:
            jobs.begin_step(session, self.settings, self.job_id, self.owner, self.attempt,
                            name)
        self.log.info("step %s started", name)
        t0 = time.perf_counter()
        record = StepRecord()
        yield record
        if self.keeper is not None:
            self.keeper.check()
        record.detail.setdefault("seconds", round(time.perf_counter() - t0, 3))
        with transaction(url, immediate=True) as session:
            # Lease first; the callbacks may end it (the last step finishes the job).
            jobs.hold_stage_lease(session, self.settings, self.job_id, self.owner,
                                  self.attempt)
            for callback in record.finish:
                callback(session)
            jobs.finish_step(session, self.job_id, name, detail=clean(record.detail))
        self.log.info("step %s succeeded in %.2fs", name, record.detail["seconds"])
        self.current_step = None


# -- artifacts --------------------------------------------------------------------------
def stores(settings: Settings) -> tuple[ArtifactStore, MarketDataStore]:
    return ArtifactStore.from_settings(settings), MarketDataStore.from_settings(settings)


def put_frame(artifacts: ArtifactStore, frame: Any) -> ArtifactRef:
    """Store a frame as a parquet artifact, fast: plain encoding, lz4 pages.

    ArtifactStore.put_frame dictionary-encodes every column, which for float features
    (almost all distinct values) costs ~10x the write time and makes the file larger.
    The bytes are still deterministic for the same frame (content-addressed URIs stay
    stable) and `ArtifactStore.get_frame` reads them like any parquet.
    """
    table = pa.Table.from_pandas(frame, preserve_index=True)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="lz4", use_dictionary=False)
    return artifacts.put_bytes(buf.getvalue(), fmt="parquet", suffix=".parquet")


# The last dataset this process loaded, by URI. Artifacts are immutable (named by their
# hash), so a child that trains the final fit and then a fold of the same job reads the
# parquet once. One entry only: datasets can be large.
_dataset_cache: dict[str, Dataset] = {}


def load_dataset(artifacts: ArtifactStore, ref: dict[str, Any]) -> Dataset:
    """The Dataset stored at `ref` (verified against its sha256 on first load)."""
    uri = str(ref["uri"])
    if uri not in _dataset_cache:
        dataset = dataset_from_frame(artifacts.get_frame(uri, ref["sha256"]))
        _dataset_cache.clear()
        _dataset_cache[uri] = dataset
    return _dataset_cache[uri]


def artifact_ref(ref: ArtifactRef) -> dict[str, Any]:
    """An artifact reference as stored on the job: uri, sha256, format, size."""
    return {"uri": ref.uri, "sha256": ref.sha256, "format": ref.format, "size": ref.size}
