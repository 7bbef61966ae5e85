"""The training pipeline's step bodies and the executors the Celery tasks call.

Owns what each stage does with the ML core (app.ml.data, app.ml.features, app.ml.evaluation,
app.ml.trainers, app.ml.artifacts, app.ml.lineage) and the unit-of-work choreography around it:
claim (conditional UPDATE) → heartbeat thread renewing the lease → steps, each recorded in
its own short transaction → hand-over transaction → publish the next tasks after commit.

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
probabilities become positions through app.ml.evolution.strategy.positions_from_probabilities,
the very function the search evaluated the candidate with, so the gate judges the
strategy the search found. The strategy is stored in the version's lineage.

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

from __future__ import annotations

import itertools
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

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.logs import job_logger
from app.core.timeutil import isoformat
from app.db import transaction
from app.models.jobs import JobStage, WorkKind
from app.services import jobs

log = logging.getLogger(__name__)

# Set by the worker's main process (workers/tasks.py, worker_init) before it forks.
MAIN_PID_ENV = "CLM_WORKER_MAIN_PID"
THREADS_ENV = "CLM_TRAIN_THREADS"


class PipelineError(RuntimeError):
    """A permanent problem with the job's input (the job fails with this message)."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry with backoff: the database went away for a moment."""
    if isinstance(exc, OperationalError):
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


def _assert_not_worker_main() -> None:
    if os.environ.get(MAIN_PID_ENV) == str(os.getpid()):
        raise RuntimeError(
            "refusing to train in the worker's main process (OpenMP is not fork-safe): "
            "run workers with the prefork pool (`clm worker` does)"
        )


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars → Python, NaN/inf → None (JSONB refuses them)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
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
                self.log.warning("lease lost: another worker owns this work now")
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
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return job_logger(log, self.job_id, owner=self.owner)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        if self.keeper is not None:
            self.keeper.check()
        self.current_step = name
        url = self.settings.database_url
        with transaction(url, immediate=True) as session:
            jobs.begin_step(session, self.settings, self.job_id, self.owner, name)
        self.log.info("step %s started", name)
        t0 = time.perf_counter()
        record = StepRecord()
        yield record
        if self.keeper is not None:
            self.keeper.check()
        record.detail.setdefault("seconds", round(time.perf_counter() - t0, 3))
        with transaction(url, immediate=True) as session:
            # Lease first; the callbacks may end it (the last step finishes the job).
            jobs.hold_stage_lease(session, self.settings, self.job_id, self.owner)
            for callback in record.finish:
                callback(session)
            jobs.finish_step(session, self.job_id, name, detail=_clean(record.detail))
        self.log.info("step %s succeeded in %.2fs", name, record.detail["seconds"])
        self.current_step = None


def _stores(settings: Settings) -> tuple[Any, Any]:
    from app.ml.artifacts import ArtifactStore
    from app.ml.data.store import MarketDataStore

    return ArtifactStore(settings.artifact_root), MarketDataStore(settings.data_dir)


def _eval_config(settings: Settings, strategy: dict[str, Any] | None) -> Any:
    """Walk-forward set-up from settings plus the strategy's thresholds and label horizon
    (purge None: it follows the horizon)."""
    from app.ml.evaluation import EvaluationConfig

    return EvaluationConfig.from_settings(settings, **jobs.strategy_config_overrides(strategy))


