"""Live scoring: every production, candidate and shadow version with an artifact (and the
version a rollback would restore), run on each bar stored after its training data ended.

Owns `ensure_records` (a `live_scores` row for each newly scorable version, its set-up
frozen from the version's lineage and the instrument's market terms), `score_batch`
(continue a page of records by the bars that arrived since each one's last scored bar:
causal features over the look-back window, one prediction per new bar, positions by the
version's trading rules, paper trades by DESIGN.md's backtest model via
app.ml.live_book), `live_record` (GET …/live) and `live_metric_rows` (Prometheus).

Incremental: a record stores its last scored bar, its backtest state and its rule state,
so a new bar costs the features over `LOOKBACK_BARS` bars (shared by every version of
the same series and windows), one prediction and one appended point — never a recompute
of history. Within a run features, predictions and loaded models are shared by versions
that have the same series, windows and artifact.

Claims: the caller's transaction locks the page's rows (SELECT … FOR UPDATE SKIP LOCKED on
PostgreSQL; SQLite's write lock taken at BEGIN IMMEDIATE), so two workers never score the
same version at once; a second run finds nothing new (last_bar moved) and the points'
unique (score_id, ts) key is the last guard.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, insert, or_, select, tuple_
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import ModelStatus, timeframe_seconds
from app.core.errors import NotFound
from app.core.numbers import finite_or_none
from app.core.timeutil import ensure_utc, isoformat
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import DataNotFound, MarketDataStore
from app.ml.evaluation import probabilities_to_positions
from app.ml.evolution.space import TradingRules
from app.ml.features import build_features, normalize_windows, warmup_bars
from app.ml.live_book import LiveBook, RuleState
from app.ml.rules import trading_rules
from app.ml.trainers import get_trainer, load_model
from app.models.live import LiveScore, LiveScorePoint
from app.models.registry import ModelVersion
from app.services import registry
from app.services.instruments import market_terms
from app.services.registry.history import previous_production

__all__ = ["LOOKBACK_BARS", "SCORED_STATUSES", "ScoreRun", "ensure_records",
           "live_bars", "live_metric_rows", "live_positions", "live_record", "lookback_bars",
           "rollback_targets", "score_batch", "scored_count"]

log = logging.getLogger(__name__)

SCORED_STATUSES = (ModelStatus.PRODUCTION, ModelStatus.CANDIDATE, ModelStatus.SHADOW)
# ... and each production version's rollback target (`rollback_targets`), retired.
# Bars of history a new bar's features are computed from. The recursive EWMs (RSI, MACD)
# forget their start within it: (25/27)^512 ≈ 1e-17, below float64 resolution, so a bar
# scored alone equals the same bar scored inside a long catch-up.
LOOKBACK_BARS = 512
_SECONDS_PER_YEAR = 365 * 86400
_MODEL_CACHE: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
_MODEL_CACHE_SIZE = 256


def lookback_bars(windows: Any) -> int:
    """Look-back window (bars) of the features with `windows`."""
    return max(LOOKBACK_BARS, 20 * warmup_bars(windows))


# -- records ------------------------------------------------------------------------------
def _train_end(lineage: dict[str, Any]) -> datetime | None:
    value = (lineage.get("dataset") or {}).get("last_timestamp")
    if not value:
        return None
    try:
        return ensure_utc(pd.Timestamp(value).to_pydatetime())
    except (TypeError, ValueError):
        return None


def _setup(session: Session, settings: Settings, row: ModelVersion) -> dict[str, Any]:
    lineage = dict(row.lineage or {})
    ev = lineage.get("evaluation") or {}
    try:
        rules = trading_rules(lineage.get("strategy"))
    except ValueError:
        rules = None
    terms = market_terms(session, settings, row.symbol, row.timeframe)
    ppy = terms.periods_per_year or _SECONDS_PER_YEAR / timeframe_seconds(row.timeframe)
    return {
        "model_type": str(row.model_type), "artifact_uri": row.artifact_uri,
        "artifact_sha256": row.artifact_sha256,
        "windows": {k: list(v) for k, v in normalize_windows(
            (lineage.get("features") or {}).get("windows")).items()},
        "rules": rules.to_dict() if rules is not None else None,
        "long_threshold": float(ev.get("long_threshold", settings.long_threshold)),
        "short_threshold": float(ev.get("short_threshold", settings.short_threshold)),
        "fee_bps": float(terms.fee_bps), "slippage_bps": float(terms.slippage_bps),
        "periods_per_year": float(ppy),
    }


def rollback_targets(session: Session) -> set[tuple[str, str]]:
    """(model_id, version) of each production version's rollback target (a retired
    version): still scored, so the auto-rollback guard can tell whether it holds up on
    the bars production trades (app.services.deployment)."""
    prods = session.execute(select(ModelVersion.model_id, ModelVersion.version).where(
        ModelVersion.status == ModelStatus.PRODUCTION)).all()
    out = set()
    for model_id, version in prods:
        prev = previous_production(session, model_id, version)
        if prev is not None:
            out.add((model_id, prev))
    return out


def _scored(targets: set[tuple[str, str]]) -> Any:
    """SQL condition: the version is scored (a scored status, or a rollback target)."""
    cond = ModelVersion.status.in_(SCORED_STATUSES)
    if targets:
        cond = or_(cond, tuple_(ModelVersion.model_id, ModelVersion.version).in_(
            sorted(targets)))
    return cond


def ensure_records(session: Session, settings: Settings) -> int:
    """Create the record of every scorable version that has none yet; returns how many.

    A version whose lineage names no training window gets a record with `error` set (it
    cannot be scored: there is no "after its training data").
    """
    known = select(LiveScore.id).where(LiveScore.model_id == ModelVersion.model_id,
                                       LiveScore.version == ModelVersion.version)
    rows = session.scalars(
        select(ModelVersion).where(_scored(rollback_targets(session)),
                                   ModelVersion.artifact_uri.is_not(None),
                                   ~known.exists())
    ).all()
    for row in rows:
        end = _train_end(dict(row.lineage or {}))
        try:
            setup = _setup(session, settings, row)
            error = None if end is not None else "the version's lineage has no training window"
        except ValueError as exc:
            setup, error = {}, f"cannot score: {exc}"
        session.add(LiveScore(model_id=row.model_id, version=row.version, symbol=row.symbol,
                              timeframe=row.timeframe, setup=setup, train_end=end,
                              bars=0, trades=0, state={}, error=error))
    if rows:
        session.flush()
    return len(rows)


def _claim_page(session: Session, *, after_id: int, limit: int) -> list[LiveScore]:
    eligible = select(ModelVersion.id).where(
        ModelVersion.model_id == LiveScore.model_id, ModelVersion.version == LiveScore.version,
        _scored(rollback_targets(session)))
    stmt = (select(LiveScore)
            .where(LiveScore.id > after_id, LiveScore.train_end.is_not(None),
                   eligible.exists())
            .order_by(LiveScore.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=LiveScore)
    return list(session.scalars(stmt))


# -- scoring ------------------------------------------------------------------------------
@dataclass
class _Window:
    """New bars of one series with one feature set: features, closes, timestamps."""

    x: pd.DataFrame
    closes: list[float]
    stamps: list[datetime]


@dataclass
class ScoreRun:
    """One scoring run's shared caches and counts (one per flow run)."""

    settings: Settings
    market: MarketDataStore
    artifacts: ArtifactStore
    frames: dict[tuple[str, str], pd.DataFrame | None] = field(default_factory=dict)
    features: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    predictions: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)
    scored: int = 0
    bars: int = 0
    errors: int = 0
    predict_calls: int = 0
    feature_builds: int = 0

    @classmethod
    def create(cls, settings: Settings) -> ScoreRun:
        return cls(settings, MarketDataStore.from_settings(settings),
                   ArtifactStore.from_settings(settings))

    def to_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "bars": self.bars, "errors": self.errors,
                "predict_calls": self.predict_calls, "feature_builds": self.feature_builds}


