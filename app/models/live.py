"""Live scoring schema: each scored version's running paper-trading record on new bars.

`live_scores`: one row per (model_id, version) — what the version is scored with (frozen
when the row is created: artifact, feature windows, trading rules, training end), where
scoring stands (last scored bar, the backtest and rule state to continue from), and the
latest metrics. `live_score_points`: one row per scored bar (position, marked-to-market
equity), appended. Model ids and versions are plain strings (history outlives a deleted
version), like the other continuous-learning tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.timeutil import utcnow
from app.models.base import Base, JSONType


class LiveScore(Base):
    """A version's live record (see the module docstring)."""

    __tablename__ = "live_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    # How it is scored (frozen at creation): artifact, windows, rules/thresholds, costs.
    setup: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    train_end: Mapped[datetime | None] = mapped_column()
    since: Mapped[datetime | None] = mapped_column()  # first scored bar
    last_bar: Mapped[datetime | None] = mapped_column()  # last scored bar
    bars: Mapped[int] = mapped_column(Integer, default=0)
    trades: Mapped[int] = mapped_column(Integer, default=0)
    sharpe: Mapped[float | None] = mapped_column(Float)
    max_drawdown: Mapped[float | None] = mapped_column(Float)
    total_return: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    final_equity: Mapped[float | None] = mapped_column(Float)
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_live_scores_model_version"),
    )


class LiveScorePoint(Base):
    """One scored bar of a version: its position and marked-to-market equity."""

    __tablename__ = "live_score_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    score_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("live_scores.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column()
    position: Mapped[float] = mapped_column(Float)
    equity: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("score_id", "ts", name="uq_live_score_points_score_ts"),
    )
