"""Performance of production models: paper trading on new bars, live reports, the guard.

Owns `run_paper_check` (the production version run forward through the backtest → a
paper `PerformanceReport`), the live report steps (`LiveReport`, the body of POST
/clm/performance and of `performance.reported` events; `record_live_report` stores and
judges one; `apply_rollback_guard` finishes it) and `list_reports`. The flows
(app.flows.checks, app.flows.live) run these and then do what a degraded model causes
elsewhere: arbitration, strategy variants.

Degraded: rolling Sharpe below `degraded_sharpe` (0.5) over at least
`performance_min_trades` trades records a pending `performance_degraded` decision
(app.services.triggers). Guard (CLM_AUTO_ROLLBACK, off by default): when *live* rolling
Sharpe of the production version falls below CLM_AUTO_ROLLBACK_SHARPE_FLOOR over the
minimum number of trades, the previous production version is put back
(`app.services.registry.rollback`, audited with the reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelStatus, timeframe_seconds
from app.core.errors import Conflict, NotFound
from app.core.numbers import finite_or_none
from app.core.timeutil import isoformat
from app.ml.artifacts import ArtifactStore
from app.ml.backtest import run_backtest
from app.ml.data.store import MarketDataStore
from app.ml.evaluation import probabilities_to_positions
from app.models.continuous import PerformanceReport
from app.services import registry
from app.services.instruments import market_terms
from app.services.production import production_context, recent_window
from app.services.triggers import parse_model_id, record_request, slot_key, tracked_overrides

__all__ = [
    "LIVE_WINDOW_DAYS",
    "PAPER_WINDOW_BARS",
    "LiveJudgement",
    "LiveReport",
    "apply_rollback_guard",
    "list_reports",
    "record_live_report",
    "run_paper_check",
]

# Live reports of the last N days form the rolling window that is judged.
LIVE_WINDOW_DAYS = 30
# Bars of paper trading judged per check (the latest ones after training).
PAPER_WINDOW_BARS = 720
_SECONDS_PER_YEAR = 365 * 86400


def _bars_per_year(timeframe: str) -> float:
    return _SECONDS_PER_YEAR / timeframe_seconds(timeframe)


def _limits(session: Session, settings: Settings, model_id: str) -> tuple[float, int]:
    over = tracked_overrides(session, model_id)
    return (float(over.get("degraded_sharpe", settings.degraded_sharpe)),
            int(over.get("min_trades", settings.performance_min_trades)))


# -- paper ------------------------------------------------------------------------------
def run_paper_check(
    session: Session,
    settings: Settings,
    *,
    model_id: str,
    now: datetime,
    store: MarketDataStore | None = None,
    artifacts: ArtifactStore | None = None,
    window_bars: int = PAPER_WINDOW_BARS,
) -> dict[str, Any] | None:
    """Run the production version forward on bars after its training (predict →
    positions with its thresholds → backtest with fees) and judge the result.

    Writes a paper PerformanceReport; records a pending `performance_degraded` decision
    when its Sharpe is below the degraded level over enough trades (the report's
    `decision_id`; the caller arbitrates it and proposes strategy variants). None without
    production.
    """
    ctx = production_context(session, settings, model_id, artifacts=artifacts)
    if ctx is None:
        return None
    if ctx.checkable is not None:
        return {"model_id": model_id, "version": ctx.version, "status": "skipped",
                "reason": ctx.checkable}
    degraded_sharpe, min_trades = _limits(session, settings, model_id)
    window = recent_window(ctx, settings, store=store, window_bars=window_bars)
    report = PerformanceReport(model_id=model_id, version=ctx.version, source="paper",
                               reported_at=now, reported_by="clm-paper-check")
    if window.predictions is None or len(window.features) < 2:
        report.metrics = {"status": "insufficient_data", "bars": len(window.features)}
        report.rolling = {"bars": len(window.features), "degraded": False,
                          "min_trades": min_trades}
        session.add(report)
        session.flush()
        return report.to_dict()
    long_t, short_t = ctx.thresholds
    positions = probabilities_to_positions(window.predictions, long_t, short_t)
    _model_type, symbol, timeframe = parse_model_id(model_id)
    terms = market_terms(session, settings, symbol, timeframe)
    result = run_backtest(
        window.frame["close"].to_numpy(), positions, fee_bps=terms.fee_bps,
        slippage_bps=terms.slippage_bps, periods_per_year=terms.periods_per_year,
        timestamps=window.frame.index,
    )
    metrics = {**result.metrics, "market": terms.to_dict()}
    sharpe = finite_or_none(metrics.get("sharpe"))
    trades = int(metrics.get("trades") or 0)
    degraded = trades >= min_trades and sharpe is not None and sharpe < degraded_sharpe
    report.period_start, report.period_end = window.start, window.end
    report.trades, report.sharpe = trades, sharpe
    report.total_return = finite_or_none(metrics.get("total_return"))
    report.metrics = {**metrics, "bars": len(window.features)}
    report.rolling = {"sharpe": sharpe, "trades": trades, "bars": len(window.features),
                      "degraded": degraded, "degraded_sharpe": degraded_sharpe,
                      "min_trades": min_trades}
    report.degraded = degraded
    session.add(report)
    session.flush()
    if degraded and window.end is not None:
        decision = record_request(
            session, settings, model_id=model_id, reason="performance_degraded",
            dedupe_key=f"paper:{ctx.version}:"
                       f"{slot_key(window.end, settings.trigger_cooldown_hours)}",
            source="performance_check", now=now, requested_by="clm-paper-check",
            details={"performance_report_id": report.id, "source": "paper",
                     "sharpe": sharpe, "trades": trades, "degraded_sharpe": degraded_sharpe},
        )
        report.decision_id = decision.id
        session.flush()
    return report.to_dict()


# -- live -------------------------------------------------------------------------------
_MAX_POINTS = 100_000


class LiveReport(BaseModel):
    """Realized results of a model version, reported from outside (POST
    /clm/performance body, `performance.reported` event payload).

    Give per-period `returns` (the Sharpe is computed from them), `trade_returns` (one
    per closed trade), or at least a `sharpe` with `trades`.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    model_id: str = Field(min_length=1, max_length=120)
    version: str | None = Field(None, min_length=1, max_length=64,
                                description="default: the current production version")
    returns: list[float] | None = Field(None, max_length=_MAX_POINTS,
                                        description="realized per-period returns")
    trade_returns: list[float] | None = Field(None, max_length=_MAX_POINTS,
                                              description="return of each closed trade")
    trades: int | None = Field(None, ge=0, description="number of trades in the period")
    sharpe: float | None = Field(None, description="annualized Sharpe, when computed outside")
    periods_per_year: float | None = Field(
        None, gt=0, description="default: the instrument's calendar, else from timeframe")
    period_start: datetime | None = None
    period_end: datetime | None = None

    @field_validator("returns", "trade_returns")
    @classmethod
    def _finite(cls, values: list[float] | None) -> list[float] | None:
        if values is not None:
            for i, v in enumerate(values):
                if not math.isfinite(v) or v <= -1.0:
                    raise ValueError(f"item {i} must be a finite return > -1, got {v!r}")
        return values

    @field_validator("sharpe")
    @classmethod
    def _finite_sharpe(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("period_start", "period_end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a timezone (e.g. 2025-01-01T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _something(self) -> LiveReport:
        if not self.returns and not self.trade_returns and self.sharpe is None:
            raise ValueError("give returns, trade_returns or sharpe")
        if (self.period_start and self.period_end and self.period_end < self.period_start):
            raise ValueError("period_end must not be before period_start")
        return self


def _sharpe(returns: np.ndarray, periods_per_year: float) -> float | None:
    if returns.size < 2:
        return None
    std = float(returns.std(ddof=1))
    if std == 0 or not math.isfinite(std):
        return None
    return float(returns.mean() / std * math.sqrt(periods_per_year))


def _report_metrics(body: LiveReport, ppy: float) -> dict[str, Any]:
    rets = np.asarray(body.returns or [], dtype=np.float64)
    trade_rets = np.asarray(body.trade_returns or [], dtype=np.float64)
    trades = body.trades if body.trades is not None else int(trade_rets.size)
    sharpe = body.sharpe if body.sharpe is not None else _sharpe(rets, ppy)
    out: dict[str, Any] = {"sharpe": sharpe, "trades": trades, "periods": int(rets.size),
                           "periods_per_year": ppy}
    if rets.size:
        out["total_return"] = float(np.prod(1.0 + rets) - 1.0)
    elif trade_rets.size:
        out["total_return"] = float(np.prod(1.0 + trade_rets) - 1.0)
    if trade_rets.size:
        out["win_rate"] = float(np.mean(trade_rets > 0))
    return out


def _rolling_live(session: Session, model_id: str, version: str, now: datetime,
                  ppy: float) -> dict[str, Any]:
    """Rolling judgement over the version's live reports of the last LIVE_WINDOW_DAYS:
    Sharpe of all reported per-period returns together (else the trade-weighted mean of
    reported Sharpes) and the total number of trades."""
    since = now - timedelta(days=LIVE_WINDOW_DAYS)
    rows = list(session.scalars(
        select(PerformanceReport).where(
            PerformanceReport.model_id == model_id, PerformanceReport.version == version,
            PerformanceReport.source == "live", PerformanceReport.reported_at >= since,
        ).order_by(PerformanceReport.id)
    ))
    returns: list[float] = []
    weighted: list[tuple[float, int]] = []
    trades = 0
    for r in rows:
        trades += int(r.trades or 0)
        raw = (r.returns or {}).get("returns") or []
        if raw:
            returns.extend(float(x) for x in raw)
        elif r.sharpe is not None:
            weighted.append((float(r.sharpe), max(int(r.trades or 0), 1)))
    sharpe = _sharpe(np.asarray(returns, dtype=np.float64), ppy) if returns else None
    if sharpe is None and weighted:
        total = sum(w for _, w in weighted)
        sharpe = sum(s * w for s, w in weighted) / total
    return {"reports": len(rows), "since": isoformat(since), "periods": len(returns),
            "trades": trades, "sharpe": sharpe}


@dataclass
class LiveJudgement:
    """A stored live report and its rolling judgement, before the guard ran
    (`record_live_report` → variants, when degraded → `apply_rollback_guard`)."""

    report: PerformanceReport
    rolling: dict[str, Any]
    degraded: bool
    breach: bool
    decision: dict[str, Any] | None = None


def record_live_report(
    session: Session,
    settings: Settings,
    body: LiveReport,
    *,
    now: datetime,
    reported_by: str | None,
    event_id: str | None = None,
) -> LiveJudgement:
    """Store a live report, judge the rolling window and record a pending
    `performance_degraded` decision when degraded. The report is finished by
    `apply_rollback_guard` (app.flows.live runs both, proposing strategy variants for a
    degraded model in between, as it always happened before the guard).

    Raises NotFound for an unknown model/version and Conflict when no version is named
    and none is in production.
    """
    _model_type, _symbol, timeframe = parse_model_id(body.model_id)
    if body.version is None:
        prod = registry.get_production(session, body.model_id)
        if prod is None:
            if not registry.model_known(session, body.model_id):
                raise NotFound(f"model {body.model_id} not found")
            raise Conflict(f"{body.model_id} has no production version; name the version",
                           model_id=body.model_id)
        version, status = prod["version"], ModelStatus.PRODUCTION.value
    else:
        found = registry.get_version(session, body.model_id, body.version)
        version, status = found["version"], found["status"]
    terms = market_terms(session, settings, _symbol, timeframe)
    ppy = float(body.periods_per_year or terms.periods_per_year or _bars_per_year(timeframe))
    metrics = _report_metrics(body, ppy)
    report = PerformanceReport(
        model_id=body.model_id, version=version, source="live", reported_at=now,
        period_start=body.period_start, period_end=body.period_end,
        trades=int(metrics["trades"]), sharpe=finite_or_none(metrics["sharpe"]),
        total_return=finite_or_none(metrics.get("total_return")), metrics=metrics,
        returns={"returns": list(body.returns or []),
                 "trade_returns": list(body.trade_returns or [])},
        event_id=event_id, reported_by=reported_by,
    )
    session.add(report)
    session.flush()
    degraded_sharpe, min_trades = _limits(session, settings, body.model_id)
    rolling = _rolling_live(session, body.model_id, version, now, ppy)
    is_production = status == ModelStatus.PRODUCTION.value
    enough = rolling["trades"] >= min_trades and rolling["sharpe"] is not None
    degraded = bool(is_production and enough and rolling["sharpe"] < degraded_sharpe)
    floor = settings.auto_rollback_sharpe_floor
    breach = bool(is_production and enough and rolling["sharpe"] < floor)
    rolling.update({"degraded": degraded, "degraded_sharpe": degraded_sharpe,
                    "min_trades": min_trades, "production": is_production,
                    "guard": {"enabled": settings.auto_rollback, "floor": floor,
                              "breached": breach}})
    judged = LiveJudgement(report=report, rolling=rolling, degraded=degraded, breach=breach)
    if degraded:
        decision = record_request(
            session, settings, model_id=body.model_id, reason="performance_degraded",
            dedupe_key=f"live:{version}:{slot_key(now, settings.trigger_cooldown_hours)}",
            source="live_report", now=now, requested_by=reported_by,
            details={"performance_report_id": report.id, "source": "live",
                     "sharpe": rolling["sharpe"], "trades": rolling["trades"]},
        )
        report.decision_id = decision.id
        judged.decision = decision.to_dict()
    return judged


def apply_rollback_guard(session: Session, settings: Settings, judged: LiveJudgement
                         ) -> dict[str, Any]:
    """Finish a judged live report: when the guard is enabled and breached, roll the model
    back to its previous production version (audited); store the rolling judgement.

    Returns {"report", "rolling", "decision", "rollback"} (the POST /clm/performance body).
    """
    report, rolling = judged.report, judged.rolling
    floor = settings.auto_rollback_sharpe_floor
    out: dict[str, Any] = {"report": None, "rolling": rolling, "decision": judged.decision,
                           "rollback": None}
    if judged.breach and settings.auto_rollback:
        reason = (f"auto-rollback guard: live rolling Sharpe {rolling['sharpe']:.3f} is below "
                  f"the floor {floor:g} over {rolling['trades']} trades "
                  f"(performance report {report.id})")
        try:
            result = registry.rollback(session, report.model_id,
                                       actor="clm-performance-guard", reason=reason)
            out["rollback"] = {"rolled_back": True, "reason": reason,
                               "production": result["production"]["version"],
                               "retired": (result.get("retired") or {}).get("version")}
        except Conflict as exc:
            out["rollback"] = {"rolled_back": False, "reason": reason, "error": exc.detail}
        rolling["guard"]["rollback"] = out["rollback"]
    report.degraded = judged.degraded
    report.rolling = rolling
    session.flush()
    out["report"] = report.to_dict()
    return out


def list_reports(session: Session, *, model_id: str | None = None, version: str | None = None,
                 source: str | None = None, before_id: int | None = None, limit: int = 50
                 ) -> list[PerformanceReport]:
    """Performance reports newest first (keyset `before_id`), `limit + 1` fetched."""
    stmt = select(PerformanceReport)
    if model_id:
        stmt = stmt.where(PerformanceReport.model_id == model_id)
    if version:
        stmt = stmt.where(PerformanceReport.version == version)
    if source:
        stmt = stmt.where(PerformanceReport.source == source)
    if before_id is not None:
        stmt = stmt.where(PerformanceReport.id < before_id)
    return list(session.scalars(stmt.order_by(PerformanceReport.id.desc()).limit(limit + 1)))
