"""All SQLAlchemy models; importing this package registers every table on Base.metadata."""

from app.models.base import Base
from app.models.registry import ApiToken, AuditEntry, ModelVersion, Role, VersionStatusChange

__all__ = ["ApiToken", "AuditEntry", "Base", "ModelVersion", "Role", "VersionStatusChange"]

# Later issues append their modules here (jobs, continuous, evolution).
