"""`clm artifacts verify`: re-hash every artifact the registry refers to.

Prints one line per problem (missing or corrupt file, recorded hash that disagrees with
the URI) naming the versions that refer to it, then a summary; exits 1 when there is
any problem. The logic is `app.services.artifact_audit.verify_artifacts`.
"""

from __future__ import annotations

import json
import sys

import click

from app.core.config import get_settings


@click.group()
def artifacts() -> None:
    """The content-addressed artifact store (CLM_ARTIFACT_ROOT)."""


@artifacts.command("verify")
@click.option("--json", "as_json", is_flag=True, help="print JSON only")
def verify(as_json: bool) -> None:
    """Re-hash every artifact referenced by a model version; exit 1 on any problem."""
    # lazy: start-up (`clm --help` must not import the services and the ML stack)
    from app.db import transaction
    from app.ml.artifacts import ArtifactStore
    from app.services.artifact_audit import verify_artifacts

    settings = get_settings()
    store = ArtifactStore.from_settings(settings)
    with transaction(settings.database_url) as session:
        report = verify_artifacts(session, store)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for p in report.problems:
            click.echo(f"{p.uri}: {p.problem}: {p.detail}; referenced by "
                       f"{', '.join(p.referenced_by)}")
        click.echo(f"{report.versions} version(s), {report.checked} artifact(s) re-hashed in "
                   f"{store.root}, {report.external} external reference(s) not checked: "
                   f"{len(report.problems) or 'no'} problem(s)")
    sys.exit(1 if report.problems else 0)
