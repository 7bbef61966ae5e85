"""The `clm` command: a click group whose subcommands load lazily.

Each subcommand lives in its owner's module and is imported only when invoked, so
`clm backtest` starts fast without importing Flask, Celery or SQLAlchemy.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click.Command / click.Group
LAZY_COMMANDS: dict[str, str] = {
    "db": "app.cli_commands.db:db",
    "serve": "app.cli_commands.serve:serve",
    "token": "app.cli_commands.tokens:token",
    "data": "app.cli_commands.data:data",
    "backtest": "app.cli_commands.backtest:backtest",
    "worker": "app.cli_commands.workers:worker",
    "beat": "app.cli_commands.workers:beat",
    "events": "app.cli_commands.events:events",
    "track": "app.cli_commands.tracking:track",
    "untrack": "app.cli_commands.tracking:untrack",
    "demo": "app.cli_commands.demo:demo",
    "instrument": "app.cli_commands.instruments:instrument",
    "artifacts": "app.cli_commands.artifacts:artifacts",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet in this checkout
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="clm")
def cli() -> None:
    """CLM — the Continuous Learning Manager."""


def main() -> None:
    # A setting that cannot be used (a bad CLM_* value, an unreachable object store) is
    # the operator's to fix: one line naming the variable, not a traceback.
    from app.core.config import ConfigError
    from app.core.objectstore import ObjectStoreUnavailable

    try:
        cli(prog_name="clm")
    except (ConfigError, ObjectStoreUnavailable) as exc:
        click.echo(f"clm: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
