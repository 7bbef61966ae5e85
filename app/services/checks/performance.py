"""Performance of production models: paper trading on new bars, live reports, the guard.

Owns `production_context` (a production version with everything needed to run it
forward: artifact, feature windows, training window, thresholds), `recent_window` (its
features and predictions on bars that arrived after its training), `run_paper_check`
(the model run forward through the backtest → a paper `PerformanceReport`),
`record_live_report` (realized results reported from outside, by API or event) and the
optional auto-rollback guard.

Degraded: rolling Sharpe below `degraded_sharpe` (0.5) over at least
`performance_min_trades` trades starts a `performance_degraded` training (arbitrated by
app.services.triggers). Guard (CLM_AUTO_ROLLBACK, off by default): when *live* rolling Sharpe of
the production version falls below CLM_AUTO_ROLLBACK_SHARPE_FLOOR over the minimum number
of trades, the previous production version is put back (`app.services.registry.rollback`, audited
with the reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelStatus, timeframe_seconds
from app.core.errors import Conflict, NotFound
from app.core.timeutil import ensure_utc, isoformat
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from app.models.continuous import PerformanceReport, TrackedModel
from app.models.registry import ModelVersion

__all__ = [
    "LIVE_WINDOW_DAYS",
    "LiveReport",
    "ProductionContext",
    "production_context",
    "production_model_ids",
    "recent_window",
    "record_live_report",
    "run_paper_check",
]

# Live reports of the last N days form the rolling window that is judged.
LIVE_WINDOW_DAYS = 30
# Bars of paper trading judged per check (the latest ones after training).
PAPER_WINDOW_BARS = 720
_SECONDS_PER_YEAR = 365 * 86400


@dataclass
class MarketWindow:
    """Bars after a version's training: raw frame, complete feature rows, predictions."""

    frame: pd.DataFrame
    features: pd.DataFrame
    predictions: np.ndarray | None
    start: datetime | None
    end: datetime | None


@dataclass
class ProductionContext:
    """The production version of a model and how to run it."""

    settings: Settings
    model_id: str
    version: str
    model_type: str
    symbol: str
    timeframe: str
    regime: str | None
    params: dict[str, Any]
    lineage: dict[str, Any]
    artifact_uri: str | None
    artifact_sha256: str | None
    created_at: datetime
    artifacts: ArtifactStore
    reference_source: str | None = None
    _model: Any = field(default=None, repr=False)

    # -- facts from lineage ------------------------------------------------------------
    @property
    def windows(self) -> dict[str, Any] | None:
        return (self.lineage.get("features") or {}).get("windows")

    def _dataset_ts(self, key: str) -> datetime | None:
        value = (self.lineage.get("dataset") or {}).get(key)
        if not value:
            return None
        try:
            return ensure_utc(pd.Timestamp(value).to_pydatetime())
        except (TypeError, ValueError):
            return None

    @property
    def train_start(self) -> datetime | None:
        return self._dataset_ts("first_timestamp")

    @property
    def train_end(self) -> datetime | None:
        """Last bar of the training data (None for an externally registered version)."""
        return self._dataset_ts("last_timestamp")

    @property
    def thresholds(self) -> tuple[float, float]:
        """(long, short) probability thresholds the version was evaluated with."""
        ev = self.lineage.get("evaluation") or {}
        return (float(ev.get("long_threshold", self.settings.long_threshold)),
                float(ev.get("short_threshold", self.settings.short_threshold)))

    # -- data and model ----------------------------------------------------------------
    def market(self, store: MarketDataStore | None) -> MarketDataStore:
        return store or MarketDataStore(self.settings.data_dir)

    def read_bars(self, store: MarketDataStore | None, *, start: datetime | None = None,
                  end: datetime | None = None, last: int | None = None) -> pd.DataFrame:
        """Bars of the model's series (DataNotFound when none); `last` keeps the tail
        (read from the store's last bar backwards, not the whole history)."""
        market = self.market(store)
        if last and start is None:
            coverage = market.coverage(self.symbol, self.timeframe)
            if coverage is not None:
                step = timedelta(seconds=timeframe_seconds(self.timeframe))
                start = ensure_utc(pd.Timestamp(coverage.last).to_pydatetime()) - last * step
        frame = market.read(self.symbol, self.timeframe, start=start, end=end)
        return frame.iloc[-last:] if last else frame

    @property
    def checkable(self) -> str | None:
        """Why the checks cannot run this version (None: they can). An externally
        registered version has neither a model artifact nor a training window."""
        if not self.artifact_uri:
            return "the version has no model artifact (registered externally?)"
        if self.train_end is None and not self.lineage.get("drift_reference"):
            return "the version's lineage has no training window"
        return None

    def load_model(self) -> tuple[Any, Any]:
        """(trainer, model) from the version's artifact, verified by sha256."""
        from app.ml.trainers import get_trainer, load_model

        if not self.artifact_uri:
            raise LookupError(f"{self.model_id} {self.version} has no model artifact")
        trainer = get_trainer(self.model_type)
        if self._model is None:
            self._model = load_model(self.artifacts, trainer, self.artifact_uri,
                                     self.artifact_sha256)
        return trainer, self._model

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        trainer, model = self.load_model()
        if features.empty:
            return np.zeros(0)
        x = features.astype(np.float32)
        return np.asarray(trainer.predict_proba(model, x, n_threads=1), dtype=np.float64)

    def drift_reference(self, store: MarketDataStore | None) -> dict[str, Any]:
        """The reference stored at training (lineage "drift_reference"); for a version
        without one, rebuilt from its training window (features + in-sample predictions)."""
        from app.ml.features import build_features
        from app.services.checks.drift import build_reference, load_reference

        pointer = self.lineage.get("drift_reference")
        if pointer:
            self.reference_source = "lineage"
            return load_reference(self.artifacts, pointer)
        start, end = self.train_start, self.train_end
        if start is None or end is None:
            raise LookupError(f"{self.model_id} {self.version} has no drift reference and "
                              "no training window in its lineage to rebuild one from")
        frame = self.read_bars(store, start=start, end=end)
        feats = build_features(frame, self.windows).dropna()
        preds = None
        try:
            preds = self.predict(feats)
        except (LookupError, ValueError, OSError):
            preds = None
        self.reference_source = "rebuilt"
        return build_reference(feats, preds, windows=self.windows)

    def training_regimes(self, store: MarketDataStore | None) -> dict[str, Any]:
        """Regimes of the training data: lineage "training_regime", else recomputed."""
        from app.services.checks.regime import summarize_regimes

        stored = self.lineage.get("training_regime")
        if stored:
            return dict(stored)
        start, end = self.train_start, self.train_end
        if start is None or end is None:
            return {}
        return summarize_regimes(self.read_bars(store, start=start, end=end))


