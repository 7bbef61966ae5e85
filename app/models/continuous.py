"""Continuous-learning schema: tracked models, trigger decisions, drift and performance
reports, regime champions, and the event bus's outbox, inbox and dead letters.

Model ids and versions are plain strings (no foreign keys to the registry or jobs): these
records are history and must outlive a deleted version or job.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.domain import ModelType, TriggerReason
from app.core.timeutil import isoformat, utcnow
from app.models.base import Base, JSONType
from app.models.registry import str_enum


class TrackingSource(enum.StrEnum):
    EXPLICIT = "explicit"  # added with POST /clm/tracked or `clm track`
    PRODUCTION = "production"  # has a production version (tracked implicitly)


class TriggerOutcome(enum.StrEnum):
    PENDING = "pending"  # recorded, waiting for arbitration
    TRIGGERED = "triggered"  # started a training job (job_id)
    COALESCED = "coalesced"  # folded into a job that runs or starts now (job_id)
    SUPPRESSED = "suppressed"  # within the cooldown after a training (cooldown_until)
    REJECTED = "rejected"  # could not start a job (detail says why)


def _iso_or_none(value: datetime | None) -> str | None:
    return isoformat(value) if value is not None else None


class TrackedModel(Base):
    """A model the scheduler watches, with its own interval and thresholds (None = the
    configured default). Rows with source "production" are created the first time the
    scheduler acts on a production model; `enabled=False` untracks even those."""

    __tablename__ = "tracked_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120), unique=True)
    model_type: Mapped[ModelType] = mapped_column(str_enum(ModelType, "model_type"))
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    source: Mapped[TrackingSource] = mapped_column(str_enum(TrackingSource, "tracking_source"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    interval_hours: Mapped[float | None] = mapped_column(Float)
    drift_psi_threshold: Mapped[float | None] = mapped_column(Float)
    drift_feature_share: Mapped[float | None] = mapped_column(Float)
    degraded_sharpe: Mapped[float | None] = mapped_column(Float)
    min_trades: Mapped[int | None] = mapped_column(Integer)
    dataset_span_days: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Start of the periodic clock: the last training the scheduler knows of.
    anchor_at: Mapped[datetime | None] = mapped_column()
    last_job_id: Mapped[str | None] = mapped_column(String(36))
    created_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TriggerDecision(Base):
    """One reason to retrain a model and what arbitration decided about it.

    (model_id, reason, dedupe_key) is unique: the same due slot seen by two schedulers,
    or the same event delivered twice, is one decision.
    """

    __tablename__ = "trigger_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    model_type: Mapped[ModelType] = mapped_column(str_enum(ModelType, "model_type"))
    symbol: Mapped[str] = mapped_column(String(30))
    timeframe: Mapped[str] = mapped_column(String(8))
    reason: Mapped[TriggerReason] = mapped_column(str_enum(TriggerReason, "trigger_reason"))
    priority: Mapped[int] = mapped_column(Integer)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[TriggerOutcome] = mapped_column(str_enum(TriggerOutcome, "trigger_outcome"))
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    regime: Mapped[str | None] = mapped_column(String(40))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    dataset_span_days: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(40))
    requested_by: Mapped[str | None] = mapped_column(String(120))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column()
    cooldown_until: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("model_id", "reason", "dedupe_key", name="uq_trigger_decisions_key"),
        Index("ix_trigger_decisions_outcome_model_id", "outcome", "model_id"),
        Index("ix_trigger_decisions_model_id_id", "model_id", "id"),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_id": self.model_id,
            "model_type": str(self.model_type),
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "reason": str(self.reason),
            "priority": self.priority,
            "outcome": str(self.outcome),
            "job_id": self.job_id,
            "detail": self.detail,
            "details": self.details or {},
            "regime": self.regime,
            "dedupe_key": self.dedupe_key,
            "source": self.source,
            "requested_by": self.requested_by,
            "requested_at": _iso_or_none(self.requested_at),
            "decided_at": _iso_or_none(self.decided_at),
            "cooldown_until": _iso_or_none(self.cooldown_until),
        }


class DriftReport(Base):
    """One drift check of one production version against its training reference."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(64))
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(24), default="ok")  # ok|insufficient_data|error
    drifted: Mapped[bool] = mapped_column(Boolean, default=False)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime | None] = mapped_column()
    window_end: Mapped[datetime | None] = mapped_column()
    features_total: Mapped[int] = mapped_column(Integer, default=0)
    features_drifted: Mapped[int] = mapped_column(Integer, default=0)
    share_drifted: Mapped[float] = mapped_column(Float, default=0.0)
    prediction_psi: Mapped[float | None] = mapped_column(Float)
    prediction_ks: Mapped[float | None] = mapped_column(Float)
    psi_threshold: Mapped[float] = mapped_column(Float)
    feature_share_threshold: Mapped[float] = mapped_column(Float)
    ks_threshold: Mapped[float] = mapped_column(Float)
    # {"features": [{name, psi, ks, drifted, ks_large, rows, reference_rows, note}],
    #  "reasons": [...], "reference_source": "lineage" | "rebuilt"}
    features: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    decision_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_drift_reports_model_id_id", "model_id", "id"),
        Index("ix_drift_reports_checked_at", "checked_at"),
    )

    def to_dict(self) -> dict[str, Any]:
        detail = self.features or {}
        return {
            "id": self.id,
            "model_id": self.model_id,
            "version": self.version,
            "checked_at": _iso_or_none(self.checked_at),
            "status": self.status,
            "drifted": bool(self.drifted),
            "rows": self.rows,
            "window_start": _iso_or_none(self.window_start),
            "window_end": _iso_or_none(self.window_end),
            "features_total": self.features_total,
            "features_drifted": self.features_drifted,
            "share_drifted": self.share_drifted,
            "prediction_psi": self.prediction_psi,
            "prediction_ks": self.prediction_ks,
            "thresholds": {"psi": self.psi_threshold,
                           "feature_share": self.feature_share_threshold,
                           "ks": self.ks_threshold},
            "reasons": detail.get("reasons", []),
            "reference_source": detail.get("reference_source"),
            "features": detail.get("features", []),
            "error": self.error,
            "decision_id": self.decision_id,
        }


