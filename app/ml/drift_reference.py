"""A version's drift reference and training regimes as stored artifacts: the one builder
of the lineage keys continuous learning reads.

Owns `save_reference` / `load_reference` (a reference summary ↔ a verified JSON
artifact), `reference_lineage` (THE builder of the lineage keys "drift_reference" and,
given the raw bars, "training_regime") and `training_lineage` (the same, after reading a
finished job's dataset, fold predictions and raw bars back from the artifact store).
The statistics themselves are app.analysis.drift and app.analysis.regime.

Features: every training row of the job's dataset. Predictions: the walk-forward
*out-of-sample* probabilities, because they are what the deployed model's outputs on new
bars look like; in-sample probabilities of boosted trees are more extreme and would make
the prediction PSI report drift on day one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.analysis.drift import REFERENCE_SCHEMA, build_reference
from app.analysis.regime import summarize_regimes
from app.core.config import Settings
from app.ml.artifacts import ArtifactStore
from app.ml.evaluation import FoldPrediction, dataset_from_frame

__all__ = ["load_reference", "reference_lineage", "save_reference", "training_lineage"]

log = logging.getLogger(__name__)


def save_reference(store: ArtifactStore, reference: Mapping[str, Any]) -> dict[str, Any]:
    """Store a reference as a JSON artifact; returns the lineage pointer {uri, sha256, ...}."""
    ref = store.put_json(dict(reference))
    return {"uri": ref.uri, "sha256": ref.sha256, "format": ref.format,
            "schema": REFERENCE_SCHEMA}


def load_reference(store: ArtifactStore, pointer: Mapping[str, Any]) -> dict[str, Any]:
    """Load the reference a lineage pointer names (verified against its sha256)."""
    data = store.get_json(str(pointer["uri"]), pointer.get("sha256"))
    if not isinstance(data, dict) or data.get("schema") != REFERENCE_SCHEMA:
        raise ValueError(f"artifact {pointer.get('uri')} is not a {REFERENCE_SCHEMA} document")
    return data


def reference_lineage(
    artifacts: ArtifactStore,
    dataset: Any,
    oos_probabilities: Sequence[np.ndarray],
    *,
    raw: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The lineage keys continuous learning needs, from data in memory.

    `dataset`: the job's app.ml.evaluation.Dataset (every training row);
    `oos_probabilities`: the folds' out-of-sample P(up), in the order they are to be
    concatenated; `raw`: the raw training bars, when the caller has them, for
    "training_regime" (too few bars to classify leave it out: the regime check
    recomputes it). Returns {"drift_reference": pointer, "training_regime"?: summary}.
    """
    oos = [np.asarray(p, dtype=np.float64) for p in oos_probabilities]
    reference = build_reference(
        dataset.frame_X(), np.concatenate(oos) if oos else None, windows=dataset.windows,
        train_start=dataset.timestamps[0] if dataset.n_rows else None,
        train_end=dataset.timestamps[-1] if dataset.n_rows else None,
    )
    out: dict[str, Any] = {"drift_reference": save_reference(artifacts, reference)}
    if raw is not None:
        with contextlib.suppress(ValueError):
            out["training_regime"] = summarize_regimes(raw)
    return out


def training_lineage(
    settings: Settings, state: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """`reference_lineage` of a job whose data is only in the artifact store: `state` is
    the job's artifacts (dataset, raw), `items` its work items (fold results).

    Never raises: a version without these still works (the checks rebuild them from the
    training window), so a problem here is logged and must not fail the training job.
    """
    try:
        store = ArtifactStore.from_settings(settings)
        ds_ref = state["dataset"]
        dataset = dataset_from_frame(store.get_frame(ds_ref["uri"], ds_ref["sha256"]))
        oos: list[np.ndarray] = []
        for it in items:
            if it.get("kind") == "fold" and it.get("result"):
                r = it["result"]
                oos.append(FoldPrediction.from_frame(
                    store.get_frame(r["uri"], r["sha256"])).proba)
        raw_ref = state.get("raw")
        raw = store.get_frame(raw_ref["uri"], raw_ref["sha256"]) if raw_ref else None
        return reference_lineage(store, dataset, oos, raw=raw)
    except Exception:
        log.exception("could not build the drift/regime lineage")
        return {}
