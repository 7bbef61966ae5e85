"""Schema migrations as a service: upgrade, downgrade, check, and "is the database at head?"."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations
from app.core.config import get_settings
from app.db import build_engine

VERSION_TABLE = "clm_alembic_version"


class DatabaseNotAtHead(RuntimeError):
    """The database schema is behind (or ahead of) this code's migrations."""


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str | None = None) -> None:
    """Raise if the ORM models and the migrated schema differ (`alembic check`)."""
    command.check(alembic_config(url))


def heads(url: str | None = None) -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def current_revision(url: str | None = None) -> str | None:
    engine = build_engine(url or get_settings().database_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()
    finally:
        engine.dispose()


def assert_at_head(url: str | None = None) -> None:
    """Refuse to run on a schema that is not at the single migration head."""
    current = current_revision(url)
    expected = heads(url)
    if current not in expected:
        raise DatabaseNotAtHead(
            f"database schema is at {current or 'an empty schema'}, code expects "
            f"{', '.join(expected)}: run `clm db upgrade`"
        )
