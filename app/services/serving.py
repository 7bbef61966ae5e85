"""What a consumer should run now: the serving answer and the artifact behind it.

Owns `serving_view` (GET /clm/models/{model_id}/serving: the version to use now — the
production version, or the champion of the regime the market is in — its artifact, the
allocation weights (app.services.allocation: champion 1.0 or the Thompson weights) and
the regime champions, with an ETag that is a hash
of exactly that answer, so it changes exactly when what to run changes) and
`artifact_bytes` (GET …/versions/{version}/artifact: the version's artifact, verified
against its sha256 by app.ml.artifacts.ArtifactStore). Reads only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.analysis.regime import classify_current
from app.core.config import Settings
from app.core.errors import NotFound
from app.ml.artifacts import ArtifactNotFound, ArtifactStore
from app.models.continuous import RegimeChampion
from app.models.registry import ModelVersion
from app.services import registry
from app.services.allocation import weights_for_serving
from app.services.production import production_context

__all__ = ["artifact_bytes", "artifact_path", "current_regime", "serving_view"]

# Bars the current regime is told from (the regime check's window).
REGIME_BARS = 2000


def artifact_path(model_id: str, version: str) -> str:
    """Path of the download route of a version's artifact."""
    return f"/clm/models/{model_id}/versions/{version}/artifact"


def _artifact(row: ModelVersion) -> dict[str, Any] | None:
    if not row.artifact_uri:
        return None
    return {"uri": row.artifact_uri, "sha256": row.artifact_sha256,
            "format": row.artifact_format,
            "download": artifact_path(row.model_id, row.version)}


def current_regime(session: Session, settings: Settings, model_id: str,
                   bars: int = REGIME_BARS) -> str | None:
    """The market's regime now for `model_id`'s series: the majority label of the last
    bars (app.analysis.regime.classify_current, the regime check's rule, with the
    production version's training thresholds). None when it cannot be told (too few
    bars, no data, an unreadable series) or no label holds a majority."""
    ctx = production_context(session, settings, model_id)
    if ctx is None:
        return None
    try:
        state = classify_current(ctx.read_bars(None, last=bars), ctx.training_regimes(None))
    except (LookupError, OSError, ValueError):  # no or unreadable data: serve production
        return None
    return state.label if state.label is not None and state.share > 0.5 else None


def serving_view(session: Session, model_id: str, settings: Settings | None = None
                 ) -> tuple[dict[str, Any], str]:
    """(answer, etag) for `model_id`. NotFound when the model is unknown or nothing is in
    production. `download` is a path (the API makes it absolute); the ETag is computed on
    the answer with paths, so every host answers the same tag.

    The version to use now is the production version, unless regime champions exist and
    the market is in a regime whose champion is another version (`settings` given): then
    that champion, with `current_regime` naming the regime. The answer holds the regime's
    label, not its share or volatility, so the ETag changes when what to run changes,
    not on every bar."""
    prod_dict = registry.get_production(session, model_id)
    if prod_dict is None:
        if not registry.model_known(session, model_id):
            raise NotFound(f"model {model_id} not found")
        raise NotFound(f"{model_id} has no production version")
    prod = session.scalar(select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.version == prod_dict["version"]))
    assert prod is not None
    regimes: dict[str, Any] = {}
    champions = session.scalars(select(RegimeChampion).where(
        RegimeChampion.model_id == model_id).order_by(RegimeChampion.regime)).all()
    for champ in champions:
        row = session.scalar(select(ModelVersion).where(
            ModelVersion.model_id == model_id, ModelVersion.version == champ.version))
        if row is None:
            continue
        regimes[champ.regime] = {"version": row.version, "status": str(row.status.value),
                                 "artifact": _artifact(row)}
    answer: dict[str, Any] = {
        "model_id": model_id, "version": prod.version, "status": "production",
        "regime": prod.regime, "artifact": _artifact(prod),
        "allocation": weights_for_serving(session, model_id, prod.version),
        "current_regime": None,
        "regimes": regimes,
    }
    if regimes and settings is not None:
        label = current_regime(session, settings, model_id)
        answer["current_regime"] = label
        champ = regimes.get(label or "")
        if champ is not None and champ["artifact"] is not None:
            answer.update(version=champ["version"], status=champ["status"], regime=label,
                          artifact=dict(champ["artifact"]),
                          allocation={champ["version"]: 1.0})
    canon = json.dumps(answer, sort_keys=True, separators=(",", ":"))
    return answer, hashlib.sha256(canon.encode("utf-8")).hexdigest()[:32]


def artifact_bytes(session: Session, settings: Settings, model_id: str, version: str
                   ) -> tuple[bytes, dict[str, Any]]:
    """(bytes, {"sha256", "format", "uri"}) of a version's artifact, verified. NotFound for
    an unknown version, one without an artifact or whose file is missing; a corrupt file
    raises ArtifactCorrupt (a server fault, never served)."""
    registry.get_version(session, model_id, version)
    row = session.scalar(select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.version == version))
    if row is None or not row.artifact_uri:
        raise NotFound(f"{model_id} {version} has no artifact")
    store = ArtifactStore.from_settings(settings)
    try:
        data = store.get_bytes(row.artifact_uri, row.artifact_sha256)
    except ArtifactNotFound:
        raise NotFound(f"the artifact of {model_id} {version} is missing from the "
                       "store") from None
    return data, {"sha256": row.artifact_sha256, "format": row.artifact_format,
                  "uri": row.artifact_uri}
