"""The drift check of one production model: recent bars against its training reference.

Owns `run_drift_check`, the service the periodic drift check (app.flows.checks) runs per
model: recent feature rows and predictions from the market data store are compared with
the production version's reference (app.analysis.drift: PSI beyond sampling noise, KS),
a `DriftReport` row is written, and when it drifted a pending `drift_detected` decision
is recorded (app.services.triggers.record_request; the flow arbitrates it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.analysis.drift import compare_to_reference
from app.core.config import Settings
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from app.models.continuous import DriftReport
from app.services.production import production_context, recent_window
from app.services.triggers import record_request, slot_key

__all__ = ["DEFAULT_WINDOW_BARS", "run_drift_check"]

# Recent bars compared per check (after the training window), e.g. 30 days of 1h bars.
DEFAULT_WINDOW_BARS = 720


def run_drift_check(
    session: Session,
    settings: Settings,
    *,
    model_id: str,
    now: datetime,
    store: MarketDataStore | None = None,
    artifacts: ArtifactStore | None = None,
    thresholds: Mapping[str, Any] | None = None,
    window_bars: int = DEFAULT_WINDOW_BARS,
) -> dict[str, Any] | None:
    """Drift check of `model_id`'s production version: writes a DriftReport and, when it
    drifted, records a pending `drift_detected` decision (the caller arbitrates it).

    Returns the report as a dict, or None when the model has no production version.
    `thresholds` (per tracked model) may override psi_threshold / feature_share.
    """
    ctx = production_context(session, settings, model_id, artifacts=artifacts)
    if ctx is None:
        return None
    if not ctx.lineage.get("drift_reference") and (ctx.train_start is None
                                                   or ctx.train_end is None):
        # Nothing to compare with (an externally registered version): no report.
        return {"model_id": model_id, "version": ctx.version, "status": "skipped",
                "reason": "no drift reference and no training window in the lineage"}
    overrides = dict(thresholds or {})
    psi_thr = float(overrides.get("drift_psi_threshold") or settings.drift_psi_threshold)
    share_thr = float(overrides.get("drift_feature_share") or settings.drift_feature_share)
    report = DriftReport(
        model_id=model_id, version=ctx.version, checked_at=now, drifted=False,
        psi_threshold=psi_thr, feature_share_threshold=share_thr,
        ks_threshold=settings.drift_ks_threshold, features={}, rows=0,
    )
    try:
        reference = ctx.drift_reference(store)
        window = recent_window(ctx, settings, store=store, window_bars=window_bars,
                               predict=ctx.artifact_uri is not None)
        result = compare_to_reference(
            reference, window.features, window.predictions, psi_threshold=psi_thr,
            feature_share=share_thr, ks_threshold=settings.drift_ks_threshold,
        )
    except (LookupError, ValueError, OSError) as exc:
        # No data yet, no reference, unreadable artifact: recorded, nothing decided.
        report.status = "error"
        report.error = f"{type(exc).__name__}: {exc}"
        session.add(report)
        session.flush()
        return report.to_dict()
    report.status = "ok" if result.sufficient else "insufficient_data"
    report.drifted = result.drifted
    report.rows = result.rows
    report.window_start = window.start
    report.window_end = window.end
    report.features_total = result.features_total
    report.features_drifted = result.features_drifted
    report.share_drifted = result.share_drifted
    report.prediction_psi = result.prediction.psi if result.prediction else None
    report.prediction_ks = result.prediction.ks if result.prediction else None
    report.features = {"features": [asdict(f) for f in result.features],
                       "reasons": result.reasons, "reference_source": ctx.reference_source}
    session.add(report)
    session.flush()
    if result.drifted and window.end is not None:
        decision = record_request(
            session, settings, model_id=model_id, reason="drift_detected",
            dedupe_key=f"drift:{ctx.version}:"
                       f"{slot_key(window.end, settings.trigger_cooldown_hours)}",
            source="drift_check",
            details={"drift_report_id": report.id, "reasons": result.reasons,
                     "share_drifted": result.share_drifted,
                     "prediction_psi": report.prediction_psi},
            now=now, requested_by="clm-drift-check",
        )
        report.decision_id = decision.id
        session.flush()
    return report.to_dict()
