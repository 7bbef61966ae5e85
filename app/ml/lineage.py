"""Lineage of a trained model: everything needed to re-run its evaluation.

Owns `build_lineage`, `library_versions` and `code_revision`. A lineage document names
the exact data slice (content hash, symbol, timeframe, first/last bar, rows), the
feature set (version, windows, names), the label horizon, the trainer (model type,
validated params, seed, threads), the walk-forward set-up (config and folds), library
versions and the code revision when it can be known. JSON-ready plain data.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from app.ml.artifacts import dataset_hash
from app.ml.features import FEATURE_SET_VERSION, feature_names, normalize_windows

__all__ = ["LINEAGE_SCHEMA", "build_lineage", "code_revision", "library_versions"]

LINEAGE_SCHEMA = "clm-lineage-1"
_LIBRARIES = ("clm", "numpy", "pandas", "pyarrow", "xgboost", "lightgbm", "scikit-learn")
_UNSET: Any = object()


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape a model (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def code_revision() -> str | None:
    """`git rev-parse HEAD` of the source tree CLM runs from, else None (no git, no repo,
    no commit yet, or an installed wheel). Cached: the code does not change under a
    running process."""
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = proc.stdout.strip()
    return rev if proc.returncode == 0 and len(rev) >= 7 else None


def _iso(ts: Any) -> str | None:
    if ts is None:
        return None
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


def build_lineage(
    *,
    frame: pd.DataFrame,
    model_type: str,
    params: Mapping[str, Any],
    seed: int,
    n_threads: int | None = None,
    windows: Mapping[str, Any] | None = None,
    label_horizon: int = 1,
    symbol: str | None = None,
    timeframe: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
    folds: Sequence[Any] | None = None,
    dataset_uri: str | None = None,
    dataset_sha256: str | None = None,
    code_rev: str | None = _UNSET,
) -> dict[str, Any]:
    """Lineage document for a model trained on `frame` (the raw OHLCV slice).

    `evaluation` is the walk-forward config as a dict, `folds` the folds (objects with
    `to_dict()` or dicts). `dataset_uri`/`dataset_sha256` point at a stored copy of the
    slice when there is one. `code_rev` defaults to `code_revision()`.
    """
    w = normalize_windows(windows)
    index = frame.index
    fold_dicts = [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in folds or ()]
    return {
        "schema": LINEAGE_SCHEMA,
        "dataset": {
            "hash": dataset_hash(frame),
            "hash_method": "sha256 of canonical bytes (app.ml.artifacts.dataset_hash)",
            "symbol": symbol,
            "timeframe": timeframe,
            "rows": len(frame),
            "first_timestamp": _iso(index[0]) if len(frame) else None,
            "last_timestamp": _iso(index[-1]) if len(frame) else None,
            "uri": dataset_uri,
            "sha256": dataset_sha256,
        },
        "features": {
            "version": FEATURE_SET_VERSION,
            "windows": {k: list(v) for k, v in w.items()},
            "names": feature_names(w),
        },
        "label": {"kind": "direction", "horizon": int(label_horizon)},
        "model": {
            "model_type": model_type,
            "params": dict(params),
            "seed": int(seed),
            "n_threads": n_threads,
        },
        "evaluation": dict(evaluation) if evaluation is not None else None,
        "folds": fold_dicts,
        "libraries": library_versions(),
        "code_revision": code_revision() if code_rev is _UNSET else code_rev,
    }
