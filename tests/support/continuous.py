"""Test helpers for continuous learning: seed market data and put a real, small model in
production (trained on real features, stored as a real artifact, registered and promoted
through the registry) without running the whole training pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from app.core.config import Settings

SYMBOL = "BTCUSDT"
TIMEFRAME = "1h"
SMALL_XGB = {"n_estimators": 25, "max_depth": 3}


def hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def seed_market(settings: Settings, frame: pd.DataFrame, symbol: str = SYMBOL,
                timeframe: str = TIMEFRAME) -> None:
    """Merge `frame` into the market data store of `settings`."""
    from app.ml.data.store import MarketDataStore

    MarketDataStore(settings.data_dir).merge(symbol, timeframe, frame)


def make_production(
    settings: Settings,
    train_frame: pd.DataFrame,
    *,
    model_type: str = "xgboost",
    symbol: str = SYMBOL,
    timeframe: str = TIMEFRAME,
    params: dict[str, Any] | None = None,
    with_reference: bool = True,
    regime: str | None = None,
    status_only: bool = False,
) -> dict[str, Any]:
    """Train `model_type` on `train_frame`, store the model, register and promote it.

    The lineage is what the pipeline writes (app.ml.lineage.build_lineage) plus, with
    `with_reference`, the drift reference and training regimes. Returns the version dict.
    """
    from app.analysis.drift import build_reference
    from app.analysis.regime import summarize_regimes
    from app.db import transaction
    from app.ml.artifacts import ArtifactStore
    from app.ml.drift_reference import save_reference
    from app.ml.evaluation import EvaluationConfig, prepare_dataset
    from app.ml.lineage import build_lineage
    from app.ml.trainers import get_trainer, save_model, trainer_windows
    from app.services import registry

    store = ArtifactStore(settings.artifact_root)
    cfg = EvaluationConfig.from_settings(settings)
    trainer = get_trainer(model_type, params)
    checked = trainer.validate_params(params or SMALL_XGB)
    # A sequence model's lag window follows its look-back, as in the pipeline.
    dataset = prepare_dataset(train_frame, cfg, trainer_windows(trainer, checked, None))
    model = trainer.fit(dataset.frame_X(), dataset.y, checked, seed=0, n_threads=1)
    ref = save_model(store, trainer, model)
    lineage = build_lineage(
        frame=train_frame, model_type=model_type, params=checked, seed=0, n_threads=1,
        windows=dataset.windows, label_horizon=cfg.label_horizon, symbol=symbol,
        timeframe=timeframe, evaluation=cfg.to_dict(),
    )
    if with_reference:
        proba = trainer.predict_proba(model, dataset.frame_X(), n_threads=1)
        lineage["drift_reference"] = save_reference(
            store, build_reference(dataset.frame_X(), np.asarray(proba),
                                   windows=dataset.windows))
        lineage["training_regime"] = summarize_regimes(train_frame)
    metrics = {"sharpe": 1.2, "win_rate": 0.55, "profit_factor": 1.4, "max_drawdown": 0.1,
               "trades": 60, "total_return": 0.2, "promotion_score": 70.0}
    with transaction(settings.database_url, immediate=True) as session:
        version = registry.register_version(
            session, model_type=model_type, symbol=symbol, timeframe=timeframe,
            metrics=metrics, params=checked, regime=regime,
            artifact={"uri": ref.uri, "sha256": ref.sha256, "format": ref.format},
            lineage=lineage, actor="test", reason="test fixture",
        )
        if not status_only:
            registry.promote(session, version["model_id"], version["version"],
                             actor="test", reason="test fixture")
    return version


def start(n_hours_ago: int) -> datetime:
    """A bar-aligned UTC start time `n_hours_ago` hours before now."""
    now = hour_floor(datetime.now(UTC))
    return now - pd.Timedelta(hours=n_hours_ago).to_pytimedelta()


