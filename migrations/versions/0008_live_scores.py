"""live scores: every production/candidate/shadow version scored on new bars

Revision ID: 0008_live_scores
Revises: 0007_feeds

- `live_scores`: one row per (model_id, version): scoring set-up, state to continue
  from, latest metrics;
- `live_score_points`: one row per scored bar (position, equity), deleted with its score.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_live_scores"
down_revision: str | None = "0007_feeds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "live_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(length=120), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=30), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
        sa.Column("setup", JSON, nullable=False),
        sa.Column("train_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_bar", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bars", sa.Integer(), nullable=False),
        sa.Column("trades", sa.Integer(), nullable=False),
        sa.Column("sharpe", sa.Float(), nullable=True),
        sa.Column("max_drawdown", sa.Float(), nullable=True),
        sa.Column("total_return", sa.Float(), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("final_equity", sa.Float(), nullable=True),
        sa.Column("state", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_scores")),
        sa.UniqueConstraint("model_id", "version", name="uq_live_scores_model_version"),
    )
    op.create_table(
        "live_score_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("score_id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("equity", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["score_id"], ["live_scores.id"],
                                name=op.f("fk_live_score_points_score_id_live_scores"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_score_points")),
        sa.UniqueConstraint("score_id", "ts", name="uq_live_score_points_score_ts"),
    )


def downgrade() -> None:
    op.drop_table("live_score_points")
    op.drop_table("live_scores")