def put_frame(artifacts: Any, frame: Any) -> Any:
    """Store a frame as a parquet artifact, fast: plain encoding, lz4 pages.

    ArtifactStore.put_frame dictionary-encodes every column, which for float features
    (almost all distinct values) costs ~10x the write time and makes the file larger.
    The bytes are still deterministic for the same frame (content-addressed URIs stay
    stable) and `ArtifactStore.get_frame` reads them like any parquet.
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=True)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="lz4", use_dictionary=False)
    return artifacts.put_bytes(buf.getvalue(), fmt="parquet", suffix=".parquet")


def _champion_strategy(settings: Settings, job: dict[str, Any]) -> dict[str, Any] | None:
    """The production version of the job's model_id as a strategy to retrain, or None."""
    from app.services import registry

    with transaction(settings.database_url) as session:
        prod = registry.get_production(session, job["model_id"])
    if prod is None:
        return None
    lineage = prod.get("lineage") or {}
    model = lineage.get("model") or {}
    features = lineage.get("features") or {}
    strategy = lineage.get("strategy") or {}
    try:  # the champion trades by its own rules when its strategy had them
        rules = jobs.trading_rules(strategy)
    except ValueError:
        rules = None
    return {
        "version": prod["version"],
        "model_type": prod["model_type"],
        "params": dict(prod.get("params") or {}),
        "windows": features.get("windows"),
        "seed": int(model.get("seed", 0) or 0),
        "rules": rules.to_dict() if rules is not None else None,
        "metrics": prod.get("metrics"),
    }


# The last dataset this process loaded, by URI. Artifacts are immutable (named by their
# hash), so a child that trains the final fit and then a fold of the same job reads the
# parquet once. One entry only: datasets can be large.
_dataset_cache: dict[str, Any] = {}


def load_dataset(artifacts: Any, ref: dict[str, Any]) -> Any:
    """The Dataset stored at `ref` (verified against its sha256 on first load)."""
    from app.ml.evaluation import dataset_from_frame

    uri = str(ref["uri"])
    if uri not in _dataset_cache:
        dataset = dataset_from_frame(artifacts.get_frame(uri, ref["sha256"]))
        _dataset_cache.clear()
        _dataset_cache[uri] = dataset
    return _dataset_cache[uri]


def _ref(ref: Any) -> dict[str, Any]:
    return {"uri": ref.uri, "sha256": ref.sha256, "format": ref.format, "size": ref.size}


