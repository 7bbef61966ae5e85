"""`clm token`: create, revoke and list API tokens (stored hashed; shown once).

`clm token create` prints the raw token alone on the last line of its output, so
scripts can take it with `| tail -n 1`.
"""

from __future__ import annotations

import click

from app.cli_commands.common import migrated_database_url
from app.core.timeutil import isoformat

ROLES = ("viewer", "operator", "admin")


@click.group()
def token() -> None:
    """API tokens: create, revoke, list."""


@token.command()
@click.option("--role", required=True, type=click.Choice(ROLES), help="what the token may do")
@click.option("--name", required=True, help="who or what uses it (1–120 characters)")
def create(role: str, name: str) -> None:
    """Create a token; the raw value is printed once, alone on the last line."""
    from app.db import transaction
    from app.services.auth import create_token

    if not name.strip() or len(name.strip()) > 120:
        raise click.BadParameter("must be 1–120 characters", param_hint="'--name'")
    url = migrated_database_url()
    with transaction(url) as session:
        raw = create_token(session, role=role, name=name, actor="cli")
    click.echo(f"Created {role} token {name.strip()!r}. It is shown only once; store it now:")
    click.echo(raw)


@token.command()
@click.option("--name", required=True, help="revoke every active token with this name")
def revoke(name: str) -> None:
    """Revoke the active tokens with this name."""
    from app.db import transaction
    from app.services.auth import revoke_token

    url = migrated_database_url()
    with transaction(url) as session:
        count = revoke_token(session, name.strip(), actor="cli")
    if count == 0:
        raise click.ClickException(f"no active token named {name.strip()!r}")
    click.echo(f"revoked {count} token(s) named {name.strip()!r}")


@token.command("list")
def list_tokens() -> None:
    """List tokens (name, role, prefix, created, last used, revoked); never the secret."""
    from sqlalchemy import select

    from app.db import transaction
    from app.models.registry import ApiToken

    url = migrated_database_url()
    with transaction(url) as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
        for row in rows:
            click.echo(
                "\t".join(
                    [
                        row.name,
                        row.role.value,
                        row.prefix + "…",
                        isoformat(row.created_at) or "",
                        isoformat(row.last_used_at) or "never used",
                        f"revoked {isoformat(row.revoked_at)}" if row.revoked_at else "active",
                    ]
                )
            )
