"""The pipeline's first two stages: prepare (data → features → folds → fan-out) and the
work items of the train stage (folds, champion folds, final fit).

Owns `run_prepare` (steps validate_request, fetch_data, validate_data, build_features,
split_folds; stores the raw slice, the feature dataset and the lineage as artifacts and
fans out one work item per walk-forward fold, per champion fold and the final fit),
`run_work_item` (with `fold_diagnostics`: a fold model's attributions),
`champion_strategy` (the production version retrained as a strategy on the same folds),
`eval_config` and `lineage_strategy`.
"""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

from app.analysis.regime import restrict_to_regime, summarize_regimes
from app.core.config import Settings
from app.core.timeutil import isoformat
from app.db import transaction
from app.flows.pipeline.runtime import (
    LeaseKeeper,
    PipelineError,
    StageRun,
    artifact_ref,
    assert_not_worker_main,
    clean,
    load_dataset,
    log,
    put_frame,
    stores,
    train_threads,
)
from app.ml.attributions import fold_attributions
from app.ml.data.importer import find_gaps
from app.ml.evaluation import (
    EvaluationConfig,
    Fold,
    dataset_to_frame,
    final_fit,
    make_folds,
    prepare_dataset,
    remap_folds,
    train_fold,
)
from app.ml.evolution.space import TradingRules
from app.ml.features import normalize_windows
from app.ml.lineage import build_lineage
from app.ml.rules import strategy_config_overrides, trading_rules
from app.ml.trainers import get_trainer, save_model, trainer_windows, with_trade_costs
from app.models.jobs import WorkKind
from app.services import jobs, registry
from app.services.instruments import MarketTerms, market_terms


def eval_config(settings: Settings, strategy: dict[str, Any] | None,
                terms: MarketTerms | None = None) -> EvaluationConfig:
    """Walk-forward set-up from settings plus the strategy's thresholds and label horizon
    (purge None: it follows the horizon) and the instrument's costs and annualisation."""
    market: dict[str, Any] = {}
    if terms is not None:
        market = {"fee_bps": terms.fee_bps, "slippage_bps": terms.slippage_bps,
                  "periods_per_year": terms.periods_per_year}
    return EvaluationConfig.from_settings(settings, **market,
                                          **strategy_config_overrides(strategy))


def champion_strategy(settings: Settings, job: dict[str, Any]) -> dict[str, Any] | None:
    """The production version of the job's model_id as a strategy to retrain, or None."""
    with transaction(settings.database_url) as session:
        prod = registry.get_production(session, job["model_id"])
    if prod is None:
        return None
    lineage = prod.get("lineage") or {}
    model = lineage.get("model") or {}
    features = lineage.get("features") or {}
    strategy = lineage.get("strategy") or {}
    try:  # the champion trades by its own rules when its strategy had them
        rules = trading_rules(strategy)
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



def run_prepare(run: StageRun) -> None:
    """The prepare stage: validate_request, fetch_data, validate_data, build_features,
    split_folds, then the fan-out (the work items' messages go out after its commit)."""
    settings, job = run.settings, run.job
    artifacts, market = stores(settings)
    strategy = job.get("strategy") or {}

    with run.step("validate_request") as rec:
        trainer = get_trainer(job["model_type"], job["params"])  # may lack a plug-in
        params = trainer.validate_params(job["params"])
        with transaction(settings.database_url) as session:
            terms = market_terms(session, settings, job["symbol"], job["timeframe"])
        cfg = eval_config(settings, strategy, terms)
        # A sequence model's input window (its lags) follows its look-back.
        windows = normalize_windows(trainer_windows(trainer, params, strategy.get("windows")))
        params = with_trade_costs(trainer, params, cfg)
        seed = int(strategy.get("seed", 0))
        rules = trading_rules(strategy)
        rec.detail.update(model_type=job["model_type"], params=params, seed=seed,
                          label_horizon=cfg.label_horizon,
                          rules=rules.to_dict() if rules is not None else None,
                          market=terms.to_dict())

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
        gaps, missing = find_gaps(frame.index, job["timeframe"], calendar=terms.calendar)
        rec.detail.update(rows=len(frame), gaps=len(gaps), missing_bars=int(missing))

    with run.step("build_features") as rec:
        dataset = prepare_dataset(frame, cfg, windows)
        if job.get("regime"):  # a regime-specific model learns from that regime's bars only
            dataset = restrict_to_regime(dataset, frame, job["regime"])
        ds_ref = put_frame(artifacts, dataset_to_frame(dataset))
        champion = champion_strategy(settings, job)
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
        lineage["strategy"] = lineage_strategy(job.get("strategy"), cfg, windows, seed, rules)
        # The instrument's terms the evaluation used (costs, calendar, bars per year).
        lineage["market"] = terms.to_dict()
        # The raw bars are in memory here: their regime summary is cheap now, and the
        # register step need not read them back (continuous learning's lineage key).
        with suppress(ValueError):  # too few bars to classify: the regime check recomputes
            lineage["training_regime"] = summarize_regimes(frame)
        lineage_ref = artifacts.put_json(clean(lineage))
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
        "raw": artifact_ref(raw_ref),
        "dataset": artifact_ref(ds_ref),
        "lineage": artifact_ref(lineage_ref),
        "config": cfg.to_dict(),
        "params": params,
        "seed": seed,
        "folds": [f.to_dict() for f in folds],
        "champion": champion,
        "champion_dataset": artifact_ref(champ_ds_ref) if champ_ds_ref is not None else None,
        "champion_folds": [f.to_dict() for f in champ_folds],
    }
    with transaction(settings.database_url, immediate=True) as session:
        jobs.start_train_stage(session, settings, run.job_id, run.owner, run.attempt, items,
                               clean(state))
    run.log.info("fanned out %d work items", len(items))


