"""Publishing evolution tasks by name, with ids only, after the caller committed.

Owns the task names and queues of the strategy search. The coordinator (ask one
generation, finish the search) runs on `default`; trial evaluations run on `evaluate`,
so they spread over every worker that consumes it. A broker that is down is logged,
not raised: the search state is in the database and the reaper publishes again.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.bus.producer import TaskMessage, send
from app.core.config import Settings

ADVANCE_TASK = "clm.evolution.advance_search"
EVALUATE_TASK = "clm.evolution.evaluate_trial"
REAP_TASK = "clm.evolution.reap"
ADVANCE_QUEUE = "default"
EVALUATE_QUEUE = "evaluate"


EvolutionDispatch = TaskMessage


def advance(search_id: str) -> EvolutionDispatch:
    return EvolutionDispatch(ADVANCE_TASK, ADVANCE_QUEUE, (search_id,))


def evaluate(candidate_id: int) -> EvolutionDispatch:
    return EvolutionDispatch(EVALUATE_TASK, EVALUATE_QUEUE, (int(candidate_id),))


def publish(dispatches: Iterable[EvolutionDispatch], settings: Settings | None = None) -> int:
    """Send each dispatch (after the commit); returns how many were published."""
    return send(dispatches, settings)