def _run_prepare(run: StageRun) -> list[jobs.Dispatch]:
    from app.ml.data.importer import find_gaps
    from app.ml.evaluation import dataset_to_frame, make_folds, prepare_dataset, remap_folds
    from app.ml.features import normalize_windows
    from app.ml.lineage import build_lineage
    from app.ml.trainers import get_trainer
    from app.services.checks.regime import restrict_to_regime, summarize_regimes

    settings, job = run.settings, run.job
    artifacts, market = _stores(settings)
    strategy = job.get("strategy") or {}

    with run.step("validate_request") as rec:
        trainer = get_trainer(job["model_type"])  # this worker may lack a plug-in
        params = trainer.validate_params(job["params"])
        cfg = _eval_config(settings, strategy)
        windows = normalize_windows(strategy.get("windows"))
        seed = int(strategy.get("seed", 0))
        rules = jobs.trading_rules(strategy)
        rec.detail.update(model_type=job["model_type"], params=params, seed=seed,
                          label_horizon=cfg.label_horizon,
                          rules=rules.to_dict() if rules is not None else None)

    with run.step("fetch_data") as rec:
        coverage = market.coverage(job["symbol"], job["timeframe"])
        if coverage is None:
            raise PipelineError(f"no market data for {job['symbol']} {job['timeframe']}")
        start, end = jobs.data_window(coverage.last.to_pydatetime(), job["dataset_span_days"],
                                      job["timeframe"])
        frame = market.read(job["symbol"], job["timeframe"], start, end)
        raw_ref = put_frame(artifacts, frame)
        rec.detail.update(rows=len(frame), first=isoformat(frame.index[0].to_pydatetime()),
                          last=isoformat(frame.index[-1].to_pydatetime()), uri=raw_ref.uri)

    with run.step("validate_data") as rec:
        values = frame[["open", "high", "low", "close", "volume"]].to_numpy()
        if not frame.index.is_monotonic_increasing or not frame.index.is_unique:
            raise PipelineError("market data timestamps are not strictly increasing")
        if not (values[:, :4] > 0).all() or not (values[:, 4] >= 0).all():
            raise PipelineError("market data has non-positive prices or negative volume")
        if (frame["high"] < frame["low"]).any():
            raise PipelineError("market data has bars with high < low")
        gaps, missing = find_gaps(frame.index, job["timeframe"])
        rec.detail.update(rows=len(frame), gaps=len(gaps), missing_bars=int(missing))

    with run.step("build_features") as rec:
        dataset = prepare_dataset(frame, cfg, windows)
        if job.get("regime"):  # a regime-specific model learns from that regime's bars only
            dataset = restrict_to_regime(dataset, frame, job["regime"])
        ds_ref = put_frame(artifacts, dataset_to_frame(dataset))
        champion = _champion_strategy(settings, job)
        champ_ds_ref = None
        champ_dataset = dataset
        if champion is not None:
            champ_windows = normalize_windows(champion["windows"])
            champion["windows"] = {k: list(v) for k, v in champ_windows.items()}
            if champ_windows != dataset.windows:
                champ_dataset = prepare_dataset(frame, cfg, champ_windows)
                if job.get("regime"):
                    champ_dataset = restrict_to_regime(champ_dataset, frame, job["regime"])
                champ_ds_ref = put_frame(artifacts, dataset_to_frame(champ_dataset))
        rec.detail.update(rows=dataset.n_rows, features=len(dataset.feature_names),
                          feature_set_version=dataset.feature_set_version, uri=ds_ref.uri)

    with run.step("split_folds") as rec:
        folds = make_folds(dataset.n_rows, cfg)
        champ_folds = []
        if champion is not None:
            champ_folds = (folds if champ_dataset is dataset else
                           remap_folds(folds, dataset.timestamps, champ_dataset.timestamps,
                                       cfg.purge_rows))
        lineage = build_lineage(
            frame=frame, model_type=job["model_type"], params=params, seed=seed,
            windows=windows, label_horizon=cfg.label_horizon, symbol=job["symbol"],
            timeframe=job["timeframe"], evaluation=cfg.to_dict(), folds=folds,
            dataset_uri=raw_ref.uri, dataset_sha256=raw_ref.sha256,
        )
        # What the search found, as the job ran it (None: the configured defaults).
        lineage["strategy"] = _lineage_strategy(job.get("strategy"), cfg, windows, seed, rules)
        # The raw bars are in memory here: their regime summary is cheap now, and the
        # register step need not read them back (continuous learning's lineage key).
        with suppress(ValueError):  # too few bars to classify: the regime check recomputes
            lineage["training_regime"] = summarize_regimes(frame)
        lineage_ref = artifacts.put_json(_clean(lineage))
        rec.detail.update(folds=[f.to_dict() for f in folds],
                          champion=champion["version"] if champion else None)

    # Longest first (final fit, then the folds with the most training rows) so parallel
    # workers finish together.
    items: list[tuple[WorkKind, int]] = [(WorkKind.FINAL, 0)]
    for f in sorted(folds, key=lambda f: -f.train_rows):
        items.append((WorkKind.FOLD, f.index))
        if champion is not None:
            items.append((WorkKind.CHAMPION, f.index))
    state = {
        "raw": _ref(raw_ref),
        "dataset": _ref(ds_ref),
        "lineage": _ref(lineage_ref),
        "config": cfg.to_dict(),
        "params": params,
        "seed": seed,
        "folds": [f.to_dict() for f in folds],
        "champion": champion,
        "champion_dataset": _ref(champ_ds_ref) if champ_ds_ref is not None else None,
        "champion_folds": [f.to_dict() for f in champ_folds],
    }
    with transaction(settings.database_url, immediate=True) as session:
        dispatches = jobs.start_train_stage(session, settings, run.job_id, run.owner, items,
                                            _clean(state))
    run.log.info("fanned out %d work items", len(items))
    return dispatches


