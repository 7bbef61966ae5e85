"""Market data feeds (issue 12): what keeps the market data store current.

A feed pulls bars of one (symbol, timeframe) from a source — Binance public klines
(`config` = the exchange symbol, e.g. BTCUSDT) or a drop folder (`config` = the
directory) — every `interval_s` seconds. `lease_owner`/`lease_expires_at` are the claim
of the poll in progress (app.services.feeds claims with a conditional UPDATE), so two
beats or workers never poll the same feed at once; `next_poll_at` says when it is due.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.timeutil import utcnow
from app.models.base import Base
from app.models.registry import str_enum


class FeedKind(enum.StrEnum):
    BINANCE = "binance"  # GET {CLM_BINANCE_BASE_URL}/api/v3/klines
    FOLDER = "folder"  # files dropped in a directory


class Feed(Base):
    """One feed of one series from one source, with the outcome of its last poll."""

    __tablename__ = "market_feeds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[FeedKind] = mapped_column(str_enum(FeedKind, "feed_kind"))
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    # binance: the exchange's symbol; folder: the absolute directory path
    config: Mapped[str] = mapped_column(String(1000))
    interval_s: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_bar: Mapped[datetime | None] = mapped_column()  # open time of the newest stored bar
    last_poll_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    polls: Mapped[int] = mapped_column(Integer, default=0)
    bars_added: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("kind", "config", "symbol", "timeframe", name="uq_market_feeds_source"),
        Index("ix_market_feeds_enabled_next_poll_at", "enabled", "next_poll_at"),
    )
