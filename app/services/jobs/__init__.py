"""Training jobs: creation with dedupe, the state machine, leases, steps, fan-in, the reaper,
dispatching to Celery, and queries.

Owns every write to `training_jobs`, `training_job_steps` and `training_job_work_items`.
Services take a session and plain values and only `flush()`; the caller (request handler,
flow in app/flows/) owns the transaction. A change that needs a worker registers its
message with `app.bus.producer.send_after_commit`, so it is published once the change
commits (and never for one that rolled back).

The package, by concern (each module imports its siblings directly; this facade
re-exports the public names so `from app.services import jobs; jobs.X` works):
- requests.py   what a job may ask for (`validate_training_request`, `data_window`)
- creation.py   `create_training_job`, the one-active-job rule (`ActiveJobExists`)
- evolve.py     the job row that mirrors a strategy search
- state.py      claims, leases, steps, work items, the fan-in counter, succeed / fail
- fencing.py    the claim's attempt as a fencing token checked in every worker write
- dispatch.py   task names and queues, `Dispatch`, dispatch deadlines, what a job awaits
- reaper.py     `reap`: lost leases and lost messages
- views.py      the API shape, lists, counts, the facts behind the job metrics

Two kinds of job share the table (`TrainingJob.kind`): `train` jobs run the pipeline
below; `evolve` jobs are strategy searches (POST /clm/evolve) whose status, progress and
steps (one per generation) app.services.evolution.state mirrors through `create_evolve_job`,
`evolve_generation_started`, `evolve_trial_recorded`, `evolve_generation_completed` and
`finish_evolve_job`. Only train jobs are claimed, leased and reaped here (the evolution
reaper owns searches), and the one-active-job rule covers train jobs only.

State machine of a train job (job.status / job.stage):

    queued/prepare ──claim──► running/prepare ──► running/train (fan-out of work items)
        ──last item done (fan-in counter)──► running/evaluate ──► running/register
        ──► succeeded/done            any stage ──permanent error / attempts spent──► failed

Leases: a single-task stage (prepare, evaluate, register) is owned through the job row's
`lease_owner`/`lease_expires_at`; in the train stage every work item (challenger fold,
champion fold, final fit) has its own lease. A claim is one conditional UPDATE, so a
duplicate delivery finds the lease held and exits. With no owner, `lease_expires_at` is
the dispatch deadline: if no worker claimed the work by then (message lost, broker down
at publish), the reaper publishes it again without spending an attempt. An owner whose
lease expired (worker killed, heartbeat stopped) costs an attempt; after
`job_max_attempts` the job fails with the reason.
"""

from app.services.jobs.creation import ActiveJobExists, create_training_job, find_active_job
from app.services.jobs.dispatch import (
    REAP_TASK,
    STAGE_TASKS,
    WORK_TASKS,
    Dispatch,
    item_dispatch,
    pending_dispatches,
    stage_dispatch,
)
from app.services.jobs.evolve import (
    EVOLVE_FINAL_STEP,
    create_evolve_job,
    evolve_generation_completed,
    evolve_generation_started,
    evolve_job_running,
    evolve_step_name,
    evolve_trial_recorded,
    finish_evolve_job,
)
from app.services.jobs.reaper import ReapResult, reap
from app.services.jobs.requests import (
    MAX_SPAN_DAYS,
    STRATEGY_KEYS,
    TrainingRequest,
    data_window,
    is_job_id,
    validate_training_request,
)
from app.services.jobs.state import (
    FencingRefused,
    LeaseLost,
    begin_step,
    claim_stage,
    claim_work_item,
    complete_work_item,
    end_step,
    fail_job,
    finish_step,
    hold_stage_lease,
    new_owner,
    record_evaluation,
    release_item_lease,
    release_stage_lease,
    renew_item_lease,
    renew_stage_lease,
    start_step,
    start_train_stage,
    succeed_job,
    update_artifacts,
)
from app.services.jobs.views import (
    STEP_NAMES,
    JobNotFound,
    get_job,
    job_counts,
    job_snapshot,
    job_to_dict,
    list_jobs,
    lost_stage_leases,
    parse_cursor_time,
    train_job_durations,
    train_jobs_by_status_and_trigger,
    train_step_durations,
    work_items,
)

__all__ = [
    "EVOLVE_FINAL_STEP", "MAX_SPAN_DAYS", "REAP_TASK", "STAGE_TASKS", "STEP_NAMES",
    "STRATEGY_KEYS", "WORK_TASKS", "ActiveJobExists", "Dispatch", "FencingRefused", "JobNotFound",
    "LeaseLost",
    "ReapResult", "TrainingRequest", "begin_step", "claim_stage", "claim_work_item",
    "complete_work_item", "create_evolve_job", "create_training_job", "data_window",
    "end_step", "evolve_generation_completed", "evolve_generation_started",
    "evolve_job_running", "evolve_step_name", "evolve_trial_recorded", "fail_job",
    "find_active_job", "finish_evolve_job", "finish_step", "get_job", "hold_stage_lease",
    "is_job_id", "item_dispatch", "job_counts", "job_snapshot", "job_to_dict", "list_jobs",
    "lost_stage_leases", "new_owner", "parse_cursor_time", "pending_dispatches", "reap",
    "record_evaluation", "release_item_lease", "release_stage_lease", "renew_item_lease",
    "renew_stage_lease", "stage_dispatch", "start_step", "start_train_stage", "succeed_job",
    "train_job_durations", "train_jobs_by_status_and_trigger", "train_step_durations",
    "update_artifacts", "validate_training_request", "work_items",
]
