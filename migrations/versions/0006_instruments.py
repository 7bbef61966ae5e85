"""instruments: a symbol's trading calendar and per-side costs

Revision ID: 0006_instruments
Revises: 0005_job_kinds

- `instruments` (symbol primary key, calendar, fee_bps, slippage_bps in [0, 1000],
  updated_by, created_at, updated_at). No row: the defaults (24/7, CLM_FEE_BPS /
  CLM_SLIPPAGE_BPS).

Downgrade drops the table (every symbol falls back to the defaults).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_instruments"
down_revision: str | None = "0005_job_kinds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instruments",
        sa.Column("symbol", sa.String(length=30), nullable=False),
        sa.Column("calendar", sa.String(length=32), nullable=False),
        sa.Column("fee_bps", sa.Float(), nullable=False),
        sa.Column("slippage_bps", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("fee_bps >= 0 AND fee_bps <= 1000",
                           name=op.f("ck_instruments_fee_bps_range")),
        sa.CheckConstraint("slippage_bps >= 0 AND slippage_bps <= 1000",
                           name=op.f("ck_instruments_slippage_bps_range")),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_instruments")),
    )


def downgrade() -> None:
    op.drop_table("instruments")
