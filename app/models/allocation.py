"""Allocation schema: per model_id, how traffic is split between its versions.

`allocations`: one row per model_id — `mode` (`champion`: production gets 1.0;
`thompson`: production and candidates share weights drawn by Thompson sampling), the
current `weights` ({version: weight}, sum 1), when they last changed, and the automatic
guard's state (`guard`: the last automatic action's time, the latched version, whether
the rollback guard is re-armed). `allocation_history`: one row per change of weights or
mode, with the probabilities and posteriors behind a Thompson draw. Model ids and
versions are plain strings, like the other continuous-learning tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.timeutil import utcnow
from app.models.base import Base, JSONType


class Allocation(Base):
    """The current allocation of one model_id (see the module docstring)."""

    __tablename__ = "allocations"

    model_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16), default="champion")
    weights: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    guard: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AllocationChange(Base):
    """One change of a model's weights or mode, and what it was drawn from."""

    __tablename__ = "allocation_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    mode: Mapped[str] = mapped_column(String(16))
    weights: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    actor: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_allocation_history_model_id_id", "model_id", "id"),)
