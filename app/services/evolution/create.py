"""Creating a strategy search: `create_search` validates a request against the model
type's strategy space, freezes its market data and inserts the search queued, with its
job (kind evolve). Takes the caller's session and only flushes; nothing is published
here (app.flows.evolution.start_search publishes the coordinator after the commit).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from app.analysis.objectives import Constraints, parse_objectives
from app.analysis.overfitting import holdout_split
from app.core.config import Settings
from app.core.domain import TriggerReason, make_model_id, normalize_symbol, timeframe_seconds
from app.core.errors import InvalidInput
from app.core.timeutil import isoformat, utcnow
from app.ml.evaluation import make_folds, prepare_dataset
from app.ml.evolution.evaluate import EvalSettings
from app.ml.evolution.space import SpaceError, StrategySpace, decode, space_for
from app.models.evolution import SearchStatus, StrategySearch
from app.services import jobs as job_service
from app.services.evolution.config import MAX_GENERATIONS, MAX_POPULATION, EvolutionConfig
from app.services.evolution.snapshot import read_market_data, store_snapshot
from app.services.evolution.views import search_dict
from app.services.instruments import market_terms

__all__ = ["create_search"]

log = logging.getLogger(__name__)


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(name, f"must be an integer in [{low}, {high}], got {value!r}")
    return int(value)



def create_search(
    session: Session,
    settings: Settings,
    *,
    model_type: str,
    symbol: str,
    timeframe: str,
    dataset_span_days: int,
    objectives: Sequence[str] | None = None,
    population: int | None = None,
    generations: int | None = None,
    constraints: Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    regime: str | None = None,
    seed: int = 0,
    requested_by: str | None = None,
    trigger_reason: str = TriggerReason.MANUAL.value,
    frame: pd.DataFrame | None = None,
    evaluation: Mapping[str, Any] | None = None,
    base_space: StrategySpace | None = None,
    kind: str = "search",
    fixed: Sequence[Mapping[str, Any]] = (),
    source_model_version: str | None = None,
) -> dict[str, Any]:
    """Validate and insert a queued search; returns {"search_id", "job_id", ...}.

    `space`: request overrides of the model type's declared space (see
    StrategySpace.narrow). `frame`: market data to use instead of the store (tests,
    benchmarks). `fixed`: [{"params", "origin", "parents"}] evaluated as generation 0
    (variant searches). Raises InvalidInput naming the field. The caller publishes
    the coordinator (`app.bus.evolution_tasks.advance(search_id)`) after its commit.
    """
    cfg = EvolutionConfig.from_settings(settings)
    try:
        declared = base_space or space_for(model_type)
    except SpaceError as exc:
        raise InvalidInput("model_type", str(exc)) from None
    try:
        sym = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    try:
        timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput("timeframe", str(exc)) from None
    span = _int_in("dataset_span_days", dataset_span_days, 1, 36_500)
    try:
        names = parse_objectives(objectives)
    except ValueError as exc:
        raise InvalidInput("objectives", str(exc)) from None
    pop = _int_in("population", cfg.population if population is None else population, 2,
                  MAX_POPULATION)
    gens = _int_in("generations", cfg.generations if generations is None else generations, 1,
                   MAX_GENERATIONS)
    try:
        cons = Constraints.from_dict(
            {"min_trades": cfg.min_trades, **dict(constraints or {})})
    except (TypeError, ValueError) as exc:
        raise InvalidInput("constraints", str(exc)) from None
    try:
        searched = declared.narrow(space)
    except SpaceError as exc:
        raise InvalidInput(f"space.{exc.field}", str(exc)) from None
    if regime is not None and (not isinstance(regime, str) or not 1 <= len(regime) <= 40):
        raise InvalidInput("regime", "must be a string of 1-40 characters")
    checked_fixed = []
    for i, item in enumerate(fixed):
        try:
            checked_fixed.append({"params": searched.validate(item["params"]),
                                  "origin": str(item.get("origin", "fixed")),
                                  "parents": list(item.get("parents", []))})
        except SpaceError as exc:
            raise InvalidInput(f"fixed[{i}].{exc.field}", str(exc)) from None
    try:
        # The instrument's costs and annualisation (the defaults when none is set).
        terms = market_terms(session, settings, sym, timeframe)
        eval_cfg = EvalSettings.from_dict({
            "n_folds": settings.walk_forward_folds, "fee_bps": terms.fee_bps,
            "slippage_bps": terms.slippage_bps, "periods_per_year": terms.periods_per_year,
            "holdout_fraction": cfg.holdout_fraction,
            "collapse_ratio": cfg.collapse_ratio, "seed": int(seed),
            **dict(evaluation or {}),
        })
    except (TypeError, ValueError) as exc:
        raise InvalidInput("evaluation", str(exc)) from None

    if frame is None:
        frame = read_market_data(settings, sym, timeframe, span)
    try:
        holdout_start = holdout_split(len(frame), eval_cfg.holdout_fraction,
                                      eval_cfg.holdout_min_bars)
        # The default strategy must fit the walk-forward set-up on the search part.
        default = decode(searched, searched.defaults())
        ecfg = eval_cfg.evaluation_config(default.label_horizon)
        rows = prepare_dataset(frame.iloc[:holdout_start], ecfg, default.windows).n_rows
        make_folds(rows, ecfg)
    except ValueError as exc:
        raise InvalidInput("dataset_span_days", f"{span} days hold {len(frame)} bars, too "
                                                f"few for a search: {exc}") from None

    ref = store_snapshot(settings, frame)
    search_id = str(uuid.uuid4())
    job_id = str(uuid.uuid4())
    now = utcnow()
    row = StrategySearch(
        id=search_id, job_id=job_id, kind=kind, model_id=make_model_id(
            searched.model_type, sym, timeframe),
        model_type=searched.model_type, symbol=sym, timeframe=timeframe,
        dataset_span_days=span, regime=regime, objectives=names,
        constraints=cons.to_dict(), population=max(pop, len(checked_fixed)),
        generations=gens, space=searched.to_dict(),
        config={
            "evaluation": eval_cfg.to_dict(), "market": terms.to_dict(),
            "holdout_start": holdout_start,
            "n_bars": len(frame), "fixed": checked_fixed, "trigger_reason": trigger_reason,
            "preferences": cfg.preferences, "data_first": isoformat(frame.index[0]),
            "data_last": isoformat(frame.index[-1]),
        },
        seed=int(seed), study_name=f"clm-search-{search_id}", data_uri=ref.uri,
        data_sha256=ref.sha256, status=SearchStatus.QUEUED, current_generation=-1,
        trials_total=0, trials_evaluated=0, trials_failed=0,
        source_model_version=source_model_version, requested_by=requested_by,
        created_at=now, updated_at=now,
    )
    session.add(row)
    session.flush()
    # The search's job (GET /clm/jobs): status and progress mirror the search below.
    job_service.create_evolve_job(
        session, job_id=job_id, search_id=search_id, model_type=row.model_type, symbol=sym,
        timeframe=timeframe, dataset_span_days=span, generations=gens,
        trials_planned=row.population * gens, trigger_reason=trigger_reason,
        requested_by=requested_by, regime=regime, now=now)
    log.info("strategy search %s created for %s (%d x %d)", search_id, row.model_id,
             row.population, gens)
    return search_dict(row)