def _series(run: ScoreRun, records: list[LiveScore], symbol: str, timeframe: str
            ) -> pd.DataFrame | None:
    """The bars the records of one series need (read once per run and series)."""
    key = (symbol, timeframe)
    if key in run.frames:
        return run.frames[key]
    coverage = run.market.coverage(symbol, timeframe)
    frame = None
    if coverage is not None:
        last = ensure_utc(pd.Timestamp(coverage.last).to_pydatetime())
        starts = [r.last_bar or r.train_end for r in records
                  if r.symbol == symbol and r.timeframe == timeframe]
        starts = [ensure_utc(s) for s in starts if s is not None and ensure_utc(s) < last]
        if starts:
            step = timedelta(seconds=timeframe_seconds(timeframe))
            need = max(lookback_bars(r.setup.get("windows")) for r in records
                       if r.symbol == symbol and r.timeframe == timeframe)
            try:
                frame = run.market.read(symbol, timeframe, start=min(starts) - (need + 2) * step)
            except DataNotFound:
                frame = None
    run.frames[key] = frame
    return frame


def _model(run: ScoreRun, setup: dict[str, Any]) -> tuple[Any, Any]:
    sha = str(setup["artifact_sha256"] or setup["artifact_uri"])
    hit = _MODEL_CACHE.get(sha)
    if hit is not None:
        _MODEL_CACHE.move_to_end(sha)
        return hit
    trainer = get_trainer(setup["model_type"])
    model = load_model(run.artifacts, trainer, setup["artifact_uri"], setup["artifact_sha256"])
    _MODEL_CACHE[sha] = (trainer, model)
    while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return trainer, model


