"""The training pipeline's step bodies and the executors the Celery tasks call.

Owns what each stage does with the ML core (app.ml.data, app.ml.features, app.ml.evaluation,
app.ml.trainers, app.ml.artifacts, app.ml.lineage, app.ml.oos) and the unit-of-work
choreography around it: claim (conditional UPDATE) → heartbeat thread renewing the lease →
steps, each recorded in its own short transaction → hand-over transaction, whose messages
go out once it commits (app.services.jobs registers them with
app.bus.producer.send_after_commit).

The package, by concern (this facade re-exports what workers/tasks.py, tests and the
benches use; the modules import each other directly):
- runtime.py    worker identity and threads, LeaseKeeper, StageRun (a step's transactions),
                JSON-safe results, artifact helpers
- stages.py     prepare (data → features → folds → fan-out) and the train-stage work items
- evaluate.py   the fan-in (gate, champion), the drift reference, register + decide status
- executors.py  execute_stage / execute_work_item / execute_reap: what the tasks call

Stages and the seed's ten steps:
- prepare (queue `data`): validate_request, fetch_data, validate_data, build_features,
  split_folds; stores the raw slice, the feature dataset and the lineage as artifacts and
  fans out one work item per walk-forward fold, per champion fold and the final fit.
- work items (queue `train`): train_folds (challenger + champion folds) and final_fit, in
  parallel across workers; each stores its out-of-sample predictions or the model as an
  artifact and counts itself into the fan-in counter (app.services.jobs.complete_work_item).
- evaluate (queue `evaluate`): evaluate (backtest of the concatenated out-of-sample
  predictions, the gate, champion vs challenger, and the drift reference from the dataset
  and OOS predictions it has just loaded), then register_version and decide_promotion
  (candidate, or shadow first; failed with the failed criteria).

A job's `strategy` (what a strategy search found: feature windows, label horizon — the
purge follows it —, seed, and trading rules: entry/exit thresholds, minimum holding
period, stop loss / take profit) is honoured end to end: with rules, the out-of-sample
probabilities are traded and backtested by app.ml.oos, the very builder the search
evaluated the candidate with, so the gate judges the strategy the search found. The
strategy is stored in the version's lineage.

Artifacts: frames are stored as parquet without dictionary encoding (`put_frame`): these
are float columns, for which dictionary pages cost most of the write time and save
nothing; any parquet reader (ArtifactStore.get_frame) reads them.

Outcomes: a job that ran to the end *succeeds* whatever the gate said. Passing the gate
(and the champion, when there is one) registers a `candidate` (`shadow` when
CLM_SHADOW_MODE is on, or when CLM_AUTO_PROMOTE_TO_CANDIDATE is off); failing registers a
`failed` version — with its model artifact and lineage, so a person can still inspect it or
promote it with force — and `evaluation.passed` is false with the failed criteria. A job
fails only when the pipeline could not finish (bad data, an error, attempts spent).

Only ids and artifact URIs cross process boundaries. Nothing here ever puts a version in
production: that takes an explicit promote.

Fork safety: XGBoost and LightGBM use OpenMP, which does not survive fork. Models are
trained and loaded only inside task bodies (in prefork children), never at import or in
the worker's main process, with `n_threads` = cores ÷ worker concurrency.
"""

from app.flows.pipeline.evaluate import decide_status, drift_lineage, evaluate_job
from app.flows.pipeline.executors import (
    _fail,  # tests/test_ops_faults.py drives it as a cancelled pool process would
    enqueue_job,
    execute_reap,
    execute_stage,
    execute_work_item,
)
from app.flows.pipeline.runtime import (
    MAIN_PID_ENV,
    THREADS_ENV,
    LeaseKeeper,
    PipelineError,
    is_transient,
    load_dataset,
    put_frame,
    train_threads,
    worker_identity,
)

__all__ = [
    "MAIN_PID_ENV", "THREADS_ENV", "LeaseKeeper", "PipelineError", "_fail", "decide_status",
    "drift_lineage", "enqueue_job", "evaluate_job", "execute_reap", "execute_stage",
    "execute_work_item", "is_transient", "load_dataset", "put_frame", "train_threads",
    "worker_identity",
]
