"""`clm data feed`: the feeds that keep the market data store current.

`clm data feed add --source binance|dir:PATH --symbol S --timeframe T
[--exchange-symbol X] [--interval-s N]`, `clm data feed list [--json]`,
`clm data feed remove ID`, `clm data feed poll [ID]` (poll now instead of waiting for
beat). Bad input exits with status 2 and a message naming the field. The services and
the data stack are imported only by the command that runs (`clm data --help` stays fast).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from app.core.config import get_settings
from app.core.domain import TIMEFRAMES
from app.core.errors import DomainError


def _fail(detail: str) -> None:
    click.echo(f"error: {detail}", err=True)
    sys.exit(2)


@click.group()
def feed() -> None:
    """Feeds (Binance public klines, drop folders) that keep the store current."""


@feed.command("add")
@click.option("--source", required=True,
              help="'binance' (CLM_BINANCE_BASE_URL) or 'dir:PATH' (a drop folder)")
@click.option("--symbol", required=True, help="the stored series' symbol, e.g. BTCUSDT")
@click.option("--timeframe", required=True, type=click.Choice(list(TIMEFRAMES)))
@click.option("--exchange-symbol", default=None,
              help="binance only: the exchange's symbol (default: --symbol)")
@click.option("--interval-s", type=float, default=None,
              help="seconds between polls (default: one bar)")
def add(source: str, symbol: str, timeframe: str, exchange_symbol: str | None,
        interval_s: float | None) -> None:
    """Add a feed; prints it as JSON."""
    # lazy: start-up (`clm --help` must not import the services)
    from app.db import transaction
    from app.services import feeds

    settings = get_settings()
    try:
        with transaction(settings.database_url, immediate=True) as session:
            out = feeds.feed_view(feeds.add_feed(
                session, settings, source=source, symbol=symbol, timeframe=timeframe,
                exchange_symbol=exchange_symbol, interval_s=interval_s, created_by="cli"))
    except DomainError as exc:
        _fail(exc.detail)
    click.echo(json.dumps(out, indent=2))


@feed.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON only")
def list_cmd(as_json: bool) -> None:
    """Every feed with its newest stored bar, lag and last error."""
    # lazy: start-up (`clm --help` must not import the services)
    from app.db import transaction
    from app.services import feeds

    with transaction(get_settings().database_url) as session:
        items = [feeds.feed_view(f) for f in feeds.list_feeds(session)]
    if as_json:
        click.echo(json.dumps({"items": items}))
        return
    if not items:
        click.echo("no feeds")
        return
    click.echo(f"{'id':>4}  {'symbol':<12} {'tf':<4} {'last bar':<21} {'lag_s':>10}  source"
               "  [last error]")
    for i in items:
        lag = f"{i['lag_s']:.0f}" if i["lag_s"] is not None else "-"
        error = f"  [{i['last_error']}]" if i["last_error"] else ""
        click.echo(f"{i['id']:>4}  {i['symbol']:<12} {i['timeframe']:<4} "
                   f"{i['last_bar'] or '-':<21} {lag:>10}  {i['source']}{error}")


@feed.command("remove")
@click.argument("feed_id", type=int)
def remove(feed_id: int) -> None:
    """Remove feed FEED_ID (the stored bars stay)."""
    # lazy: start-up (`clm --help` must not import the services)
    from app.db import transaction
    from app.services import feeds

    try:
        with transaction(get_settings().database_url, immediate=True) as session:
            feeds.remove_feed(session, feed_id)
    except DomainError as exc:
        _fail(exc.detail)
    click.echo(json.dumps({"id": feed_id, "removed": True}))


@feed.command("poll")
@click.argument("feed_id", type=int, required=False)
def poll(feed_id: int | None) -> None:
    """Poll FEED_ID (or every enabled feed) now; prints what each poll did as JSON.
    Exits 1 when a poll recorded an error."""
    # lazy: start-up (`clm --help` must not import the data stack)
    from app.flows.feeds import poll_all

    try:
        summary: dict[str, Any] = poll_all(get_settings(), feed_id)
    except DomainError as exc:
        _fail(exc.detail)
    click.echo(json.dumps(summary, indent=2, default=str))
    if summary["errors"]:
        sys.exit(1)
