"""Re-hash every artifact the registry refers to (`clm artifacts verify`).

Owns `verify_artifacts`: each model version's model file (`artifact_uri` with its
recorded `artifact_sha256`) and every content-addressed reference inside its lineage and
evaluation documents (a dict holding a `cas://` `uri`, with its `sha256` when recorded,
e.g. the lineage's `dataset`). Each distinct file is read and hashed once; a missing
file, a file whose bytes no longer hash to its name, or a recorded sha256 that
disagrees with the URI is a problem naming the versions that refer to it. References
outside the artifact store (a URI that is not `cas://`) are counted, not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ml.artifacts import ArtifactCorrupt, ArtifactNotFound, ArtifactStore, parse_uri
from app.models.registry import ModelVersion

__all__ = ["ArtifactProblem", "ArtifactReport", "verify_artifacts"]


@dataclass(frozen=True)
class ArtifactProblem:
    uri: str
    problem: str  # "missing" | "corrupt" | "bad reference"
    detail: str
    referenced_by: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "problem": self.problem, "detail": self.detail,
                "referenced_by": list(self.referenced_by)}


@dataclass
class ArtifactReport:
    versions: int = 0
    checked: int = 0  # distinct artifact files re-hashed
    external: int = 0  # references outside the artifact store (not checkable here)
    problems: list[ArtifactProblem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "checked": self.checked, "external": self.external,
                "problems": [p.to_dict() for p in self.problems]}


def _refs_in(doc: Any, where: str) -> Iterator[tuple[str, str | None, str]]:
    """(uri, sha256 or None, where) of every dict with a `uri` key inside `doc`."""
    stack: list[tuple[Any, str]] = [(doc, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            uri = item.get("uri")
            if isinstance(uri, str) and uri:
                sha = item.get("sha256")
                yield uri, sha if isinstance(sha, str) else None, path
            stack.extend((v, f"{path}.{k}") for k, v in item.items() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, f"{path}.{i}") for i, v in enumerate(item))


def verify_artifacts(session: Session, store: ArtifactStore) -> ArtifactReport:
    """Re-hash every artifact referenced by a model version; see the module docstring."""
    report = ArtifactReport()
    # uri -> {recorded sha256 (None = not recorded)} and who refers to it
    wanted: dict[str, set[str | None]] = {}
    users: dict[str, list[str]] = {}
    rows = session.execute(select(
        ModelVersion.model_id, ModelVersion.version, ModelVersion.artifact_uri,
        ModelVersion.artifact_sha256, ModelVersion.lineage, ModelVersion.evaluation,
    ).order_by(ModelVersion.id))
    for model_id, version, uri, sha, lineage, evaluation in rows:
        report.versions += 1
        who = f"{model_id} {version}"
        refs = [(uri, sha, "artifact")] if uri else []
        refs += list(_refs_in(lineage or {}, "lineage"))
        refs += list(_refs_in(evaluation or {}, "evaluation"))
        for ref_uri, ref_sha, where in refs:
            if not ref_uri.startswith("cas://"):
                report.external += 1
                continue
            wanted.setdefault(ref_uri, set()).add(ref_sha.lower() if ref_sha else None)
            users.setdefault(ref_uri, []).append(f"{who} ({where})")
    for uri in sorted(wanted):
        by = tuple(users[uri])
        try:
            uri_sha, _ = parse_uri(uri)
        except ValueError as exc:
            report.problems.append(ArtifactProblem(uri, "bad reference", str(exc), by))
            continue
        recorded = {s for s in wanted[uri] if s is not None}
        if recorded - {uri_sha}:
            report.problems.append(ArtifactProblem(
                uri, "bad reference",
                f"recorded sha256 {', '.join(sorted(recorded - {uri_sha}))} does not match "
                f"the URI's {uri_sha}", by))
            continue
        report.checked += 1
        try:
            store.get_bytes(uri, uri_sha)
        except ArtifactNotFound as exc:
            report.problems.append(ArtifactProblem(uri, "missing", str(exc), by))
        except ArtifactCorrupt as exc:
            report.problems.append(ArtifactProblem(uri, "corrupt", str(exc), by))
        except OSError as exc:
            report.problems.append(ArtifactProblem(uri, "missing", f"cannot read: {exc}", by))
    return report
