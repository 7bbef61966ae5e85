"""`clm data`: import OHLCV files into the market data store and list what it holds.

A bad file exits with status 2, stores nothing, and prints `FILE:LINE: reason` on
stderr. Only the data stack is imported (pandas, pyarrow), never web or queue code, and
only by the command that runs (lazy imports: `clm data --help` stays instant).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from app.cli_commands.feeds import feed
from app.core.config import get_settings
from app.core.domain import TIMEFRAMES, normalize_symbol

# Files above this size get a progress bar on stderr (small ones finish instantly).
_PROGRESS_MIN_BYTES = 8 << 20


def _iso(ts: object) -> str:
    text = ts.isoformat() if hasattr(ts, "isoformat") else str(ts)
    return text.replace("+00:00", "Z")


def _symbol(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return normalize_symbol(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _calendars() -> dict[str, str]:
    """{symbol: calendar} of the configured instruments, so closed sessions are not
    reported as gaps; {} (every symbol 24/7) when the database has none yet (a SQLite
    file that does not exist is not created). A database that cannot be read is said on
    stderr, never silently ignored."""
    from pathlib import Path as _Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import is_sqlite, transaction
    from app.services.instruments import calendars

    url = get_settings().database_url
    if is_sqlite(url):
        database = make_url(url).database
        if not database or database == ":memory:" or not _Path(database).exists():
            return {}
    try:
        with transaction(url) as session:
            return calendars(session)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0][:200]
        click.echo(f"note: instrument calendars not read ({first}); gaps counted as for a "
                   "24/7 market (run `clm db upgrade`)", err=True)
        return {}


@click.group()
def data() -> None:
    """Market data store: import and list OHLCV series; feeds that keep it current."""


data.add_command(feed)


@data.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--symbol", required=True, callback=_symbol, help="e.g. BTCUSDT")
@click.option("--timeframe", required=True, type=click.Choice(list(TIMEFRAMES)))
def import_file(file: Path, symbol: str, timeframe: str) -> None:
    """Validate FILE (CSV, Parquet or Binance kline CSV/zip) and merge it into the store."""
    from app.ml.data.importer import DataValidationError, format_seconds, load_ohlcv
    from app.ml.data.store import MarketDataStore, SeriesMismatch

    if not file.is_file():
        click.echo(f"{file}: no such file", err=True)
        sys.exit(2)
    bar = None
    if file.stat().st_size >= _PROGRESS_MIN_BYTES and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=f"parsing {file.name}", unit=" rows", unit_scale=True, file=sys.stderr)
    calendar = _calendars().get(symbol, "24/7")
    try:
        result = load_ohlcv(file, timeframe, progress=bar.update if bar is not None else None,
                            calendar=calendar)
    except DataValidationError as exc:
        if bar is not None:
            bar.close()
        click.echo(str(exc), err=True)
        sys.exit(2)
    if bar is not None:
        bar.close()

    store = MarketDataStore.from_settings(get_settings())
    try:
        report = store.merge(symbol, timeframe, result.frame, calendar=calendar)
    except SeriesMismatch as exc:
        # same FILE:LINE: reason shape as a refused file; the merge wrote nothing
        click.echo(f"{file}:{int(result.source_lines[exc.row])}: {exc.reason}", err=True)
        sys.exit(2)
    fmt_units = "/".join(result.timestamp_units)
    click.echo(
        f"{file}: {result.rows} rows ({result.format}, timestamps {fmt_units}), "
        f"{_iso(result.first)} → {_iso(result.last)}"
    )
    # What was accepted but changed or unusual, so nothing happens silently.
    if result.reversed:
        click.echo("  file was newest first: rows reversed")
    if result.duplicates_dropped:
        click.echo(f"  {result.duplicates_dropped} identical duplicate row(s) dropped")
    if result.grid_offset_seconds:
        click.echo(
            f"  bars start {format_seconds(result.grid_offset_seconds)} after the UTC "
            f"{timeframe} grid (e.g. {_iso(result.first)})"
        )
    if result.gaps:
        g = result.gaps[0]
        click.echo(
            f"  file gaps: {len(result.gaps)} gap(s), {result.missing_bars} missing bar(s); "
            f"first after {_iso(g.after)} ({g.missing_bars} bar(s)); calendar {calendar}"
        )
    else:
        click.echo(f"  file gaps: none (calendar {calendar})")
    click.echo(
        f"stored {report.symbol} {report.timeframe}: {report.added} added, "
        f"{report.overlapping} overlapping ({report.changed} changed); "
        f"now {report.rows_after} rows {_iso(report.first)} → {_iso(report.last)}, "
        f"{report.missing_bars} missing bar(s) in {len(report.gaps)} gap(s)"
    )


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON only")
def list_series(as_json: bool) -> None:
    """Coverage of every stored symbol/timeframe (a file that cannot be read is listed
    as unreadable, and the command exits 1)."""
    from app.ml.data.store import MarketDataStore, SeriesUnreadable

    store = MarketDataStore.from_settings(get_settings())
    series, broken = store.list_all()
    cals = _calendars() if series else {}
    # Gaps need the timestamps (not just metadata): one column per series, still fast.
    # Only bars the symbol's calendar expects count (FX weekends, exchange nights: none).
    gaps: dict[tuple[str, str], tuple[int, int]] = {}
    readable = []
    for c in series:
        try:
            gaps[(c.symbol, c.timeframe)] = store.gap_counts(c.symbol, c.timeframe,
                                                             cals.get(c.symbol, "24/7"))
            readable.append(c)
        except SeriesUnreadable as exc:  # metadata fine, column data not
            broken.append(exc.as_problem())
    if as_json:
        items = []
        for c in readable:
            count, missing = gaps[(c.symbol, c.timeframe)]
            items.append({**c.to_dict(), "gaps": count, "missing_bars": missing,
                          "calendar": cals.get(c.symbol, "24/7")})
        out: dict[str, object] = {"items": items}
        if broken:  # only then: the healthy shape stays {"items": [...]}
            out["unreadable"] = [b.to_dict() for b in broken]
        click.echo(json.dumps(out))
        sys.exit(1 if broken else 0)
    if not readable and not broken:
        click.echo(f"no market data in {store.root}")
        return
    click.echo(
        f"{'symbol':<16} {'timeframe':<9} {'rows':>10}  {'first':<20}  {'last':<20}  "
        f"{'gaps':>6} {'missing':>8}  calendar"
    )
    for c in readable:
        count, missing = gaps[(c.symbol, c.timeframe)]
        click.echo(
            f"{c.symbol:<16} {c.timeframe:<9} {c.rows:>10}  {_iso(c.first):<20}  "
            f"{_iso(c.last):<20}  {count:>6} {missing:>8}  {cals.get(c.symbol, '24/7')}"
        )
    for b in broken:
        click.echo(f"{b.symbol:<16} {b.timeframe or '-':<9} {'UNREADABLE':>10}  {b.problem}")
    if broken:
        click.echo(f"{len(broken)} series cannot be read: see `clm data verify`; re-import "
                   "them or restore them from a backup (docs/OPERATIONS.md)", err=True)
        sys.exit(1)


@data.command("verify")
@click.option("--json", "as_json", is_flag=True, help="print JSON only")
def verify_series(as_json: bool) -> None:
    """Read every stored series in full and report every problem (unreadable file, wrong
    schema, timestamps not strictly increasing or off the grid, NaN/inf, stray files);
    exit 1 when there is any."""
    from app.ml.data.store import MarketDataStore

    store = MarketDataStore.from_settings(get_settings())
    problems = store.verify()
    checked = len(store.series_files())
    if as_json:
        click.echo(json.dumps({"checked": checked,
                               "problems": [p.to_dict() for p in problems]}))
    else:
        for p in problems:
            click.echo(f"{p.path}: {p.symbol} {p.timeframe or '-'}: {p.problem}")
        click.echo(f"{checked} series checked in {store.root}: "
                   f"{len(problems) or 'no'} problem(s)")
    sys.exit(1 if problems else 0)