def _run_work_item(settings: Settings, claim: dict[str, Any], worker: str,
                   keeper: LeaseKeeper) -> dict[str, Any]:
    from app.ml.evaluation import Fold, final_fit, train_fold
    from app.ml.trainers import get_trainer, save_model

    _assert_not_worker_main()
    job, item = claim["job"], claim["item"]
    state = job["artifacts"]
    kind = WorkKind(item["kind"])
    artifacts, _ = _stores(settings)
    n_threads = train_threads(settings)
    if kind == WorkKind.CHAMPION:
        champion = state["champion"]
        ds_ref = state.get("champion_dataset") or state["dataset"]
        model_type, params, seed = champion["model_type"], champion["params"], champion["seed"]
        folds = state["champion_folds"]
    else:
        ds_ref = state["dataset"]
        model_type, params, seed = job["model_type"], state["params"], state["seed"]
        folds = state["folds"]
    dataset = load_dataset(artifacts, ds_ref)
    trainer = get_trainer(model_type)
    params = trainer.validate_params(params)
    keeper.check()
    common = {"n_threads": n_threads, "worker": worker}
    if kind == WorkKind.FINAL:
        t0 = time.perf_counter()
        model = final_fit(dataset, trainer, params, seed=seed, n_threads=n_threads)
        fit_s = time.perf_counter() - t0
        ref = save_model(artifacts, trainer, model)
        return {**_ref(ref), "fit_s": round(fit_s, 4), "train_rows": dataset.n_rows, **common}
    fold = Fold.from_dict(folds[int(item["fold"])])
    pred = train_fold(dataset, fold, trainer, params, seed=seed, n_threads=n_threads)
    ref = put_frame(artifacts, pred.to_frame())
    return {**_ref(ref), "fit_s": round(pred.fit_seconds, 4),
            "predict_s": round(pred.predict_seconds, 4), "train_rows": pred.train_rows,
            "test_rows": len(pred.timestamps), **common}


def _lineage_strategy(strategy: dict[str, Any] | None, cfg: Any, windows: Any, seed: int,
                      rules: Any) -> dict[str, Any] | None:
    """The strategy a job ran, normalized (windows filled, rules with defaults), for the
    version's lineage; None when the job had none (the configured defaults)."""
    if not strategy:
        return None
    return {
        "windows": {k: list(v) for k, v in windows.items()},
        "label_horizon": cfg.label_horizon,
        "long_threshold": cfg.long_threshold,
        "short_threshold": cfg.short_threshold,
        "seed": seed,
        "rules": rules.to_dict() if rules is not None else None,
    }


def _ordered(predictions: list[Any]) -> list[Any]:
    """Fold predictions in time order, checked disjoint (as evaluate_predictions does)."""
    ordered = sorted(predictions, key=lambda p: p.timestamps[0])
    for a, b in itertools.pairwise(ordered):
        if a.timestamps[-1] >= b.timestamps[0]:
            raise ValueError(f"fold {a.fold} and fold {b.fold} overlap in time "
                             f"({b.timestamps[0]}): out-of-sample slices must be disjoint")
    return ordered


def oos_metrics(dataset: Any, predictions: list[Any], cfg: Any,
                rules: Any = None) -> dict[str, Any]:
    """Backtest metrics of the concatenated out-of-sample predictions.

    Without trading rules: `app.ml.evaluation.evaluate_predictions` (P > long → +1, P < short
    → −1). With rules (a strategy search's candidate): positions from
    `app.ml.evolution.strategy.positions_from_probabilities` over the whole OOS series, as
    the search computed them, backtested with the same fees — so the metrics are the
    search's for the same bars, seed and folds. Same keys either way (plus turnover).
    """
    import numpy as np
    import pandas as pd

    from app.ml.backtest import run_backtest
    from app.ml.evaluation import evaluate_predictions
    from app.ml.scoring import promotion_score

    if rules is None:
        return evaluate_predictions(dataset, predictions, cfg)
    from app.ml.evolution.strategy import positions_from_probabilities, turnover

    if not predictions:
        raise ValueError("no fold predictions to evaluate")
    ordered = _ordered(predictions)
    stamps = pd.DatetimeIndex(ordered[0].timestamps.append([p.timestamps for p in ordered[1:]]))
    proba = np.concatenate([np.asarray(p.proba, dtype=np.float64) for p in ordered])
    rows = dataset.timestamps.get_indexer(stamps)
    if (rows < 0).any():
        missing = stamps[int(np.flatnonzero(rows < 0)[0])]
        raise ValueError(f"prediction timestamp {missing} has no close in the dataset")
    close = dataset.close[rows]
    positions = positions_from_probabilities(proba, close, rules)
    result = run_backtest(close, positions, fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps,
                          periods_per_year=cfg.periods_per_year, timestamps=stamps)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["promotion_score"] = promotion_score(metrics)
    metrics["oos_bars"] = len(stamps)
    metrics["exposure"] = float(np.mean(positions != 0.0))
    metrics["turnover"] = turnover(positions)
    metrics["accuracy"] = float(np.mean((proba > 0.5) == (dataset.y[rows] == 1.0)))
    return metrics


