"""`clm instrument`: a symbol's trading calendar and per-side costs.

`clm instrument set SYMBOL [--calendar C] [--fee-bps N] [--slippage-bps N]` creates or
updates the instrument (options left out keep their value; a new one starts from the
defaults) and prints it as JSON; `clm instrument show SYMBOL` prints it (the defaults,
`"configured": false`, when none is set); `clm instrument list` prints the configured
ones. Bad input (unknown calendar, negative or > 1000 bps costs, a malformed symbol)
exits with status 2 and a message naming the option.
"""

from __future__ import annotations

import json
import sys

import click

from app.cli_commands.common import migrated_database_url
from app.core.config import get_settings
from app.core.errors import DomainError, InvalidInput

_OPTION = {"calendar": "--calendar", "fee_bps": "--fee-bps", "slippage_bps": "--slippage-bps"}


@click.group()
def instrument() -> None:
    """Instruments: trading calendar (24/7, fx, exchange code) and costs per symbol."""


@instrument.command("set")
@click.argument("symbol")
@click.option("--calendar", default=None,
              help="24/7 (default), fx (closed Fri 22:00-Sun 22:00 UTC) or an "
                   "exchange_calendars code such as XNYS")
@click.option("--fee-bps", type=float, default=None, help="fee per side, basis points")
@click.option("--slippage-bps", type=float, default=None, help="slippage per side, bps")
def set_(symbol: str, calendar: str | None, fee_bps: float | None,
         slippage_bps: float | None) -> None:
    """Set SYMBOL's calendar and costs."""
    # lazy: start-up (`clm --help` must not import the services and the data stack)
    from app.db import transaction
    from app.services.instruments import set_instrument

    settings = get_settings()
    try:
        with transaction(migrated_database_url(), immediate=True) as session:
            item = set_instrument(session, settings, symbol, calendar=calendar,
                                  fee_bps=fee_bps, slippage_bps=slippage_bps, actor="cli")
    except InvalidInput as exc:
        click.echo(f"error: {_OPTION.get(exc.field, exc.field)}: {exc.message}", err=True)
        sys.exit(2)
    except DomainError as exc:
        click.echo(f"error: SYMBOL: {exc.detail}", err=True)
        sys.exit(2)
    click.echo(json.dumps(item, indent=2))


@instrument.command("show")
@click.argument("symbol")
def show(symbol: str) -> None:
    """SYMBOL's instrument (the defaults when none is set)."""
    # lazy: start-up
    from app.db import transaction
    from app.services.instruments import get_instrument

    settings = get_settings()
    try:
        with transaction(migrated_database_url()) as session:
            item = get_instrument(session, settings, symbol)
    except DomainError as exc:
        click.echo(f"error: SYMBOL: {exc.detail}", err=True)
        sys.exit(2)
    click.echo(json.dumps(item, indent=2))


@instrument.command("list")
def list_() -> None:
    """The configured instruments as JSON (`{"items": [...]}`)."""
    # lazy: start-up
    from app.db import transaction
    from app.services.instruments import list_instruments

    settings = get_settings()
    with transaction(migrated_database_url()) as session:
        items = list_instruments(session, settings)
    click.echo(json.dumps({"items": items}, indent=2))
