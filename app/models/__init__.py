"""All SQLAlchemy models; importing this package registers every table on Base.metadata."""

from app.models import continuous, evolution, instruments, jobs  # noqa: F401 - register tables
from app.models.base import Base
from app.models.registry import ApiToken, AuditEntry, ModelVersion, Role, VersionStatusChange

__all__ = ["ApiToken", "AuditEntry", "Base", "ModelVersion", "Role", "VersionStatusChange"]