@dataclass
class FanIn:
    """What the evaluate step loaded and concluded (kept in memory for the drift
    reference, which needs the same dataset and out-of-sample predictions)."""

    evaluation: dict[str, Any]
    dataset: Any
    predictions: list[Any]


def _fan_in(settings: Settings, job: dict[str, Any], items: list[dict[str, Any]]) -> FanIn:
    from app.ml.evaluation import EvaluationConfig, FoldPrediction, apply_gate, compare_champion

    artifacts, _ = _stores(settings)
    state = job["artifacts"]
    cfg = EvaluationConfig.from_dict(state["config"])
    rules = jobs.trading_rules(job.get("strategy"))

    def predictions(kind: WorkKind) -> list[Any]:
        out = []
        for it in items:
            if it["kind"] == kind.value:
                r = it["result"]
                out.append(FoldPrediction.from_frame(artifacts.get_frame(r["uri"], r["sha256"])))
        return out

    ds_ref = state["dataset"]
    dataset = load_dataset(artifacts, ds_ref)
    fold_predictions = predictions(WorkKind.FOLD)
    metrics = _clean(oos_metrics(dataset, fold_predictions, cfg, rules))
    gate = apply_gate(metrics, settings.gate_for(job["model_type"]))
    failed = list(gate.failed_criteria)
    champion_doc = None
    passed = gate.passed
    champion = state.get("champion")
    if champion is not None:
        champ_ref = state.get("champion_dataset") or ds_ref
        champ_ds = dataset if champ_ref is ds_ref else load_dataset(artifacts, champ_ref)
        champ_rules = jobs.trading_rules({"rules": champion.get("rules")})
        champ_metrics = _clean(oos_metrics(champ_ds, predictions(WorkKind.CHAMPION), cfg,
                                           champ_rules))
        comparison = compare_champion(metrics, champ_metrics, settings.champion_sharpe_margin)
        champion_doc = {"version": champion["version"], "metrics": champ_metrics,
                        **comparison.to_dict()}
        if not comparison.passed:
            passed = False
            failed.append({
                "name": "champion_sharpe", "value": comparison.challenger_sharpe,
                "threshold": (None if comparison.champion_sharpe is None
                              else comparison.champion_sharpe + comparison.margin),
                "op": ">=", "gate_key": "champion_sharpe_margin", "reason": comparison.reason,
            })
    fold_timings = [
        {"kind": it["kind"], "fold": it["fold"], "fit_s": it["result"].get("fit_s"),
         "train_rows": it["result"].get("train_rows"), "worker": it["result"].get("worker"),
         "attempts": it["attempts"]}
        for it in items
    ]
    evaluation = _clean({
        "metrics": metrics,
        "passed": passed,
        "gate_passed": gate.passed,
        "failed_criteria": failed,
        "promotion_score": gate.promotion_score,
        "thresholds": gate.thresholds,
        "champion": champion_doc,
        "config": cfg.to_dict(),
        "positions": "strategy_rules" if rules is not None else "thresholds",
        "work_items": fold_timings,
    })
    return FanIn(evaluation, dataset, fold_predictions)


def evaluate_job(settings: Settings, job: dict[str, Any],
                 items: list[dict[str, Any]]) -> dict[str, Any]:
    """Fan-in: backtest the out-of-sample predictions (under the strategy's trading rules
    when it has them), apply the gate and compare with the champion. Returns the job's
    evaluation document."""
    return _fan_in(settings, job, items).evaluation


