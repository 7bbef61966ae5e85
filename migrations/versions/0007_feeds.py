"""market data feeds: Binance public klines and drop folders keeping the store current

Revision ID: 0007_feeds
Revises: 0006_instruments

One table, `market_feeds` (app/models/feeds.py): the source, the poll interval, the
outcome of the last poll and the lease of the poll in progress.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007_feeds'
down_revision: str | None = "0006_instruments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('market_feeds',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.Enum('binance', 'folder', name='feed_kind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('symbol', sa.String(length=30), nullable=False),
    sa.Column('timeframe', sa.String(length=8), nullable=False),
    sa.Column('config', sa.String(length=1000), nullable=False),
    sa.Column('interval_s', sa.Float(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_bar', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_poll_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=120), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('polls', sa.Integer(), nullable=False),
    sa.Column('bars_added', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=120), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_market_feeds')),
    sa.UniqueConstraint('kind', 'config', 'symbol', 'timeframe', name='uq_market_feeds_source')
    )
    with op.batch_alter_table('market_feeds', schema=None) as batch_op:
        batch_op.create_index('ix_market_feeds_enabled_next_poll_at', ['enabled', 'next_poll_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('market_feeds', schema=None) as batch_op:
        batch_op.drop_index('ix_market_feeds_enabled_next_poll_at')

    op.drop_table('market_feeds')
