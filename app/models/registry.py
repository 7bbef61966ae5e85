"""Registry schema: model versions, their status history, the audit log and API tokens."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.domain import ModelStatus, ModelType
from app.core.timeutil import utcnow
from app.models.base import Base, JSONType


def str_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR + CHECK enum storing the lower-case contract values (portable, no PG type)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class ModelVersion(Base):
    """One trained (or externally registered) version of a model_id."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(120), index=True)
    version: Mapped[str] = mapped_column(String(64))
    model_type: Mapped[ModelType] = mapped_column(str_enum(ModelType, "model_type"), index=True)
    symbol: Mapped[str] = mapped_column(String(30), index=True)
    timeframe: Mapped[str] = mapped_column(String(8), index=True)
    status: Mapped[ModelStatus] = mapped_column(str_enum(ModelStatus, "model_status"), index=True)
    # Market regime the version was trained for; None = all regimes (the general model).
    regime: Mapped[str | None] = mapped_column(String(40), index=True)
    sharpe: Mapped[float | None] = mapped_column(Float, index=True)
    promotion_score: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[Any] = mapped_column(JSONType, default=dict)
    notes: Mapped[str | None] = mapped_column(Text)
    artifact_uri: Mapped[str | None] = mapped_column(String(400))
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    artifact_format: Mapped[str | None] = mapped_column(String(40))
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The training job that produced it: unique, so a redelivered step never makes two.
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("uq_model_versions_model_id_version", "model_id", "version", unique=True),
        # The database itself enforces at most one production version per model_id.
        Index(
            "uq_model_versions_one_production",
            "model_id",
            unique=True,
            postgresql_where=text("status = 'production'"),
            sqlite_where=text("status = 'production'"),
        ),
    )


class VersionStatusChange(Base):
    """Every status transition of every version: answers "what was production at T"."""

    __tablename__ = "version_status_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Strings, not a foreign key: history outlives a deleted version.
    model_id: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_version_status_changes_model_id_at", "model_id", "at"),
        Index("ix_version_status_changes_to_status_at", "to_status", "at"),
    )


class AuditEntry(Base):
    """Who did what, when and why: promotions, rollbacks, deletions, token use."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(120), index=True)
    action: Mapped[str] = mapped_column(String(60), index=True)
    model_id: Mapped[str | None] = mapped_column(String(120), index=True)
    version: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class ApiToken(Base):
    """A bearer token, stored as its sha256 hash only."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120))
    role: Mapped[Role] = mapped_column(str_enum(Role, "token_role"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