def production_context(
    session: Session, settings: Settings, model_id: str, *,
    artifacts: ArtifactStore | None = None,
) -> ProductionContext | None:
    """The production version of `model_id` ready to run, or None when there is none."""
    row = session.execute(
        select(ModelVersion).where(ModelVersion.model_id == model_id,
                                   ModelVersion.status == ModelStatus.PRODUCTION)
    ).scalar_one_or_none()
    if row is None:
        return None
    return ProductionContext(
        settings=settings, model_id=row.model_id, version=row.version,
        model_type=str(row.model_type), symbol=row.symbol, timeframe=row.timeframe,
        regime=row.regime, params=dict(row.params or {}), lineage=dict(row.lineage or {}),
        artifact_uri=row.artifact_uri, artifact_sha256=row.artifact_sha256,
        created_at=ensure_utc(row.created_at),
        artifacts=artifacts or ArtifactStore(settings.artifact_root),
    )


def production_model_ids(session: Session) -> list[str]:
    """Model ids with a production version that are not untracked (the checks' work list;
    one query)."""
    disabled = select(TrackedModel.model_id).where(TrackedModel.enabled.is_(False))
    return list(session.scalars(
        select(ModelVersion.model_id)
        .where(ModelVersion.status == ModelStatus.PRODUCTION,
               ModelVersion.model_id.not_in(disabled))
        .order_by(ModelVersion.model_id)
    ))


def recent_window(
    ctx: ProductionContext, settings: Settings, *, store: MarketDataStore | None = None,
    window_bars: int = PAPER_WINDOW_BARS, predict: bool = True,
) -> MarketWindow:
    """The latest `window_bars` bars after the version's training window, with complete
    features (warm-up read from before the window) and the model's predictions.

    A version without a known training window uses the latest bars.
    """
    from app.ml.features import build_features, warmup_bars

    step = timedelta(seconds=timeframe_seconds(ctx.timeframe))
    margin = (warmup_bars(ctx.windows) + 2) * step
    end_ts = ctx.train_end
    coverage = ctx.market(store).coverage(ctx.symbol, ctx.timeframe)
    if coverage is None:
        raise LookupError(f"no market data for {ctx.symbol} {ctx.timeframe}")
    last = ensure_utc(pd.Timestamp(coverage.last).to_pydatetime())
    start = last - (window_bars - 1) * step - margin
    if end_ts is not None:
        start = max(start, end_ts - margin)
    frame = ctx.read_bars(store, start=start)
    feats = build_features(frame, ctx.windows)
    keep = feats.index > pd.Timestamp(end_ts) if end_ts is not None else \
        np.ones(len(feats), dtype=bool)
    feats = feats[keep].dropna().iloc[-window_bars:]
    raw = frame.loc[feats.index]
    preds = ctx.predict(feats) if predict and len(feats) else None
    return MarketWindow(
        frame=raw, features=feats, predictions=preds,
        start=raw.index[0].to_pydatetime() if len(raw) else None,
        end=raw.index[-1].to_pydatetime() if len(raw) else None,
    )


