"""The strategy search's task messages: names, queues and what a unit of work asks next.

Owns the task names and queues of the strategy search and the one way to build their
messages. The coordinator (ask one generation, finish the search) runs on `default`;
trial evaluations run on `evaluate`, so they spread over every worker that consumes it.
Messages carry ids only; the database holds the state they name, so a message lost
while the broker is down is published again by the evolution reaper.

`NextSteps` is what one unit of work of app/flows/evolution.py made necessary (trials
to evaluate, searches to advance): the flow publishes its `messages()` after its
transaction commits (`app.bus.producer.send_after_commit`) and returns it as a summary
(the Celery tasks return its size; the in-process driver runs the steps itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.bus.producer import TaskMessage

__all__ = [
    "ADVANCE_QUEUE",
    "ADVANCE_TASK",
    "EVALUATE_QUEUE",
    "EVALUATE_TASK",
    "REAP_TASK",
    "NextSteps",
    "advance",
    "evaluate",
]

ADVANCE_TASK = "clm.evolution.advance_search"
EVALUATE_TASK = "clm.evolution.evaluate_trial"
REAP_TASK = "clm.evolution.reap"
ADVANCE_QUEUE = "default"
EVALUATE_QUEUE = "evaluate"


def advance(search_id: str) -> TaskMessage:
    """Ask the search's next generation (or finish it after the last one)."""
    return TaskMessage(ADVANCE_TASK, ADVANCE_QUEUE, (search_id,))


def evaluate(candidate_id: int) -> TaskMessage:
    """Evaluate one candidate (one trial) walk-forward."""
    return TaskMessage(EVALUATE_TASK, EVALUATE_QUEUE, (int(candidate_id),))


@dataclass(frozen=True)
class NextSteps:
    """Follow-up work, by id: candidates to evaluate, then searches to advance."""

    trials: tuple[int, ...] = ()
    searches: tuple[str, ...] = ()

    @classmethod
    def of(cls, trials: Iterable[int] = (), searches: Iterable[str] = ()) -> NextSteps:
        return cls(tuple(int(t) for t in trials), tuple(str(s) for s in searches))

    def messages(self) -> list[TaskMessage]:
        """The task messages, in order: every evaluation, then every advance."""
        return [evaluate(t) for t in self.trials] + [advance(s) for s in self.searches]

    def __len__(self) -> int:
        return len(self.trials) + len(self.searches)