def _score_one(run: ScoreRun, rec: LiveScore, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Continue `rec` by the bars of `frame` after its last scored bar; returns the new
    points (not yet inserted)."""
    setup = rec.setup
    after = pd.Timestamp(ensure_utc(rec.last_bar or rec.train_end))  # type: ignore[arg-type]
    index = frame.index
    i0 = int(index.searchsorted(after, side="right"))
    n = len(index)
    if i0 >= n:
        return []
    windows = setup["windows"]
    wkey = repr(sorted((k, tuple(v)) for k, v in windows.items()))
    fkey = (rec.symbol, rec.timeframe, wkey, i0, n)
    window = run.features.get(fkey)
    if window is None:
        lo = max(0, i0 - lookback_bars(windows))
        feats = build_features(frame.iloc[lo:n], windows).iloc[i0 - lo:].dropna()
        window = _Window(
            x=feats.astype(np.float32),
            closes=frame["close"].reindex(feats.index).to_numpy(dtype=np.float64).tolist(),
            stamps=[ts.to_pydatetime() for ts in feats.index])
        run.features[fkey] = window
        run.feature_builds += 1
    if not window.stamps:
        return []
    pkey = (setup["artifact_sha256"], fkey)
    proba = run.predictions.get(pkey)
    if proba is None:
        trainer, model = _model(run, setup)
        proba = np.asarray(trainer.predict_proba(model, window.x, n_threads=1),
                           dtype=np.float64)
        run.predictions[pkey] = proba
        run.predict_calls += 1
    closes, stamps = window.closes, window.stamps
    state = rec.state or {}
    rules = setup.get("rules")
    if rules is not None:
        tr = TradingRules(**rules)
        rs = RuleState.from_dict(state.get("rules"))
        positions = [rs.step(p, c, tr) for p, c in zip(proba.tolist(), closes, strict=True)]
        rule_state: dict[str, Any] | None = rs.to_dict()
    else:
        positions = probabilities_to_positions(
            proba, setup["long_threshold"], setup["short_threshold"]).tolist()
        rule_state = None
    book = (LiveBook.from_dict(state["book"]) if state.get("book") else
            LiveBook(cost=(setup["fee_bps"] + setup["slippage_bps"]) / 1e4,
                     periods_per_year=setup["periods_per_year"]))
    equity = book.advance(closes, positions)
    metrics = book.metrics() or {}
    rec.state = {"book": book.to_dict(), "rules": rule_state}
    if rec.since is None:
        rec.since = stamps[0]
    rec.last_bar = stamps[-1]
    rec.bars = book.n
    rec.trades = int(metrics.get("trades") or 0)
    rec.sharpe = finite_or_none(metrics.get("sharpe"))
    rec.max_drawdown = finite_or_none(metrics.get("max_drawdown"))
    rec.total_return = finite_or_none(metrics.get("total_return"))
    rec.metrics = {k: (finite_or_none(v) if isinstance(v, float) else v)
                   for k, v in metrics.items()}
    rec.final_equity = finite_or_none(book.final_equity())
    rec.error = None
    return [{"score_id": rec.id, "ts": t, "position": float(p), "equity": float(e)}
            for t, p, e in zip(stamps, positions, equity, strict=True)]


def score_batch(session: Session, run: ScoreRun, *, after_id: int = 0, limit: int = 500
                ) -> int | None:
    """Claim and score one page of records with id > `after_id`; returns the last id of the
    page (None when there was none). Errors of one version are stored on its record and
    counted, never blocking the others."""
    records = _claim_page(session, after_id=after_id, limit=limit)
    if not records:
        return None
    points: list[dict[str, Any]] = []
    for rec in records:
        frame = _series(run, records, rec.symbol, rec.timeframe)
        if frame is None:
            continue
        try:
            new = _score_one(run, rec, frame)
        except Exception as exc:  # a bad artifact or series must not stop the others
            run.errors += 1
            rec.error = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("live scoring of %s %s failed: %s", rec.model_id, rec.version, exc)
            continue
        if new:
            run.scored += 1
            run.bars += len(new)
            points.extend(new)
    if points:
        session.execute(insert(LiveScorePoint), points)
    session.flush()
    return records[-1].id


# -- reading ------------------------------------------------------------------------------
def live_record(session: Session, model_id: str, version: str) -> dict[str, Any]:
    """GET …/live: the version's record on bars after its training data (NotFound for an
    unknown version; an empty record — bars 0, metrics null — before the first new bar)."""
    registry.get_version(session, model_id, version)  # NotFound for an unknown version
    rec = session.scalar(select(LiveScore).where(LiveScore.model_id == model_id,
                                                 LiveScore.version == version))
    if rec is None or rec.bars == 0:
        return {"model_id": model_id, "version": version, "since": None, "bars": 0,
                "trades": 0, "metrics": None, "equity": [], "last_bar": None,
                "error": rec.error if rec is not None else None}
    rows = session.execute(
        select(LiveScorePoint.ts, LiveScorePoint.equity)
        .where(LiveScorePoint.score_id == rec.id).order_by(LiveScorePoint.ts)
    ).all()
    equity = [[isoformat(ensure_utc(ts)), float(e)] for ts, e in rows]
    if equity and rec.final_equity is not None:
        equity[-1][1] = float(rec.final_equity)  # an open trade closed at the last bar
    setup = rec.setup or {}
    return {
        "model_id": model_id, "version": version, "since": isoformat(rec.since),
        "last_bar": isoformat(rec.last_bar), "bars": rec.bars, "trades": rec.trades,
        "metrics": rec.metrics, "equity": equity, "error": rec.error,
        "costs": {"fee_bps": setup.get("fee_bps"), "slippage_bps": setup.get("slippage_bps"),
                  "periods_per_year": setup.get("periods_per_year")},
        "positions": "strategy_rules" if setup.get("rules") else "thresholds",
    }


def live_positions(session: Session, model_id: str, version: str) -> pd.DataFrame:
    """The stored positions and marked-to-market equity of a record, by bar."""
    rec = session.scalar(select(LiveScore).where(LiveScore.model_id == model_id,
                                                 LiveScore.version == version))
    if rec is None:
        raise NotFound(f"no live record for {model_id} {version}")
    rows = session.execute(
        select(LiveScorePoint.ts, LiveScorePoint.position, LiveScorePoint.equity)
        .where(LiveScorePoint.score_id == rec.id).order_by(LiveScorePoint.ts)).all()
    index = pd.DatetimeIndex([ensure_utc(r[0]) for r in rows], name="timestamp")
    return pd.DataFrame({"position": [r[1] for r in rows], "equity": [r[2] for r in rows]},
                        index=index)


def live_bars(session: Session, model_id: str, version: str, *, last: int | None = None
              ) -> pd.DataFrame:
    """The last `last` scored bars of a record (all without it): position, equity and the
    per-bar net return `ret` (equity change; NaN on the first bar). Empty when the version
    has no record (guarded deployment reads it: app.services.deployment, allocation)."""
    rec_id = session.scalar(select(LiveScore.id).where(LiveScore.model_id == model_id,
                                                       LiveScore.version == version))
    if rec_id is None:
        return pd.DataFrame({"position": [], "equity": [], "ret": []},
                            index=pd.DatetimeIndex([], name="timestamp", tz="UTC"))
    stmt = (select(LiveScorePoint.ts, LiveScorePoint.position, LiveScorePoint.equity)
            .where(LiveScorePoint.score_id == rec_id).order_by(LiveScorePoint.ts.desc()))
    if last is not None:
        stmt = stmt.limit(last + 1)  # one more bar: the first kept bar's return
    rows = session.execute(stmt).all()[::-1]
    index = pd.DatetimeIndex([ensure_utc(r[0]) for r in rows], name="timestamp")
    frame = pd.DataFrame({"position": [r[1] for r in rows], "equity": [r[2] for r in rows]},
                         index=index)
    frame["ret"] = frame["equity"].pct_change()
    return frame.iloc[1:] if last is not None and len(frame) > last else frame


def live_metric_rows(session: Session) -> list[tuple[str, str, str, float | None, float | None,
                                                     int]]:
    """(model_id, version, status, sharpe, max_drawdown, bars) of every scored record whose
    version is still scored (Prometheus, scrape time; one query)."""
    rows = session.execute(
        select(LiveScore.model_id, LiveScore.version, ModelVersion.status, LiveScore.sharpe,
               LiveScore.max_drawdown, LiveScore.bars)
        .join(ModelVersion, (ModelVersion.model_id == LiveScore.model_id)
              & (ModelVersion.version == LiveScore.version))
        .where(LiveScore.bars > 0, ModelVersion.status.in_(SCORED_STATUSES))
        .order_by(LiveScore.id)
    ).all()
    return [(m, v, str(getattr(s, "value", s)), sh, dd, int(b)) for m, v, s, sh, dd, b in rows]


def scored_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(LiveScore)
                              .where(LiveScore.bars > 0)) or 0)

