"""Regimes in the database: the regime champions table and the regime check.

Owns `consider_regime_champion` (the `regime_champions` table's writer: the best version
per (model_id, regime)) and `run_regime_check` (the service the periodic check in
app.flows.checks runs per model: when the market is in a regime the production version
was not trained in and no champion covers it, a pending `regime_change` decision is
recorded for a training restricted to that regime; the flow arbitrates it). The labels
and summaries are app.analysis.regime.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.analysis.regime import classify_current
from app.core.config import Settings
from app.core.numbers import finite_or_none
from app.core.timeutil import utcnow
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from app.models.continuous import RegimeChampion
from app.services.production import production_context
from app.services.triggers import record_request, slot_key

__all__ = ["MIN_KNOWN_SHARE", "REGIME_SPAN_DAYS", "consider_regime_champion",
           "run_regime_check"]

# A regime below this share of a version's training bars is "not known" to it.
MIN_KNOWN_SHARE = 0.10
# Training window of a regime_change job (days, clamped to the stored history).
REGIME_SPAN_DAYS = 730


def consider_regime_champion(
    session: Session,
    *,
    model_id: str,
    regime: str | None,
    version: str,
    metrics: Mapping[str, Any] | None,
    passed: bool,
    job_id: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Make `version` the champion of (model_id, regime) when it passed the gate and beats
    the current champion's Sharpe (or there is none). Returns True when it became champion.

    The champion row is locked (SELECT ... FOR UPDATE on PostgreSQL) so two finishing jobs
    cannot both win; the unique (model_id, regime) key makes a racing insert fail instead
    of creating two champions.
    """
    if not regime or not passed:
        return False
    sharpe = finite_or_none((metrics or {}).get("sharpe"))
    current = session.execute(
        select(RegimeChampion)
        .where(RegimeChampion.model_id == model_id, RegimeChampion.regime == regime)
        .with_for_update()
    ).scalar_one_or_none()
    when = now or utcnow()
    if current is None:
        session.add(RegimeChampion(
            model_id=model_id, regime=regime, version=version, sharpe=sharpe,
            promotion_score=finite_or_none((metrics or {}).get("promotion_score")),
            metrics=dict(metrics or {}), job_id=job_id, set_at=when,
        ))
        session.flush()
        return True
    if current.version == version:
        return True
    if sharpe is None or (current.sharpe is not None and sharpe <= current.sharpe):
        return False
    current.previous_version = current.version
    current.version = version
    current.sharpe = sharpe
    current.promotion_score = finite_or_none((metrics or {}).get("promotion_score"))
    current.metrics = dict(metrics or {})
    current.job_id = job_id
    current.set_at = when
    session.flush()
    return True


# -- the check --------------------------------------------------------------------------
def run_regime_check(
    session: Session,
    settings: Settings,
    *,
    model_id: str,
    now: datetime,
    store: MarketDataStore | None = None,
    artifacts: ArtifactStore | None = None,
    history_bars: int = 2000,
) -> dict[str, Any] | None:
    """Compare the current regime with the regimes `model_id`'s production version was
    trained in; when the market is in a regime the version does not know (and no regime
    champion covers it), request a `regime_change` training restricted to that regime.

    Returns a summary dict, or None without a production version.
    """
    ctx = production_context(session, settings, model_id, artifacts=artifacts)
    if ctx is None:
        return None
    summary = ctx.training_regimes(store)
    if not summary and not ctx.regime:
        # Unknown training regimes (an externally registered version): nothing to compare.
        return {"model_id": model_id, "version": ctx.version, "changed": False,
                "status": "skipped", "decision_id": None,
                "reason": "the version's lineage says nothing about its training data"}
    frame = ctx.read_bars(store, last=history_bars)
    state = classify_current(frame, summary)
    known = dict(summary.get("shares") or {})
    if ctx.regime:
        # A regime-specific version knows its own regime only.
        covered = state.label == ctx.regime
    else:
        covered = known.get(state.label or "", 0.0) >= MIN_KNOWN_SHARE
    out: dict[str, Any] = {
        "model_id": model_id, "version": ctx.version, "current": state.to_dict(),
        "trained": {"regime": ctx.regime, "shares": known}, "changed": False,
        "decision_id": None,
    }
    if state.label is None or covered or state.share <= 0.5:
        return out
    champion = session.execute(
        select(RegimeChampion.version).where(RegimeChampion.model_id == model_id,
                                             RegimeChampion.regime == state.label)
    ).scalar_one_or_none()
    out["changed"] = True
    out["champion"] = champion
    if champion is not None:
        return out  # a specialist for this regime exists already
    slot = slot_key(frame.index[-1].to_pydatetime(), settings.trigger_cooldown_hours)
    # Bars of one regime are a fraction of any window: give the specialist a long history
    # (an automatic job's window is clamped to what the store holds).
    decision = record_request(
        session, settings, model_id=model_id, reason="regime_change",
        dataset_span_days=REGIME_SPAN_DAYS,
        dedupe_key=f"regime:{ctx.version}:{state.label}:{slot}", source="regime_check",
        regime=state.label,
        details={"current": state.to_dict(), "trained_shares": known,
                 "trained_regime": ctx.regime},
        now=now, requested_by="clm-regime-check",
    )
    out["decision_id"] = decision.id
    return out
