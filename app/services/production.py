"""The production version of a model, ready to run forward: what the checks share.

Owns `ProductionContext` (a production version with everything needed to run it on new
bars: artifact, feature windows, training window, thresholds, its drift reference and
training regimes), `production_context` (load it), `production_model_ids` (the checks'
work list) and `recent_window` (its features and predictions on bars that arrived after
its training). Used by the drift, regime and paper-performance checks
(app.services.checks); reads only, never writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.analysis.drift import build_reference
from app.analysis.regime import summarize_regimes
from app.core.config import Settings
from app.core.domain import ModelStatus, timeframe_seconds
from app.core.timeutil import ensure_utc
from app.ml.artifacts import ArtifactStore
from app.ml.data.store import MarketDataStore
from app.ml.drift_reference import load_reference
from app.ml.features import build_features, warmup_bars
from app.ml.trainers import get_trainer, load_model
from app.models.continuous import TrackedModel
from app.models.registry import ModelVersion

__all__ = [
    "RECENT_WINDOW_BARS",
    "MarketWindow",
    "ProductionContext",
    "production_context",
    "production_model_ids",
    "recent_window",
]

# Bars judged per check by default (the latest ones after training): 30 days of 1h bars.
RECENT_WINDOW_BARS = 720


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
        return store or MarketDataStore.from_settings(self.settings)

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
        artifacts=artifacts or ArtifactStore.from_settings(settings),
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
    window_bars: int = RECENT_WINDOW_BARS, predict: bool = True,
) -> MarketWindow:
    """The latest `window_bars` bars after the version's training window, with complete
    features (warm-up read from before the window) and the model's predictions.

    A version without a known training window uses the latest bars.
    """
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
