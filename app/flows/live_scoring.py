"""Live scoring as a use case: every scored version continued by the bars stored since
its last run (app.services.live_scores), in short transactions.

Owns `score_live`: one transaction creates the records of newly scorable versions, then
one transaction per page of records claims (row locks) and scores them. Run by the
scheduler tick (app.flows.checks.tick) right after arbitration, so a bar stored before a
tick is scored by that tick; a second tick or worker finds nothing new.
"""

from __future__ import annotations

import time
from typing import Any

from app.core.config import Settings
from app.db import transaction
from app.services import live_scores

__all__ = ["score_live"]

PAGE = 500


def score_live(settings: Settings, *, page: int = PAGE) -> dict[str, Any]:
    """Score every record that has new bars; returns counts and the seconds it took."""
    t0 = time.perf_counter()
    with transaction(settings.database_url, immediate=True) as session:
        created = live_scores.ensure_records(session, settings)
    run = live_scores.ScoreRun.create(settings)
    after: int | None = 0
    while after is not None:
        with transaction(settings.database_url, immediate=True) as session:
            after = live_scores.score_batch(session, run, after_id=after, limit=page)
    return {"created": created, **run.to_dict(), "seconds": time.perf_counter() - t0}
