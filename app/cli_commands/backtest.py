"""`clm backtest`: backtest a position file against an OHLCV price file (DESIGN.md model).

Prints the metrics object with its promotion score. Starts fast: it imports only
numpy, pyarrow (the CSV/Parquet parser) and the pure modules (app.ml.backtest,
app.ml.scoring, the importer's array level) — never pandas, Flask, Celery, SQLAlchemy,
XGBoost or LightGBM (a test checks); pandas loads only to word an error message.
Bad input exits with status 2 and `FILE:LINE: reason` on stderr. Once the metrics are
printed the process ends at once (`os._exit` after flushing): the interpreter's teardown
of numpy's and pyarrow's state took ~90 ms, a sixth of the whole command (issue 17).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option(
    "--prices",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="OHLCV file (CSV, Parquet or Binance kline CSV/zip); close prices are used",
)
@click.option(
    "--positions",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV 'timestamp, position' with positions in [-1, 1], one per price bar",
)
@click.option("--fee-bps", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--slippage-bps", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--periods-per-year",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="bars per year for the Sharpe ratio [default: from the median bar spacing]",
)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as one JSON object only")
def backtest(
    prices: Path,
    positions: Path,
    fee_bps: float,
    slippage_bps: float,
    periods_per_year: float | None,
    as_json: bool,
) -> None:
    """Backtest POSITIONS against PRICES and print the metrics."""
    from app.ml.backtest import AlignmentError, align_positions, run_backtest
    from app.ml.data.importer import (
        DataValidationError,
        read_ohlcv_arrays,
        read_positions_arrays,
    )
    from app.ml.scoring import promotion_score

    # The positions file is parsed on a thread while the prices file is parsed here
    # (pyarrow's parser releases the GIL); a bad prices file is reported first, as when
    # they were read one after the other.
    read_pos: dict[str, Any] = {}

    def positions_reader() -> None:
        try:
            read_pos["value"] = read_positions_arrays(positions)
        except BaseException as exc:  # re-raised below, on the main thread
            read_pos["error"] = exc

    reader = threading.Thread(target=positions_reader, name="clm-read-positions")
    reader.start()
    try:
        # timeframe inferred, spacing not enforced; arrays, not frames: no pandas
        try:
            price_data = read_ohlcv_arrays(prices)
        finally:
            reader.join()
        if "error" in read_pos:
            raise read_pos["error"]
        pos_ns, pos = read_pos["value"]
    except DataValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    price_ts = price_data.ts_ns.view("datetime64[ns]")
    try:
        align_positions(price_ts, pos_ns.view("datetime64[ns]"))
    except AlignmentError as exc:
        # positions file: header is line 1, so index i is line i + 2
        click.echo(f"{positions}:{exc.index + 2}: {exc}", err=True)
        sys.exit(2)
    try:
        result = run_backtest(
            price_data.cols["close"],
            pos,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
            periods_per_year=periods_per_year,
            timestamps=price_ts,
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    metrics = dict(result.metrics)
    metrics["promotion_score"] = promotion_score(metrics)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        _print(metrics, result, len(price_ts), price_data.timeframe)
    _exit_now()


def _exit_now() -> None:
    """End the process without the interpreter's teardown (nothing is left to clean up:
    no files open for writing, no threads, no atexit work this command registered)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _print(metrics: dict[str, Any], result: Any, bars: int, timeframe: str | None) -> None:
    pf = metrics["profit_factor"]
    click.echo(f"bars             {bars} ({timeframe or 'irregular'})")
    click.echo(f"periods/year     {result.periods_per_year:g}")
    click.echo(f"sharpe           {metrics['sharpe']:.4f}")
    click.echo(f"win_rate         {metrics['win_rate']:.4f}")
    click.echo(f"profit_factor    {'n/a (no losing trade)' if pf is None else f'{pf:.4f}'}")
    click.echo(f"max_drawdown     {metrics['max_drawdown']:.4f}")
    click.echo(f"trades           {metrics['trades']}")
    click.echo(f"total_return     {metrics['total_return']:.4f}")
    click.echo(f"promotion_score  {metrics['promotion_score']:.2f}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
