"""Instruments: a symbol's trading calendar and costs, and the market terms they imply.

Owns the `instruments` table's reads and writes (`get_instrument`, `list_instruments`,
`set_instrument`) and `market_terms(...)`, the interface evaluation, the strategy search,
the paper check and live scoring use: the symbol's fee and slippage per side, its
calendar, and the bars per year its Sharpe is annualised with (None for `24/7`: from the
bar spacing, 365 days, exactly as before instruments existed). A symbol without a row
has the defaults: `24/7` at the configured `CLM_FEE_BPS` / `CLM_SLIPPAGE_BPS`.
The calendar rules live in app.analysis.calendars (imported lazily: exchange_calendars
and pandas cost the web process about a second at start-up).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import normalize_symbol, timeframe_seconds
from app.core.errors import InvalidInput, NotFound
from app.core.timeutil import utcnow
from app.models.instruments import MAX_COST_BPS, Instrument

DEFAULT_CALENDAR = "24/7"

__all__ = ["DEFAULT_CALENDAR", "MarketTerms", "calendar_of", "calendars", "check_symbol",
           "get_instrument", "list_instruments", "market_terms", "set_instrument"]


@dataclass(frozen=True)
class MarketTerms:
    """What a backtest of `symbol` at `timeframe` must use."""

    symbol: str
    calendar: str
    fee_bps: float
    slippage_bps: float
    periods_per_year: float | None  # None: inferred from the bar spacing (24/7 market)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bars_per_year(calendar: str, timeframe: str) -> float | None:
    from app.analysis.calendars import bars_per_year  # lazy: start-up

    return bars_per_year(calendar, timeframe_seconds(timeframe))


def market_terms(session: Session | None, settings: Settings, symbol: str,
                 timeframe: str) -> MarketTerms:
    """The terms for `symbol`/`timeframe`: the instrument's when one is set, else the
    defaults (24/7, configured costs, periods_per_year None). No session: defaults."""
    sym = symbol.upper()
    row = session.get(Instrument, sym) if session is not None else None
    if row is None:
        return MarketTerms(symbol=sym, calendar=DEFAULT_CALENDAR,
                           fee_bps=float(settings.fee_bps),
                           slippage_bps=float(settings.slippage_bps), periods_per_year=None)
    return MarketTerms(symbol=sym, calendar=row.calendar, fee_bps=float(row.fee_bps),
                       slippage_bps=float(row.slippage_bps),
                       periods_per_year=_bars_per_year(row.calendar, timeframe))


def check_symbol(symbol: str) -> str:
    """The normalized symbol; NotFound for one that cannot exist (a path id)."""
    try:
        return normalize_symbol(symbol)
    except ValueError as exc:
        raise NotFound(str(exc)) from None


def _view(settings: Settings, symbol: str, row: Instrument | None) -> dict[str, Any]:
    if row is None:
        return {"symbol": symbol, "calendar": DEFAULT_CALENDAR,
                "fee_bps": float(settings.fee_bps), "slippage_bps": float(settings.slippage_bps),
                "configured": False, "updated_by": None, "updated_at": None}
    return {**row.to_dict(), "configured": True}


def get_instrument(session: Session, settings: Settings, symbol: str) -> dict[str, Any]:
    """The symbol's instrument (`configured: true`) or the defaults it trades under
    (`configured: false`)."""
    sym = check_symbol(symbol)
    return _view(settings, sym, session.get(Instrument, sym))


def calendar_of(session: Session, symbol: str) -> str:
    """The symbol's calendar (`24/7` when none is set)."""
    row = session.get(Instrument, symbol.upper())
    return row.calendar if row is not None else DEFAULT_CALENDAR


def calendars(session: Session) -> dict[str, str]:
    """{symbol: calendar} of every configured instrument (others are `24/7`)."""
    rows = session.execute(select(Instrument.symbol, Instrument.calendar))
    return {symbol: calendar for symbol, calendar in rows}


def list_instruments(session: Session, settings: Settings, *, after: str | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
    """Configured instruments by symbol (keyset `after`; `limit + 1` fetched when given)."""
    stmt = select(Instrument).order_by(Instrument.symbol)
    if after is not None:
        stmt = stmt.where(Instrument.symbol > after)
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    return [_view(settings, r.symbol, r) for r in session.scalars(stmt)]


def _cost(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, f"must be a number of basis points, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise InvalidInput(field, f"must be >= 0 basis points, got {value!r}")
    if v > MAX_COST_BPS:
        raise InvalidInput(field, f"must be <= {MAX_COST_BPS:g} basis points (10%), "
                                  f"got {value!r}")
    return v


def set_instrument(session: Session, settings: Settings, symbol: str, *,
                   calendar: str | None = None, fee_bps: Any = None,
                   slippage_bps: Any = None, actor: str | None = None) -> dict[str, Any]:
    """Create or update the symbol's instrument; fields left None keep their current value
    (a new instrument starts from the defaults). InvalidInput names the bad field."""
    from app.analysis.calendars import UnknownCalendar, normalize_calendar  # lazy: start-up

    sym = check_symbol(symbol)
    row = session.get(Instrument, sym)
    cal = None
    if calendar is not None:
        try:
            cal = normalize_calendar(calendar)
        except UnknownCalendar as exc:
            raise InvalidInput("calendar", str(exc)) from None
    fee = _cost("fee_bps", fee_bps) if fee_bps is not None else None
    slip = _cost("slippage_bps", slippage_bps) if slippage_bps is not None else None
    if row is None:
        row = Instrument(symbol=sym, calendar=cal or DEFAULT_CALENDAR,
                         fee_bps=fee if fee is not None else float(settings.fee_bps),
                         slippage_bps=slip if slip is not None else float(settings.slippage_bps),
                         updated_by=actor)
        session.add(row)
    else:
        if cal is not None:
            row.calendar = cal
        if fee is not None:
            row.fee_bps = fee
        if slip is not None:
            row.slippage_bps = slip
        row.updated_by = actor
        row.updated_at = utcnow()
    session.flush()
    return _view(settings, sym, row)
