"""training jobs, steps, fold results

Revision ID: 0002_jobs
Revises: 0001_registry
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0002_jobs"
down_revision: str | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled in by the owner of this revision (see docs/INTERNALS.md).
    pass


def downgrade() -> None:
    pass
