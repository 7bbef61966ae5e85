"""Guarded deployment on live records: the shadow exit rule and the auto-rollback guard.

Owns
- `shadow_exits`: a `shadow` version whose live record (app.services.live_scores) has at
  least CLM_SHADOW_MIN_TRADES trades over CLM_SHADOW_MIN_DAYS days of bars becomes
  `candidate` when its live metrics pass the promotion gate (its trade minimum replaced by
  CLM_SHADOW_MIN_TRADES) and the paired test against
  production on the same bars (app.analysis.challenger) does not find it worse; it becomes
  `failed` once it has CLM_SHADOW_PATIENCE × the trade count and still cannot (or the
  test finds it worse). Audited (actor `clm`, action `version.shadow_exited`, with the
  figures), announced as `model.shadow_exited`;
- `guard_production`: when the production version's last CLM_AUTO_ROLLBACK_WINDOW_BARS
  live bars hold at least CLM_PERFORMANCE_MIN_TRADES trades and their Sharpe is below
  CLM_AUTO_ROLLBACK_SHARPE_FLOOR or their drawdown above CLM_AUTO_ROLLBACK_MAX_DRAWDOWN,
  roll back to the previous production version (app.services.registry.rollback: audited,
  `model.rolled_back`) — only if that version's live record on the same bars is not
  breached itself; else production stays, `model.degraded` is announced and the caller
  (app.flows.deployment) requests a retrain. Hysteresis: no second automatic action on a
  model within CLM_AUTO_ROLLBACK_COOLDOWN_HOURS, and a version left in production after
  a breach is latched (no new action on it) until its Sharpe re-arms above
  CLM_AUTO_ROLLBACK_REARM_SHARPE or production changes;
- `shadow_progress_rows` (Prometheus).

Times are bar times (a record's first and last scored bar) and the flow's `now`, so a
replay over history decides as live would. Every verdict records its figures.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.analysis.challenger import paired_sharpe_test
from app.analysis.overfitting import minimum_track_record_length
from app.bus.outbox import emit
from app.core.config import Settings
from app.core.domain import ModelStatus
from app.core.errors import Conflict
from app.core.numbers import finite_or_none
from app.core.timeutil import ensure_utc, isoformat
from app.ml.evaluation import apply_gate
from app.models.live import LiveScore
from app.models.registry import ModelVersion
from app.services import allocation, registry
from app.services.live_scores import live_bars
from app.services.registry.history import previous_production
from app.services.registry.rows import write_audit

__all__ = ["ACTOR", "guard_production", "paired_live_test", "shadow_exits",
           "shadow_progress_rows", "window_figures"]

ACTOR = "clm"
_SECONDS_PER_YEAR = 365 * 86400


def _ppy(session: Session, model_id: str, version: str) -> float:
    rec = session.scalar(select(LiveScore).where(LiveScore.model_id == model_id,
                                                 LiveScore.version == version))
    ppy = (rec.setup or {}).get("periods_per_year") if rec is not None else None
    return float(ppy) if ppy else 8760.0


def window_figures(frame: pd.DataFrame, periods_per_year: float) -> dict[str, Any]:
    """Sharpe (annualised, DESIGN.md's rule), drawdown within the window, trades started
    in it and bars, of a `live_bars` frame."""
    rets = frame["ret"].dropna().to_numpy(dtype=np.float64)
    sharpe = 0.0
    if rets.size >= 2:
        sd = float(rets.std(ddof=1))
        if sd > max(1e-12, 1e-9 * abs(float(rets.mean()))):
            sharpe = float(rets.mean() / sd * math.sqrt(periods_per_year))
    equity = frame["equity"].to_numpy(dtype=np.float64)
    drawdown = 0.0
    if equity.size:
        peak = np.maximum.accumulate(equity)
        drawdown = float(max(0.0, np.max(1.0 - equity / peak)))
    pos = frame["position"].to_numpy(dtype=np.float64)
    prev = np.concatenate([[0.0], pos[:-1]])
    trades = int(np.sum((pos != 0.0) & (pos != prev)))
    return {"sharpe": sharpe, "max_drawdown": drawdown, "trades": trades,
            "bars": len(frame),
            "since": isoformat(frame.index[0].to_pydatetime()) if len(frame) else None,
            "until": isoformat(frame.index[-1].to_pydatetime()) if len(frame) else None}


def paired_live_test(session: Session, settings: Settings, model_id: str, challenger: str,
                     champion: str, *, last: int | None = None) -> dict[str, Any]:
    """The paired Sharpe test of two live records on the bars both scored (the last
    `last` of them); its dict (verdict, interval, psr, bars...)."""
    a = live_bars(session, model_id, challenger)["ret"]
    b = live_bars(session, model_id, champion)["ret"]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    if last is not None:
        both = both.iloc[-last:]
    test = paired_sharpe_test(both["a"].to_numpy(), both["b"].to_numpy(),
                              periods_per_year=_ppy(session, model_id, challenger),
                              confidence=settings.challenger_confidence,
                              margin=settings.champion_sharpe_margin,
                              reps=settings.challenger_bootstrap_reps)
    return {**test.to_dict(), "challenger": challenger, "champion": champion}


# -- shadow exit ---------------------------------------------------------------------------
def _days(rec: LiveScore) -> float:
    if rec.since is None or rec.last_bar is None:
        return 0.0
    return (ensure_utc(rec.last_bar) - ensure_utc(rec.since)).total_seconds() / 86400.0


def _progress(rec: LiveScore, settings: Settings) -> dict[str, Any]:
    """Trades and days against the shadow exit rule, and minTRL of its Sharpe vs 0."""
    book = (rec.state or {}).get("book") or {}
    n = int(book.get("r_count") or 0)
    sr = 0.0
    if n >= 2 and book.get("r_m2"):
        sd = math.sqrt(float(book["r_m2"]) / (n - 1))
        sr = float(book.get("r_mean", 0.0)) / sd if sd > 0 else 0.0
    min_trl = minimum_track_record_length(sr, 0.0, settings.challenger_confidence)
    return {"trades": int(rec.trades), "min_trades": settings.shadow_min_trades,
            "days": round(_days(rec), 3), "min_days": settings.shadow_min_days,
            "bars": int(rec.bars),
            "min_track_record_bars": None if math.isinf(min_trl) else math.ceil(min_trl),
            "progress": min(1.0, rec.trades / settings.shadow_min_trades)}


def _shadow_verdict(session: Session, settings: Settings, row: ModelVersion, rec: LiveScore
                    ) -> dict[str, Any]:
    progress = _progress(rec, settings)
    enough = (rec.trades >= settings.shadow_min_trades
              and _days(rec) >= settings.shadow_min_days)
    out: dict[str, Any] = {"model_id": row.model_id, "version": row.version,
                           "progress": progress, "action": "waiting"}
    if not enough:
        return out
    metrics = dict(rec.metrics or {})
    # the shadow rule owns the trade count: CLM_SHADOW_MIN_TRADES replaces the gate's
    # trade minimum (the other criteria are the gate's, on live bars)
    thresholds = {**settings.gate_for(str(row.model_type)),
                  "min_trades": float(settings.shadow_min_trades)}
    gate = apply_gate(metrics, thresholds)
    out["gate"] = {"passed": gate.passed, "failed_criteria": gate.failed_criteria,
                   "metrics": {k: metrics.get(k) for k in ("sharpe", "win_rate",
                                                           "profit_factor", "max_drawdown",
                                                           "trades")}}
    production = registry.get_production(session, row.model_id)
    test = None
    if production is not None:
        test = paired_live_test(session, settings, row.model_id, row.version,
                                production["version"])
        out["challenger"] = test
    worse = test is not None and test["verdict"] == "worse"
    if gate.passed and not worse:
        out["action"] = "candidate"
    elif worse or rec.trades >= settings.shadow_patience * settings.shadow_min_trades:
        out["action"] = "failed"
    return out


def _reason(verdict: dict[str, Any]) -> str:
    p, gate = verdict["progress"], verdict.get("gate") or {}
    m = gate.get("metrics") or {}
    sharpe = finite_or_none(m.get("sharpe"))
    parts = [f"live record: {p['trades']} trades over {p['days']:.1f} days "
             f"({p['bars']} bars), Sharpe {sharpe if sharpe is None else round(sharpe, 3)}"]
    if gate.get("passed"):
        parts.append("passes the gate")
    else:
        parts.append("fails the gate: " + ", ".join(
            f"{c['name']} {c['value']} (needs {c['op']} {c['threshold']})"
            for c in gate.get("failed_criteria") or []))
    test = verdict.get("challenger")
    if test is not None:
        interval = test.get("interval")
        shown = (f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "none")
        psr = test.get("psr")
        parts.append(f"vs production {test['champion']}: {test['verdict']} "
                     f"(interval {shown} at {test['confidence']:.0%}, PSR "
                     f"{'n/a' if psr is None else f'{psr:.3f}'}, {test['bars']} bars)")
    return "shadow exit -> " + verdict["action"] + ": " + "; ".join(parts)


def shadow_exits(session: Session, settings: Settings, *, now: datetime
                 ) -> list[dict[str, Any]]:
    """Apply the shadow exit rule to every shadow version with a live record; returns each
    one's verdict (action waiting | candidate | failed, with its figures)."""
    rows = session.execute(
        select(ModelVersion, LiveScore).join(
            LiveScore, (LiveScore.model_id == ModelVersion.model_id)
            & (LiveScore.version == ModelVersion.version))
        .where(ModelVersion.status == ModelStatus.SHADOW, LiveScore.bars > 0)
        .order_by(ModelVersion.id)).all()
    verdicts = []
    for row, rec in rows:
        verdict = _shadow_verdict(session, settings, row, rec)
        verdicts.append(verdict)
        if verdict["action"] == "waiting":
            continue
        reason = _reason(verdict)
        registry.set_status(session, row.model_id, row.version, verdict["action"],
                            actor=ACTOR, reason=reason[:2000])
        figures = {k: verdict.get(k) for k in ("progress", "gate", "challenger")}
        write_audit(session, actor=ACTOR, action="version.shadow_exited",
                    model_id=row.model_id, version=row.version, reason=reason[:2000],
                    at=now, details={"status": verdict["action"], **figures})
        emit(session, "model.shadow_exited", {
            "model_id": row.model_id, "version": row.version, "status": verdict["action"],
            "actor": ACTOR, "reason": reason, **figures})
    session.flush()
    return verdicts


def shadow_progress_rows(session: Session, settings: Settings
                         ) -> list[tuple[str, str, int, float, float]]:
    """(model_id, version, trades, days, progress 0-1) of every shadow version."""
    rows = session.execute(
        select(ModelVersion.model_id, ModelVersion.version, LiveScore).join(
            LiveScore, (LiveScore.model_id == ModelVersion.model_id)
            & (LiveScore.version == ModelVersion.version), isouter=True)
        .where(ModelVersion.status == ModelStatus.SHADOW).order_by(ModelVersion.id)).all()
    out = []
    for model_id, version, rec in rows:
        trades = int(rec.trades) if rec is not None else 0
        days = _days(rec) if rec is not None else 0.0
        out.append((model_id, version, trades, days,
                    min(1.0, trades / settings.shadow_min_trades)))
    return out


# -- auto-rollback -------------------------------------------------------------------------
def _breached(fig: dict[str, Any], settings: Settings) -> list[str]:
    why = []
    if fig["sharpe"] < settings.auto_rollback_sharpe_floor:
        why.append(f"Sharpe {fig['sharpe']:.3f} < floor {settings.auto_rollback_sharpe_floor:g}")
    if fig["max_drawdown"] > settings.auto_rollback_max_drawdown:
        why.append(f"drawdown {fig['max_drawdown']:.3f} > limit "
                   f"{settings.auto_rollback_max_drawdown:g}")
    return why


def guard_production(session: Session, settings: Settings, model_id: str, *, now: datetime
                     ) -> dict[str, Any]:
    """Judge `model_id`'s production version on its live window and act (see the module
    docstring). Returns {"action": off | no_production | insufficient | healthy |
    cooldown | latched | rolled_back | degraded, "figures", "retrain": bool, ...}."""
    out: dict[str, Any] = {"model_id": model_id, "action": "off", "retrain": False}
    if not settings.auto_rollback:
        return out
    prod = registry.get_production(session, model_id)
    if prod is None:
        return {**out, "action": "no_production"}
    version = prod["version"]
    ppy = _ppy(session, model_id, version)
    window = live_bars(session, model_id, version, last=settings.auto_rollback_window_bars)
    fig = window_figures(window, ppy)
    out.update(version=version, figures=fig)
    state = allocation.guard_state(session, model_id)
    if state.get("latched") and state["latched"] != version:
        state.pop("latched")  # production changed: the latch is for the old version
        allocation.save_guard_state(session, model_id, state)
    if fig["trades"] < settings.performance_min_trades:
        return {**out, "action": "insufficient"}
    why = _breached(fig, settings)
    if not why:
        if state.get("latched") == version and fig["sharpe"] >= settings.auto_rollback_rearm_sharpe:
            state.pop("latched")  # re-armed: the next breach acts again
            allocation.save_guard_state(session, model_id, state)
        return {**out, "action": "healthy"}
    last = state.get("last_action_at")
    if last and now - ensure_utc(datetime.fromisoformat(last)) < timedelta(
            hours=settings.auto_rollback_cooldown_hours):
        return {**out, "action": "cooldown", "last_action_at": last}
    if state.get("latched") == version:
        return {**out, "action": "latched"}
    shown = (f"production {version} live window {fig['since']} .. {fig['until']}: "
             f"{'; '.join(why)} over {fig['trades']} trades ({fig['bars']} bars)")
    target = previous_production(session, model_id, version)
    target_fig = None
    test = None
    if target is not None:
        tw = live_bars(session, model_id, target)
        tw = tw.loc[tw.index.isin(window.index)]
        if len(tw) >= 0.9 * len(window):  # the same bars, or it cannot be judged
            target_fig = window_figures(tw, ppy)
            test = paired_live_test(session, settings, model_id, target, version,
                                    last=settings.auto_rollback_window_bars)
    out.update(target=target, target_figures=target_fig, challenger=test)
    holds = target_fig is not None and not _breached(target_fig, settings)
    details = {"figures": fig, "target": target, "target_figures": target_fig,
               "challenger": test, "floor": settings.auto_rollback_sharpe_floor,
               "max_drawdown_limit": settings.auto_rollback_max_drawdown}
    state["last_action_at"] = isoformat(now)
    if holds:
        reason = (f"auto-rollback: {shown}; previous production {target} on the same bars: "
                  f"Sharpe {target_fig['sharpe']:.3f}, drawdown "  # type: ignore[index]
                  f"{target_fig['max_drawdown']:.3f}")  # type: ignore[index]
        try:
            result = registry.rollback(session, model_id, actor=ACTOR, reason=reason[:2000])
        except Conflict as exc:
            holds, details["rollback_error"] = False, exc.detail
        else:
            state.pop("latched", None)
            allocation.save_guard_state(session, model_id, state)
            # registry.rollback audited it (version.rolled_back, actor clm, this reason)
            # and announced model.rolled_back
            return {**out, "action": "rolled_back", "reason": reason,
                    "production": result["production"]["version"]}
    if target is None:
        about = "no previous production version"
    elif target_fig is None:
        about = f"previous production {target} has no live record on these bars"
    else:
        about = (f"previous production {target} is degraded too: "
                 + "; ".join(_breached(target_fig, settings)))
    reason = f"degraded, production kept: {shown}; {about}; retraining requested"
    state["latched"] = version
    allocation.save_guard_state(session, model_id, state)
    write_audit(session, actor=ACTOR, action="version.degraded", model_id=model_id,
                version=version, reason=reason[:2000], at=now, details=details)
    emit(session, "model.degraded", {"model_id": model_id, "version": version,
                                     "actor": ACTOR, "reason": reason, **details})
    return {**out, "action": "degraded", "reason": reason, "retrain": True}
