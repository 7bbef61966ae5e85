"""strategy searches and candidates

Revision ID: 0004_evolution
Revises: 0003_continuous
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0004_evolution"
down_revision: str | None = "0003_continuous"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled in by the owner of this revision (see docs/INTERNALS.md).
    pass


def downgrade() -> None:
    pass