def drift_lineage(settings: Settings, dataset: Any, predictions: list[Any]) -> dict[str, Any]:
    """The version's `drift_reference` lineage key, from data already in memory: every
    training row of the job's dataset and the walk-forward *out-of-sample* probabilities
    in time order — exactly what
    app.services.checks.drift.training_lineage builds after reading them
    back from the artifacts. Returns {"drift_reference": pointer}."""
    import numpy as np

    from app.services.checks.drift import build_reference, save_reference

    oos = [np.asarray(p.proba, dtype=np.float64) for p in _ordered(predictions)]
    reference = build_reference(
        dataset.frame_X(), np.concatenate(oos) if oos else None, windows=dataset.windows,
        train_start=dataset.timestamps[0] if dataset.n_rows else None,
        train_end=dataset.timestamps[-1] if dataset.n_rows else None,
    )
    artifacts, _ = _stores(settings)
    return {"drift_reference": save_reference(artifacts, reference)}


def decide_status(evaluation: dict[str, Any], settings: Settings) -> tuple[str, str]:
    """The new version's status: never production (that takes an explicit promote)."""
    if not evaluation.get("passed"):
        parts = []
        for c in evaluation.get("failed_criteria", []):
            value = c.get("value")
            shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            parts.append(f"{c['name']} {shown} (needs {c['op']} {c.get('threshold')})")
        return "failed", "failed the promotion gate: " + "; ".join(parts)
    if settings.shadow_mode:
        return "shadow", "passed the gate; shadow mode is on (CLM_SHADOW_MODE): shadow first"
    if settings.auto_promote_to_candidate:
        return "candidate", "passed the gate; auto-promoted to candidate"
    return "shadow", ("passed the gate; auto-promotion to candidate is off "
                      "(CLM_AUTO_PROMOTE_TO_CANDIDATE=0): waiting in shadow for a person")


