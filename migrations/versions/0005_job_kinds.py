"""job kinds: evolve jobs live in training_jobs; one active *train* job per model

Revision ID: 0005_job_kinds
Revises: 0004_evolution

- `training_jobs.kind` (`train` | `evolve`, default `train` for every existing row);
- `uq_training_jobs_one_active` now covers train jobs only (a strategy search may run
  while its model trains).

Downgrade deletes the evolve jobs (and their steps) first: without a kind column they
would read as training jobs and could collide with the old, wider one-active index. The
searches themselves (strategy_searches.job_id) are kept; GET /clm/jobs/{id} falls back
to them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_job_kinds"
down_revision: str | None = "0004_evolution"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ACTIVE = sa.text("status IN ('queued', 'running')")
# Same text as app.models.jobs.ONE_ACTIVE_TRAIN_JOB_WHERE (migrations stand alone).
TRAIN_ACTIVE = sa.text("status IN ('queued', 'running') AND kind = 'train'")
JOB_KIND = sa.Enum("train", "evolve", name="job_kind", native_enum=False,
                   create_constraint=True, length=32)


def _recreate() -> str:
    # SQLite cannot ALTER a CHECK constraint in or out, so its table is rebuilt (with
    # every other constraint); PostgreSQL alters the table in place.
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    # The partial index goes first and comes back last: on SQLite the batch below
    # rebuilds the table, and a rebuilt partial index must not lose its predicate.
    op.drop_index("uq_training_jobs_one_active", table_name="training_jobs",
                  postgresql_where=OLD_ACTIVE, sqlite_where=OLD_ACTIVE)
    with op.batch_alter_table("training_jobs", schema=None, recreate=_recreate()) as batch_op:
        batch_op.add_column(sa.Column("kind", JOB_KIND, nullable=False,
                                      server_default="train"))
    op.create_index("uq_training_jobs_one_active", "training_jobs", ["model_id"], unique=True,
                    postgresql_where=TRAIN_ACTIVE, sqlite_where=TRAIN_ACTIVE)


def downgrade() -> None:
    evolve = sa.text("SELECT id FROM training_jobs WHERE kind = 'evolve'")
    op.execute(sa.text(f"DELETE FROM training_job_steps WHERE job_id IN ({evolve.text})"))
    op.execute(sa.text(f"DELETE FROM training_job_work_items WHERE job_id IN ({evolve.text})"))
    op.execute(sa.text("DELETE FROM training_jobs WHERE kind = 'evolve'"))
    op.drop_index("uq_training_jobs_one_active", table_name="training_jobs",
                  postgresql_where=TRAIN_ACTIVE, sqlite_where=TRAIN_ACTIVE)
    with op.batch_alter_table("training_jobs", schema=None, recreate=_recreate()) as batch_op:
        batch_op.drop_constraint(op.f("ck_training_jobs_job_kind"), type_="check")
        batch_op.drop_column("kind")
    op.create_index("uq_training_jobs_one_active", "training_jobs", ["model_id"], unique=True,
                    postgresql_where=OLD_ACTIVE, sqlite_where=OLD_ACTIVE)
