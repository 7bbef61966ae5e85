"""What several `clm` commands share: the configured database, refused unless migrated."""

from __future__ import annotations

import click

from app.core.config import get_settings


def migrated_database_url() -> str:
    """The configured database URL; a clear message (no traceback) when it is not at the
    migration head or cannot be reached."""
    # lazy: start-up (alembic and SQLAlchemy only for commands that use the database)
    from sqlalchemy.exc import SQLAlchemyError

    from app.migrate import DatabaseNotAtHead, assert_at_head

    url = get_settings().database_url
    try:
        assert_at_head(url)
    except (DatabaseNotAtHead, SQLAlchemyError) as exc:
        raise click.ClickException(str(exc)) from exc
    return url