class PerformanceReport(Base):
    """Trading results of a version: paper (the model run forward on new bars by CLM) or
    live (reported from outside, by API or event), with the rolling judgement made."""

    __tablename__ = "performance_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # paper | live
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    period_start: Mapped[datetime | None] = mapped_column()
    period_end: Mapped[datetime | None] = mapped_column()
    trades: Mapped[int] = mapped_column(Integer, default=0)
    sharpe: Mapped[float | None] = mapped_column(Float)
    total_return: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Live: the raw realized per-period returns and trade returns (rolling Sharpe input).
    returns: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The rolling window judged after this report: sharpe, trades, degraded, floor breach.
    rolling: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    event_id: Mapped[str | None] = mapped_column(String(64))
    reported_by: Mapped[str | None] = mapped_column(String(120))
    decision_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_performance_reports_model_id_id", "model_id", "id"),
        Index("ix_performance_reports_version_source", "model_id", "version", "source"),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_id": self.model_id,
            "version": self.version,
            "source": self.source,
            "reported_at": _iso_or_none(self.reported_at),
            "period_start": _iso_or_none(self.period_start),
            "period_end": _iso_or_none(self.period_end),
            "trades": self.trades,
            "sharpe": self.sharpe,
            "total_return": self.total_return,
            "metrics": self.metrics or {},
            "rolling": self.rolling or {},
            "degraded": bool(self.degraded),
            "event_id": self.event_id,
            "reported_by": self.reported_by,
            "decision_id": self.decision_id,
        }


class RegimeChampion(Base):
    """The best gate-passing regime-specific version of a model, per regime."""

    __tablename__ = "regime_champions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120))
    regime: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(64))
    sharpe: Mapped[float | None] = mapped_column(Float)
    promotion_score: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(36))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("model_id", "regime", name="uq_regime_champions_model_regime"),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "regime": self.regime,
            "version": self.version,
            "sharpe": self.sharpe,
            "promotion_score": self.promotion_score,
            "metrics": self.metrics or {},
            "job_id": self.job_id,
            "previous_version": self.previous_version,
            "set_at": _iso_or_none(self.set_at),
        }


class OutboxEvent(Base):
    """An event to publish, written in the transaction of the change it announces."""

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(80))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    published_at: Mapped[datetime | None] = mapped_column()
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The relay's work list: unpublished rows in id order, kept small by a partial index.
        Index(
            "ix_event_outbox_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        Index("ix_event_outbox_type_id", "type", "id"),
        Index("ix_event_outbox_occurred_at", "occurred_at"),
    )

    def envelope(self) -> dict[str, Any]:
        """The wire format: {"id", "type", "occurred_at", "source", "payload"}."""
        return {
            "id": self.event_id,
            "type": self.type,
            "occurred_at": isoformat(self.occurred_at),
            "source": self.source,
            "payload": self.payload or {},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.envelope(),
            "published": self.published_at is not None,
            "published_at": _iso_or_none(self.published_at),
            "publish_attempts": self.publish_attempts,
            "last_error": self.last_error,
            "seq": self.id,
        }


class InboxEvent(Base):
    """An inbound event handled once: its id is unique, so a redelivery is a no-op."""

    __tablename__ = "event_inbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(80))
    source: Mapped[str | None] = mapped_column(String(80))
    occurred_at: Mapped[datetime | None] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (Index("ix_event_inbox_received_at", "received_at"),)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "type": self.type,
            "source": self.source,
            "occurred_at": _iso_or_none(self.occurred_at),
            "received_at": _iso_or_none(self.received_at),
            "payload": self.payload or {},
            "outcome": self.outcome or {},
        }


class DeadLetter(Base):
    """An inbound message refused as malformed (or unprocessable), with the reason."""

    __tablename__ = "event_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(64), index=True)
    type: Mapped[str | None] = mapped_column(String(80))
    routing_key: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "type": self.type,
            "routing_key": self.routing_key,
            "reason": self.reason,
            "body": self.body,
            "received_at": _iso_or_none(self.received_at),
        }
