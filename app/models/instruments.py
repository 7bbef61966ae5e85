"""Instrument schema: the trading calendar and costs of a symbol (migration 0006_instruments).

One row per symbol (upper case, as stored market data names it). No row means the
defaults: `24/7`, CLM_FEE_BPS / CLM_SLIPPAGE_BPS per side (app.services.instruments).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.timeutil import isoformat, utcnow
from app.models.base import Base

MAX_COST_BPS = 1000.0


class Instrument(Base):
    """A symbol's trading calendar (`24/7`, `fx` or an exchange code) and its per-side
    fee and slippage in basis points."""

    __tablename__ = "instruments"
    __table_args__ = (
        CheckConstraint("fee_bps >= 0 AND fee_bps <= 1000", name="fee_bps_range"),
        CheckConstraint("slippage_bps >= 0 AND slippage_bps <= 1000", name="slippage_bps_range"),
    )

    symbol: Mapped[str] = mapped_column(String(30), primary_key=True)
    calendar: Mapped[str] = mapped_column(String(32))
    fee_bps: Mapped[float] = mapped_column(Float)
    slippage_bps: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "calendar": self.calendar,
                "fee_bps": float(self.fee_bps), "slippage_bps": float(self.slippage_bps),
                "updated_by": self.updated_by, "updated_at": isoformat(self.updated_at)}
