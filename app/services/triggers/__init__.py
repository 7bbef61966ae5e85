"""What is due, and arbitration: tracked models, trigger decisions, the tick's due slots.

A package; this facade re-exports the public names so `from app.services import triggers;
triggers.record_request(...)` keeps working. Its modules:
- `tracking`: the tracked set (`track_model`, `untrack_model`, `list_tracked`,
  `check_tracked_params`) and the shared rules (`parse_model_id`, intervals, due times);
- `decisions`: pending decisions (`record_request`), decisions made on the spot
  (`record_direct_request`) and `arbitrate` (coalesce, cooldown, priority);
- `tick`: the periodic slots that are due (`record_due`, `TickResult`); the tick itself
  (record, then arbitrate) is app.flows.checks.run_tick;
- `views`: decisions and the scheduler's status section, for reading.
Callers that start work go through app.flows.training (request_training / arbitrate).
"""

from app.services.triggers.decisions import (
    DEFAULT_DATASET_SPAN_DAYS,
    PRIORITY,
    arbitrate,
    record_direct_request,
    record_request,
    slot_key,
)
from app.services.triggers.tick import TickResult, record_due
from app.services.triggers.tracking import (
    check_tracked_params,
    due_at,
    interval_hours_for,
    list_tracked,
    parse_model_id,
    track_model,
    tracked_overrides,
    untrack_model,
)
from app.services.triggers.views import list_decisions, scheduler_state

__all__ = [
    "DEFAULT_DATASET_SPAN_DAYS",
    "PRIORITY",
    "TickResult",
    "arbitrate",
    "check_tracked_params",
    "due_at",
    "interval_hours_for",
    "list_decisions",
    "list_tracked",
    "parse_model_id",
    "record_direct_request",
    "record_due",
    "record_request",
    "scheduler_state",
    "slot_key",
    "track_model",
    "tracked_overrides",
    "untrack_model",
]
