"""training jobs, steps, fold results

Revision ID: 0002_jobs
Revises: 0001_registry
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_jobs"
down_revision: str | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table('training_jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('model_id', sa.String(length=120), nullable=False),
    sa.Column('model_type', sa.Enum('xgboost', 'lightgbm', 'nhits', 'patchtst', 'rl_v2', 'rl_v3', 'other', name='model_type', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('symbol', sa.String(length=30), nullable=False),
    sa.Column('timeframe', sa.String(length=8), nullable=False),
    sa.Column('regime', sa.String(length=40), nullable=True),
    sa.Column('dataset_span_days', sa.Integer(), nullable=False),
    sa.Column('params', JSON, nullable=False),
    sa.Column('strategy', JSON, nullable=True),
    sa.Column('trigger_reason', sa.Enum('periodic', 'drift_detected', 'performance_degraded', 'regime_change', 'manual', name='trigger_reason', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('requested_by', sa.String(length=120), nullable=True),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', name='job_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('stage', sa.Enum('prepare', 'train', 'evaluate', 'register', 'done', name='job_stage', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('dispatches', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('folds_total', sa.Integer(), nullable=False),
    sa.Column('folds_done', sa.Integer(), nullable=False),
    sa.Column('artifacts', JSON, nullable=False),
    sa.Column('evaluation', JSON, nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_jobs'))
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_training_jobs_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_lease_expires_at'), ['lease_expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_model_type'), ['model_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_trigger_reason'), ['trigger_reason'], unique=False)
        # One active (queued/running) job per model_id, enforced by the database.
        batch_op.create_index('uq_training_jobs_one_active', ['model_id'], unique=True, postgresql_where=ACTIVE, sqlite_where=ACTIVE)

    op.create_table('training_job_steps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('status', sa.Enum('pending', 'running', 'succeeded', 'failed', 'skipped', name='step_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detail', JSON, nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_training_job_steps_job_id_training_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_job_steps')),
    sa.UniqueConstraint('job_id', 'name', name='uq_training_job_steps_job_name')
    )
    op.create_table('training_job_work_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.Enum('fold', 'champion', 'final', name='work_kind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('fold', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('pending', 'running', 'done', name='work_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('dispatches', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', JSON, nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_training_job_work_items_job_id_training_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_job_work_items')),
    sa.UniqueConstraint('job_id', 'kind', 'fold', name='uq_training_job_work_items_key')
    )
    with op.batch_alter_table('training_job_work_items', schema=None) as batch_op:
        batch_op.create_index('ix_training_job_work_items_job_status', ['job_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('training_job_work_items', schema=None) as batch_op:
        batch_op.drop_index('ix_training_job_work_items_job_status')

    op.drop_table('training_job_work_items')
    op.drop_table('training_job_steps')
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_training_jobs_one_active', postgresql_where=ACTIVE, sqlite_where=ACTIVE)
        batch_op.drop_index(batch_op.f('ix_training_jobs_trigger_reason'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_model_type'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_model_id'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_lease_expires_at'))
        batch_op.drop_index('ix_training_jobs_created_at_id')

    op.drop_table('training_jobs')