def _bars_per_year(timeframe: str) -> float:
    return _SECONDS_PER_YEAR / timeframe_seconds(timeframe)


def _limits(session: Session, settings: Settings, model_id: str) -> tuple[float, int]:
    from app.services.triggers import tracked_overrides

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

    Writes a paper PerformanceReport; requests a `performance_degraded` training when its
    Sharpe is below the degraded level over enough trades. None without production.
    """
    from app.ml.backtest import run_backtest
    from app.ml.evaluation import probabilities_to_positions
    from app.services.triggers import record_request, slot_key

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
    result = run_backtest(
        window.frame["close"].to_numpy(), positions, fee_bps=settings.fee_bps,
        slippage_bps=settings.slippage_bps, timestamps=window.frame.index,
    )
    metrics = dict(result.metrics)
    sharpe = _finite_or_none(metrics.get("sharpe"))
    trades = int(metrics.get("trades") or 0)
    degraded = trades >= min_trades and sharpe is not None and sharpe < degraded_sharpe
    report.period_start, report.period_end = window.start, window.end
    report.trades, report.sharpe = trades, sharpe
    report.total_return = _finite_or_none(metrics.get("total_return"))
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
        from app.services.evolution.service import propose_variants_on_degraded  # issue 7 seed

        propose_variants_on_degraded(session, settings, model_id, now=now)
    return report.to_dict()


def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


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
    periods_per_year: float | None = Field(None, gt=0, description="default: from timeframe")
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


def record_live_report(
    session: Session,
    settings: Settings,
    body: LiveReport,
    *,
    now: datetime,
    reported_by: str | None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Store a live report, judge the rolling window, request a `performance_degraded`
    training when degraded, and apply the auto-rollback guard when enabled.

    Returns {"report", "rolling", "decision"?, "rollback"?}. Raises NotFound for an
    unknown model/version and Conflict when no version is named and none is in production.
    """
    from app.services import registry
    from app.services.triggers import parse_model_id, record_request, slot_key

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
    ppy = float(body.periods_per_year or _bars_per_year(timeframe))
    metrics = _report_metrics(body, ppy)
    report = PerformanceReport(
        model_id=body.model_id, version=version, source="live", reported_at=now,
        period_start=body.period_start, period_end=body.period_end,
        trades=int(metrics["trades"]), sharpe=_finite_or_none(metrics["sharpe"]),
        total_return=_finite_or_none(metrics.get("total_return")), metrics=metrics,
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
    out: dict[str, Any] = {"report": None, "rolling": rolling, "decision": None,
                           "rollback": None}
    if degraded:
        decision = record_request(
            session, settings, model_id=body.model_id, reason="performance_degraded",
            dedupe_key=f"live:{version}:{slot_key(now, settings.trigger_cooldown_hours)}",
            source="live_report", now=now, requested_by=reported_by,
            details={"performance_report_id": report.id, "source": "live",
                     "sharpe": rolling["sharpe"], "trades": rolling["trades"]},
        )
        report.decision_id = decision.id
        out["decision"] = decision.to_dict()
        from app.services.evolution.service import propose_variants_on_degraded  # issue 7 seed

        propose_variants_on_degraded(session, settings, body.model_id, now=now)
    if breach and settings.auto_rollback:
        reason = (f"auto-rollback guard: live rolling Sharpe {rolling['sharpe']:.3f} is below "
                  f"the floor {floor:g} over {rolling['trades']} trades "
                  f"(performance report {report.id})")
        try:
            result = registry.rollback(session, body.model_id, actor="clm-performance-guard",
                                       reason=reason)
            out["rollback"] = {"rolled_back": True, "reason": reason,
                               "production": result["production"]["version"],
                               "retired": (result.get("retired") or {}).get("version")}
        except Conflict as exc:
            out["rollback"] = {"rolled_back": False, "reason": reason, "error": exc.detail}
        rolling["guard"]["rollback"] = out["rollback"]
    report.degraded = degraded
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
