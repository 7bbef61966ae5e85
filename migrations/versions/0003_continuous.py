"""tracked models, trigger decisions, drift and performance reports, event outbox and inbox

Revision ID: 0003_continuous
Revises: 0002_jobs
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0003_continuous"
down_revision: str | None = "0002_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled in by the owner of this revision (see docs/INTERNALS.md).
    pass


def downgrade() -> None:
    pass
