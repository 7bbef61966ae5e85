"""Market terms of an instrument: its trading costs and how its Sharpe is annualised.

Interface used by evaluation and live scoring. Until instruments are configurable
(issue 12), every symbol trades around the clock at the configured `CLM_FEE_BPS` /
`CLM_SLIPPAGE_BPS`, and Sharpe is annualised from the bar spacing (periods_per_year
None), exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.core.config import Settings

DEFAULT_CALENDAR = "24/7"


@dataclass(frozen=True)
class MarketTerms:
    """What a backtest of `symbol` at `timeframe` must use."""

    symbol: str
    calendar: str
    fee_bps: float
    slippage_bps: float
    periods_per_year: float | None  # None: inferred from the bar spacing (24/7 market)


def market_terms(session: Session | None, settings: Settings, symbol: str,
                 timeframe: str) -> MarketTerms:
    """The terms for `symbol`/`timeframe` (the defaults when none are configured)."""
    return MarketTerms(symbol=symbol.upper(), calendar=DEFAULT_CALENDAR,
                       fee_bps=float(settings.fee_bps), slippage_bps=float(settings.slippage_bps),
                       periods_per_year=None)
