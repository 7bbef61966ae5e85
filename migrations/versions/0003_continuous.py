"""tracked models, trigger decisions, drift and performance reports, regime champions,
event outbox, inbox and dead letters

Revision ID: 0003_continuous
Revises: 0002_jobs
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_continuous"
down_revision: str | None = "0002_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tracked_models',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('model_type', sa.Enum('xgboost', 'lightgbm', 'nhits', 'patchtst', 'rl_v2', 'rl_v3', 'other', name='model_type', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('symbol', sa.String(length=30), nullable=False),
    sa.Column('timeframe', sa.String(length=8), nullable=False),
    sa.Column('source', sa.Enum('explicit', 'production', name='tracking_source', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('interval_hours', sa.Float(), nullable=True),
    sa.Column('drift_psi_threshold', sa.Float(), nullable=True),
    sa.Column('drift_feature_share', sa.Float(), nullable=True),
    sa.Column('degraded_sharpe', sa.Float(), nullable=True),
    sa.Column('min_trades', sa.Integer(), nullable=True),
    sa.Column('dataset_span_days', sa.Integer(), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('anchor_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_job_id', sa.String(length=36), nullable=True),
    sa.Column('created_by', sa.String(length=120), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tracked_models')),
    sa.UniqueConstraint('model_id', name=op.f('uq_tracked_models_model_id'))
    )
    op.create_table('trigger_decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('model_type', sa.Enum('xgboost', 'lightgbm', 'nhits', 'patchtst', 'rl_v2', 'rl_v3', 'other', name='model_type', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('symbol', sa.String(length=30), nullable=False),
    sa.Column('timeframe', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Enum('periodic', 'drift_detected', 'performance_degraded', 'regime_change', 'manual', name='trigger_reason', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('outcome', sa.Enum('pending', 'triggered', 'coalesced', 'suppressed', 'rejected', name='trigger_outcome', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('regime', sa.String(length=40), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('dataset_span_days', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('requested_by', sa.String(length=120), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cooldown_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_decisions')),
    sa.UniqueConstraint('model_id', 'reason', 'dedupe_key', name='uq_trigger_decisions_key')
    )
    op.create_index(op.f('ix_trigger_decisions_job_id'), 'trigger_decisions', ['job_id'], unique=False)
    op.create_index('ix_trigger_decisions_model_id_id', 'trigger_decisions', ['model_id', 'id'], unique=False)
    op.create_index('ix_trigger_decisions_outcome_model_id', 'trigger_decisions', ['outcome', 'model_id'], unique=False)
    op.create_table('drift_reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('drifted', sa.Boolean(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('features_total', sa.Integer(), nullable=False),
    sa.Column('features_drifted', sa.Integer(), nullable=False),
    sa.Column('share_drifted', sa.Float(), nullable=False),
    sa.Column('prediction_psi', sa.Float(), nullable=True),
    sa.Column('prediction_ks', sa.Float(), nullable=True),
    sa.Column('psi_threshold', sa.Float(), nullable=False),
    sa.Column('feature_share_threshold', sa.Float(), nullable=False),
    sa.Column('ks_threshold', sa.Float(), nullable=False),
    sa.Column('features', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('decision_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_reports'))
    )
    op.create_index('ix_drift_reports_checked_at', 'drift_reports', ['checked_at'], unique=False)
    op.create_index('ix_drift_reports_model_id_id', 'drift_reports', ['model_id', 'id'], unique=False)
    op.create_table('performance_reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('trades', sa.Integer(), nullable=False),
    sa.Column('sharpe', sa.Float(), nullable=True),
    sa.Column('total_return', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('returns', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('rolling', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('degraded', sa.Boolean(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=True),
    sa.Column('reported_by', sa.String(length=120), nullable=True),
    sa.Column('decision_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_performance_reports'))
    )
    op.create_index('ix_performance_reports_model_id_id', 'performance_reports', ['model_id', 'id'], unique=False)
    op.create_index('ix_performance_reports_version_source', 'performance_reports', ['model_id', 'version', 'source'], unique=False)
    op.create_table('regime_champions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('regime', sa.String(length=40), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('sharpe', sa.Float(), nullable=True),
    sa.Column('promotion_score', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('previous_version', sa.String(length=64), nullable=True),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_regime_champions')),
    sa.UniqueConstraint('model_id', 'regime', name='uq_regime_champions_model_regime')
    )
    op.create_table('event_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=80), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=80), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('publish_attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_outbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_event_outbox_event_id'))
    )
    op.create_index('ix_event_outbox_occurred_at', 'event_outbox', ['occurred_at'], unique=False)
    op.create_index('ix_event_outbox_type_id', 'event_outbox', ['type', 'id'], unique=False)
    op.create_index('ix_event_outbox_unpublished', 'event_outbox', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))
    op.create_table('event_inbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=80), nullable=False),
    sa.Column('source', sa.String(length=80), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('outcome', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_inbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_event_inbox_event_id'))
    )
    op.create_index('ix_event_inbox_received_at', 'event_inbox', ['received_at'], unique=False)
    op.create_table('event_dead_letters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=True),
    sa.Column('type', sa.String(length=80), nullable=True),
    sa.Column('routing_key', sa.String(length=200), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_dead_letters'))
    )
    op.create_index(op.f('ix_event_dead_letters_event_id'), 'event_dead_letters', ['event_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_event_dead_letters_event_id'), table_name='event_dead_letters')
    op.drop_table('event_dead_letters')
    op.drop_index('ix_event_inbox_received_at', table_name='event_inbox')
    op.drop_table('event_inbox')
    op.drop_index('ix_event_outbox_unpublished', table_name='event_outbox', postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))
    op.drop_index('ix_event_outbox_type_id', table_name='event_outbox')
    op.drop_index('ix_event_outbox_occurred_at', table_name='event_outbox')
    op.drop_table('event_outbox')
    op.drop_table('regime_champions')
    op.drop_index('ix_performance_reports_version_source', table_name='performance_reports')
    op.drop_index('ix_performance_reports_model_id_id', table_name='performance_reports')
    op.drop_table('performance_reports')
    op.drop_index('ix_drift_reports_model_id_id', table_name='drift_reports')
    op.drop_index('ix_drift_reports_checked_at', table_name='drift_reports')
    op.drop_table('drift_reports')
    op.drop_index('ix_trigger_decisions_outcome_model_id', table_name='trigger_decisions')
    op.drop_index('ix_trigger_decisions_model_id_id', table_name='trigger_decisions')
    op.drop_index(op.f('ix_trigger_decisions_job_id'), table_name='trigger_decisions')
    op.drop_table('trigger_decisions')
    op.drop_table('tracked_models')
