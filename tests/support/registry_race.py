"""Helpers for the registry's concurrency tests: promoters in threads or spawned processes,
and a reader that watches the production count while they race.

Kept apart from the test module so a spawned child imports only what it needs.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select


def promote_once(url: str, model_id: str, version: str, actor: str) -> tuple[str, Any]:
    """One promotion in its own unit of work: ("ok", result) or ("conflict", detail)."""
    from app.core.errors import Conflict
    from app.db import transaction
    from app.services import registry

    try:
        with transaction(url, immediate=True) as session:
            return "ok", registry.promote(
                session, model_id, version, actor=actor, reason=f"race {version}"
            )
    except Conflict as exc:
        return "conflict", exc.detail


def process_promoter(
    url: str, model_id: str, version: str, ready: Any, go: Any, results: Any
) -> None:
    """Child process body: open its own engine, report ready, wait for `go`, promote."""
    from app.db import ping

    try:
        ping(url)  # connect before the start signal so the race is about the promotion
        ready.put(version)
        go.wait(60)
        results.put((version, *promote_once(url, model_id, version, f"proc-{version}")))
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put((version, "error", repr(exc)))


class ProductionWatcher(threading.Thread):
    """Counts production versions of `model_id` over and over until stopped."""

    def __init__(self, url: str, model_id: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.model_id = model_id
        self.stop = threading.Event()
        self.first_read = threading.Event()  # wait on it before starting the race
        self.counts: set[int] = set()
        self.reads = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from app.core.domain import ModelStatus
        from app.db import transaction
        from app.models.registry import ModelVersion

        query = select(func.count()).where(
            ModelVersion.model_id == self.model_id,
            ModelVersion.status == ModelStatus.PRODUCTION,
        )
        try:
            while not self.stop.is_set():
                with transaction(self.url) as session:
                    self.counts.add(int(session.scalar(query) or 0))
                self.reads += 1
                self.first_read.set()
        except BaseException as exc:
            self.error = exc
            self.first_read.set()
