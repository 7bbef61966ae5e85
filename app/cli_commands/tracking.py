"""`clm track` / `clm untrack`: add a model to the scheduler's tracked set or remove it.

`clm track MODEL_TYPE SYMBOL TIMEFRAME [--interval-hours H] [--psi-threshold X]
[--feature-share S] [--degraded-sharpe V] [--min-trades N] [--span-days D]` prints the
tracked model as JSON; `clm untrack MODEL_ID` (or `clm untrack MODEL_TYPE SYMBOL
TIMEFRAME`) stops tracking it (a production model too).
"""

from __future__ import annotations

import json
import sys

import click

from app.core.domain import TIMEFRAMES, ModelType, make_model_id


@click.command()
@click.argument("model_type", type=click.Choice([t.value for t in ModelType]))
@click.argument("symbol")
@click.argument("timeframe", type=click.Choice(list(TIMEFRAMES)))
@click.option("--interval-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="periodic retraining interval (default: per model type)")
@click.option("--psi-threshold", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--feature-share", type=click.FloatRange(min=0, max=1, min_open=True),
              default=None, help="share of drifted features that means drift")
@click.option("--degraded-sharpe", type=float, default=None)
@click.option("--min-trades", type=click.IntRange(min=1), default=None)
@click.option("--span-days", type=click.IntRange(min=1, max=3650), default=None,
              help="training window of automatic retrains")
@click.option("--params", "params_json", default=None, help="trainer params as JSON")
def track(model_type: str, symbol: str, timeframe: str, interval_hours: float | None,
          psi_threshold: float | None, feature_share: float | None,
          degraded_sharpe: float | None, min_trades: int | None, span_days: int | None,
          params_json: str | None) -> None:
    """Track MODEL_TYPE SYMBOL TIMEFRAME with its own interval and thresholds."""
    # lazy: start-up (`clm --help` must not import the services and the ML stack)
    from app.core.config import get_settings
    from app.core.errors import DomainError
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.services.triggers import track_model

    params = None
    if params_json:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
        if not isinstance(params, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params")
    settings = get_settings()
    try:
        # track_model refuses params the trainer would refuse (as POST /clm/tracked).
        with transaction(settings.database_url, immediate=True) as session:
            item, created = track_model(
                session, settings, model_type=model_type, symbol=symbol, timeframe=timeframe,
                interval_hours=interval_hours, drift_psi_threshold=psi_threshold,
                drift_feature_share=feature_share, degraded_sharpe=degraded_sharpe,
                min_trades=min_trades, dataset_span_days=span_days, params=params,
                actor="cli", now=utcnow(),
            )
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(2)
    click.echo(json.dumps({**item, "created": created}, indent=2))


@click.command()
@click.argument("model", nargs=-1, required=True)
def untrack(model: tuple[str, ...]) -> None:
    """Stop tracking MODEL: a model id (xgboost_btcusdt_1h) or MODEL_TYPE SYMBOL TIMEFRAME."""
    # lazy: start-up (`clm --help` must not import the services and the ML stack)
    from app.core.config import get_settings
    from app.core.errors import DomainError
    from app.core.timeutil import utcnow
    from app.db import transaction
    from app.services.triggers import untrack_model

    if len(model) == 1:
        model_id = model[0]
    elif len(model) == 3:
        try:
            model_id = make_model_id(*model)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="MODEL") from None
    else:
        raise click.BadParameter("give a model id, or MODEL_TYPE SYMBOL TIMEFRAME",
                                 param_hint="MODEL")
    settings = get_settings()
    try:
        with transaction(settings.database_url, immediate=True) as session:
            out = untrack_model(session, settings, model_id, now=utcnow())
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(2)
    click.echo(json.dumps(out))