def _run_evaluate(run: StageRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evaluate step: the evaluation document, and the drift reference built from the
    dataset and predictions it loaded (kept on the job for a register step that runs
    elsewhere). Returns (evaluation, drift lineage)."""
    with transaction(run.settings.database_url) as session:
        items = jobs.work_items(session, run.job_id)
    with run.step("evaluate") as rec:
        fan_in = _fan_in(run.settings, run.job, items)
        evaluation = fan_in.evaluation
        t0 = time.perf_counter()
        try:
            drift = drift_lineage(run.settings, fan_in.dataset, fan_in.predictions)
        except Exception:  # like app.services.checks.drift.training_lineage: never fails the job
            run.log.exception("could not build the drift reference")
            drift = {}
        rec.detail.update(passed=evaluation["passed"],
                          sharpe=evaluation["metrics"].get("sharpe"),
                          failed_criteria=[c["name"] for c in evaluation["failed_criteria"]],
                          drift_reference_s=round(time.perf_counter() - t0, 3))

        def record(session: Session) -> None:
            jobs.update_artifacts(session, run.job_id, run.owner, {"drift_lineage": drift})
            jobs.record_evaluation(session, run.job_id, run.owner, evaluation)

        rec.finish.append(record)
    return evaluation, drift


def _run_register(run: StageRun, evaluation: dict[str, Any],
                  drift: dict[str, Any] | None) -> None:
    """register_version + decide_promotion. `drift`: the evaluate step's drift lineage;
    None (a job evaluated before it kept one) rebuilds it from the artifacts."""
    from app.ml.artifacts import ArtifactStore
    from app.services import registry
    from app.services.checks.drift import training_lineage
    from app.services.checks.regime import consider_regime_champion

    settings, job = run.settings, run.job
    with transaction(settings.database_url) as session:
        items = jobs.work_items(session, run.job_id)
    final = next(it for it in items if it["kind"] == WorkKind.FINAL.value)["result"]
    state = job["artifacts"]
    lineage = ArtifactStore(settings.artifact_root).get_json(
        state["lineage"]["uri"], state["lineage"]["sha256"])
    lineage["model"]["n_threads"] = final.get("n_threads")
    lineage["job"] = {"job_id": run.job_id, "trigger_reason": job["trigger_reason"],
                      "requested_by": job["requested_by"], "attempts": job["attempts"]}
    lineage["artifacts"] = {"dataset": state["dataset"], "raw": state["raw"],
                            "model": {k: final[k] for k in ("uri", "sha256", "format")}}
    if drift is None:  # reads the dataset and predictions back: the slow way
        drift = training_lineage(settings, state, items)  # drift reference, regimes
    lineage.update(drift)
    status, reason = decide_status(evaluation, settings)
    actor = f"job:{run.job_id}"
    registered: dict[str, Any] = {}

    with run.step("register_version") as rec:
        def register(session: Session) -> None:
            version = registry.register_version(
                session, model_type=job["model_type"], symbol=job["symbol"],
                timeframe=job["timeframe"], metrics=evaluation["metrics"],
                params=state["params"], tags={"job_id": run.job_id,
                                              "trigger_reason": job["trigger_reason"]},
                status="training", regime=job.get("regime"),
                artifact={k: final[k] for k in ("uri", "sha256", "format")},
                lineage=_clean(lineage), evaluation=evaluation, job_id=run.job_id,
                actor=actor, reason=f"trained by job {run.job_id}",
            )
            registered.update(version)
            rec.detail.update(version=version["version"], artifact=final["uri"])

        rec.finish.append(register)

    with run.step("decide_promotion") as rec:
        def decide(session: Session) -> None:
            version = registered.get("version") or registry.get_version_by_job(
                session, run.job_id)["version"]  # type: ignore[index]
            registry.set_status(session, job["model_id"], version, status, actor=actor,
                                reason=reason)
            consider_regime_champion(session, model_id=job["model_id"], regime=job.get("regime"),
                                     version=version, metrics=evaluation["metrics"],
                                     passed=bool(evaluation.get("passed")), job_id=run.job_id)
            final_eval = {**evaluation, "decision": {"status": status, "reason": reason}}
            jobs.succeed_job(session, run.job_id, run.owner, version=version,
                             evaluation=final_eval)
            rec.detail.update(status=status, reason=reason, version=version)

        rec.finish.append(decide)


# -- executors (what the Celery tasks call) ---------------------------------------------
def _fail(settings: Settings, job_id: str, owner: str, step: str | None,
          exc: BaseException, label: str | None = None) -> None:
    if _pool_process_terminating():  # cancelled: not the job's fault (lease -> reaper)
        raise SystemExit(1)
    where = f"{step or 'task'}: " + (f"{label}: " if label else "")
    if "TimeLimit" in type(exc).__name__:
        message = (f"{where}ran past its time limit "
                   f"(CLM_TASK_SOFT_TIME_LIMIT_S={settings.task_soft_time_limit_s})")
    else:
        message = f"{where}{type(exc).__name__}: {exc}"
    try:
        with transaction(settings.database_url, immediate=True) as session:
            jobs.fail_job(session, job_id, message, owner=owner, step=step)
    except Exception:  # the lease will expire and the reaper decides
        job_logger(log, job_id).exception("could not record the failure")


def _pool_process_terminating() -> bool:
    """True once Celery's pool process got its terminate signal (task cancelled on broker
    connection loss, soft shutdown, revoke): billiard raises SystemExit from the signal
    handler, and inside a native callback (XGBoost's data iterator) that SystemExit is
    swallowed and resurfaces as a library error, which must not fail the job."""
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # older billiard, or not in a Celery pool process
        return False
    return bool(terminate_handler_fired())


def execute_stage(settings: Settings, job_id: str, stage: JobStage | str,
                  worker: str | None = None) -> str:
    """Run one single-task stage of a job (prepare, evaluate or register).

    Returns "done", "duplicate" (someone else owns it or it moved on), "lost" (the lease
    was taken over mid-way), or "failed" (permanent error recorded on the job). Transient
    database errors are re-raised for the task's retry with backoff.
    """
    stage = JobStage(stage)
    owner = jobs.new_owner(worker or worker_identity())
    jl = job_logger(log, job_id, stage=stage.value, owner=owner)
    with transaction(settings.database_url, immediate=True) as session:
        job = jobs.claim_stage(session, settings, job_id, stage, owner)
    if job is None:
        jl.info("stage %s already owned, done or moved on: nothing to do", stage.value)
        return "duplicate"
    run = StageRun(settings, job, owner)
    dispatches: list[jobs.Dispatch] = []
    try:
        renew = lambda s: jobs.renew_stage_lease(s, settings, job_id, owner)  # noqa: E731
        with LeaseKeeper(settings, renew, jl) as keeper:
            run.keeper = keeper
            if stage == JobStage.PREPARE:
                dispatches = _run_prepare(run)
            elif stage == JobStage.EVALUATE:
                evaluation, drift = _run_evaluate(run)
                _run_register(run, evaluation, drift)
            else:
                _run_register(run, job["evaluation"] or {},
                              (job.get("artifacts") or {}).get("drift_lineage"))
    except jobs.LeaseLost as exc:
        jl.warning("stopped: %s", exc)
        return "lost"
    except Exception as exc:
        if is_transient(exc):
            jl.warning("transient error in %s (%s); retrying", run.current_step, exc)
            try:
                with transaction(settings.database_url) as session:
                    jobs.release_stage_lease(session, settings, job_id, owner)
            except Exception:
                pass  # database still away: the lease expires and the reaper recovers
            raise
        jl.exception("step %s failed", run.current_step)
        _fail(settings, job_id, owner, run.current_step, exc)
        return "failed"
    jobs.enqueue(dispatches, settings)
    return "done"


def execute_work_item(settings: Settings, job_id: str, kind: WorkKind | str, fold: int,
                      worker: str | None = None) -> str:
    """Run one work item of the train stage (a fold, a champion fold or the final fit);
    same return values as `execute_stage`."""
    kind = WorkKind(kind)
    worker = worker or worker_identity()
    owner = jobs.new_owner(worker)
    jl = job_logger(log, job_id, kind=kind.value, fold=int(fold), owner=owner)
    with transaction(settings.database_url, immediate=True) as session:
        claim = jobs.claim_work_item(session, settings, job_id, kind, fold, owner)
    if claim is None:
        jl.info("%s %d already owned or done, or the job moved on: nothing to do",
                kind.value, fold)
        return "duplicate"
    step = "final_fit" if kind == WorkKind.FINAL else "train_folds"
    try:
        renew = lambda s: jobs.renew_item_lease(s, settings, job_id, kind, fold, owner)  # noqa: E731
        with LeaseKeeper(settings, renew, jl) as keeper:
            result = _run_work_item(settings, claim, worker, keeper)
            keeper.check()
        with transaction(settings.database_url, immediate=True) as session:
            dispatches = jobs.complete_work_item(session, settings, job_id, kind, fold, owner,
                                                 _clean(result))
    except jobs.LeaseLost as exc:
        jl.warning("stopped: %s", exc)
        return "lost"
    except Exception as exc:
        if is_transient(exc):
            jl.warning("transient error on %s %d (%s); retrying", kind.value, fold, exc)
            try:
                with transaction(settings.database_url) as session:
                    jobs.release_item_lease(session, settings, job_id, kind, fold, owner)
            except Exception:
                pass
            raise
        jl.exception("%s %d failed", kind.value, fold)
        label = f"{kind.value} {fold}" if kind != WorkKind.FINAL else None
        _fail(settings, job_id, owner, step, exc, label)
        return "failed"
    jobs.enqueue(dispatches, settings)
    return "done"


def execute_reap(settings: Settings) -> jobs.ReapResult:
    """One reaper pass in its own transaction, then publish what it recovered."""
    with transaction(settings.database_url, immediate=True) as session:
        result = jobs.reap(session, settings)
    if result.dispatches:
        jobs.enqueue(result.dispatches, settings)
    if result.recovered or result.failed or result.redispatched:
        log.info("reaper: %d recovered, %d republished, %d failed",
                 len(result.recovered), len(result.redispatched), len(result.failed))
    return result