def run_work_item(settings: Settings, claim: dict[str, Any], worker: str,
                  keeper: LeaseKeeper) -> dict[str, Any]:
    """One work item: a challenger or champion fold (its out-of-sample predictions) or the
    final fit (the deployable model), stored as an artifact; returns the item's result."""
    assert_not_worker_main()
    job, item = claim["job"], claim["item"]
    state = job["artifacts"]
    kind = WorkKind(item["kind"])
    artifacts, _ = stores(settings)
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
    trainer = get_trainer(model_type, params)
    params = trainer.validate_params(params)
    keeper.check()
    common = {"n_threads": n_threads, "worker": worker}
    if kind == WorkKind.FINAL:
        t0 = time.perf_counter()
        model = final_fit(dataset, trainer, params, seed=seed, n_threads=n_threads)
        fit_s = time.perf_counter() - t0
        ref = save_model(artifacts, trainer, model)
        return {**artifact_ref(ref), "fit_s": round(fit_s, 4), "train_rows": dataset.n_rows,
                **common}
    fold = Fold.from_dict(folds[int(item["fold"])])
    pred = train_fold(dataset, fold, trainer, params, seed=seed, n_threads=n_threads)
    ref = put_frame(artifacts, pred.to_frame())
    extra: dict[str, Any] = {}
    if kind == WorkKind.FOLD and settings.diagnostics:
        extra = fold_diagnostics(dataset, fold, trainer, pred.model, seed=seed,
                                 n_threads=n_threads)
    return {**artifact_ref(ref), "fit_s": round(pred.fit_seconds, 4),
            "predict_s": round(pred.predict_seconds, 4), "train_rows": pred.train_rows,
            "test_rows": len(pred.timestamps), **common, **extra}


def fold_diagnostics(dataset: Any, fold: Fold, trainer: Any, model: Any, *, seed: int,
                     n_threads: int) -> dict[str, Any]:
    """{"attributions": …, "attributions_s": …} of a challenger fold's model on its test
    slice, while the model is in memory (the evaluate step aggregates them); {} with a log
    line when they cannot be computed: diagnostics never fail a job."""
    t0 = time.perf_counter()
    try:
        attributions = fold_attributions(
            trainer, model, dataset.frame_X(fold.test_start, fold.test_end),
            dataset.frame_X(fold.train_start, fold.train_end), seed=seed, n_threads=n_threads)
    except Exception:  # a missing optional package or a model type without a predict path
        log.exception("fold %d: could not compute feature attributions", fold.index)
        return {}
    return {"attributions": {"fold": fold.index, **attributions},
            "attributions_s": round(time.perf_counter() - t0, 4)}


def lineage_strategy(strategy: dict[str, Any] | None, cfg: EvaluationConfig, windows: Any,
                     seed: int, rules: TradingRules | None) -> dict[str, Any] | None:
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
