"""allocation: per-model traffic weights (champion | thompson), their history, guard state

Revision ID: 0009_allocation
Revises: 0008_live_scores

- `allocations`: one row per model_id: mode, current weights, automatic guard state;
- `allocation_history`: one row per change of weights or mode (what it was drawn from).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009_allocation"
down_revision: str | None = "0008_live_scores"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "allocations",
        sa.Column("model_id", sa.String(length=120), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("weights", JSON, nullable=False),
        sa.Column("guard", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_allocations")),
    )
    op.create_table(
        "allocation_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(length=120), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("weights", JSON, nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_history")),
    )
    op.create_index("ix_allocation_history_model_id_id", "allocation_history",
                    ["model_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_allocation_history_model_id_id", table_name="allocation_history")
    op.drop_table("allocation_history")
    op.drop_table("allocations")
