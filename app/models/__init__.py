"""All SQLAlchemy models; importing this package registers every table on Base.metadata."""

from app.models import (  # noqa: F401 - register tables
    allocation,
    continuous,
    evolution,
    feeds,
    instruments,
    jobs,
    live,
)
from app.models.base import Base
from app.models.registry import ApiToken, AuditEntry, ModelVersion, Role, VersionStatusChange

__all__ = ["ApiToken", "AuditEntry", "Base", "ModelVersion", "Role", "VersionStatusChange"]
