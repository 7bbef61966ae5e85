"""Trainer protocol and the registry of trainers by entry point (`clm.trainers`).

Owns `Trainer` (the protocol every model type implements), `get_trainer`,
`available_trainers`, the errors `TrainerNotAvailable` / `InvalidParams`, the
hyperparameter spec helper `ParamSpec`/`validate_against`, and `save_model` /
`load_model` (model ↔ content-addressed artifact in the library's own format).

Built-ins (xgboost, lightgbm) are declared in pyproject.toml under the entry point
group `clm.trainers`; a plug-in package adds a model type by declaring one more entry
point there (`nhits = my_pkg.trainers:NHitsTrainer`) — no change to CLM itself.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from app.ml.artifacts import ArtifactRef, ArtifactStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "InvalidParams",
    "ParamSpec",
    "Trainer",
    "TrainerNotAvailable",
    "as_feature_matrix",
    "as_labels",
    "available_trainers",
    "check_threads",
    "feature_names_of",
    "get_trainer",
    "load_model",
    "refresh_trainers",
    "save_model",
    "validate_against",
]

ENTRY_POINT_GROUP = "clm.trainers"

# What to install for model types CLM knows of but does not ship a trainer for.
_INSTALL_HINTS: dict[str, str] = {
    "xgboost": "pip install 'xgboost>=2.0' (and reinstall clm so its entry points register)",
    "lightgbm": "pip install 'lightgbm>=4.3' (and reinstall clm so its entry points register)",
    "nhits": "a plug-in package that registers a 'clm.trainers' entry point named 'nhits'",
    "patchtst": "a plug-in package that registers a 'clm.trainers' entry point named 'patchtst'",
    "rl_v2": "a plug-in package that registers a 'clm.trainers' entry point named 'rl_v2'",
    "rl_v3": "a plug-in package that registers a 'clm.trainers' entry point named 'rl_v3'",
}


class TrainerNotAvailable(LookupError):
    """No trainer is installed for a model type; the message says what to install."""

    def __init__(self, model_type: str, message: str) -> None:
        super().__init__(message)
        self.model_type = model_type


class InvalidParams(ValueError):
    """A hyperparameter is unknown or out of range; `.key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@runtime_checkable
class Trainer(Protocol):
    """A binary classifier of next-bar direction; `predict_proba` returns P(up).

    Implementations must be deterministic given (data, params, seed, n_threads=1) and
    serialise models in their library's own format (never pickle).
    """

    model_type: str
    artifact_format: str  # e.g. "xgboost-ubj", "lightgbm-txt"
    artifact_suffix: str  # file suffix in the artifact store, e.g. ".ubj", ".txt"

    def default_params(self) -> dict[str, Any]: ...

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with `params`; InvalidParams naming the key on bad input."""
        ...

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> Any: ...

    def predict_proba(self, model: Any, X: Any, *, n_threads: int = 1) -> np.ndarray: ...

    def dump(self, model: Any) -> bytes: ...

    def load(self, data: bytes) -> Any: ...


# -- hyperparameter validation ----------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: type, default and allowed closed/open range."""

    kind: type  # int or float
    default: Any
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    doc: str = ""

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'[' if self.low_inclusive else '('}{self.low}"
        hi = "" if self.high is None else f"{self.high}{']' if self.high_inclusive else ')'}"
        if self.low is not None and self.high is not None:
            return f"{lo}, {hi}"
        if self.low is not None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low}"
        if self.high is not None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high}"
        return "any"


def validate_against(
    specs: Mapping[str, ParamSpec], params: Mapping[str, Any] | None, model_type: str
) -> dict[str, Any]:
    """Check `params` against `specs`; return defaults merged with the checked values."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidParams("params", f"params must be a mapping, got {type(params).__name__}")
    out = {name: spec.default for name, spec in specs.items()}
    for key, value in params.items():
        if key not in specs:
            raise InvalidParams(
                str(key),
                f"unknown {model_type} hyperparameter {key!r}; known: {sorted(specs)}",
            )
        spec = specs[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidParams(key, f"{model_type} param {key!r} must be a number, got {value!r}")
        if spec.kind is int:
            if isinstance(value, numbers.Integral):
                checked: int | float = int(value)
            elif float(value).is_integer():
                checked = int(value)  # 200.0 from a JSON body or an optimizer is fine
            else:
                raise InvalidParams(key, f"{model_type} param {key!r} must be an integer, "
                                         f"got {value!r}")
        else:
            checked = float(value)
            if not math.isfinite(checked):
                raise InvalidParams(key, f"{model_type} param {key!r} must be finite, "
                                         f"got {value!r}")
        ok = True
        if spec.low is not None:
            ok = checked >= spec.low if spec.low_inclusive else checked > spec.low
        if ok and spec.high is not None:
            ok = checked <= spec.high if spec.high_inclusive else checked < spec.high
        if not ok:
            raise InvalidParams(
                key,
                f"{model_type} param {key!r} = {value!r} is out of range; allowed: "
                f"{spec.describe()}",
            )
        out[key] = checked
    return out


def check_threads(n_threads: int) -> int:
    if isinstance(n_threads, bool) or not isinstance(n_threads, int | np.integer) or n_threads < 1:
        raise ValueError(f"n_threads must be an int >= 1, got {n_threads!r}")
    return int(n_threads)


# -- input coercion shared by the built-in trainers -------------------------------------
def as_feature_matrix(X: Any) -> np.ndarray:
    """2-D float32 C-contiguous matrix; both libraries bin float32, so fit and predict
    always see the same values whatever dtype the caller passes."""
    values = X.to_numpy(dtype=np.float32) if hasattr(X, "to_numpy") else X
    arr = np.ascontiguousarray(values, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-dimensional (rows × features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("X has no rows")
    return arr


def as_labels(y: Any, n_rows: int) -> np.ndarray:
    arr = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64).ravel()
    if arr.shape[0] != n_rows:
        raise ValueError(f"y has {arr.shape[0]} labels but X has {n_rows} rows")
    bad = np.flatnonzero(~np.isin(arr, (0.0, 1.0)))
    if bad.size:
        raise ValueError(f"labels must be 0 or 1; row {int(bad[0])} is {arr[bad[0]]!r}")
    if arr.min() == arr.max():
        raise ValueError(f"labels contain only class {int(arr[0])}: cannot train a classifier")
    return arr


def feature_names_of(X: Any) -> list[str] | None:
    cols = getattr(X, "columns", None)
    return [str(c) for c in cols] if cols is not None else None


# -- registry ---------------------------------------------------------------------------
_resolved: dict[str, Any] | None = None
_resolved_lock = threading.Lock()


def _entry_points() -> dict[str, Any]:
    """The `clm.trainers` entry points by name, scanned once per process.

    The one resolver every lookup goes through (available_trainers, get_trainer and any
    plug-in type added later): scanning the installed distributions' metadata costs
    ~5 ms, and the set only changes when packages are installed, i.e. on a restart
    (`refresh_trainers()` rescans in-process, for tests and long-lived shells).
    """
    global _resolved
    found = _resolved
    if found is None:
        with _resolved_lock:
            found = _resolved
            if found is None:
                found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
                _resolved = found
    return found


def refresh_trainers() -> None:
    """Forget the scanned entry points: the next lookup scans the installed packages."""
    global _resolved
    with _resolved_lock:
        _resolved = None


def available_trainers() -> list[str]:
    """Model types with a registered trainer entry point (installed or not importable)."""
    return sorted(_entry_points())


def get_trainer(model_type: str) -> Trainer:
    """Instantiate the trainer registered for `model_type` under `clm.trainers`.

    Raises TrainerNotAvailable naming what to install when no entry point exists or
    the plug-in cannot be imported (e.g. its library is missing).
    """
    name = str(model_type)
    ep = _entry_points().get(name)
    hint = _INSTALL_HINTS.get(
        name, f"a plug-in package that registers a 'clm.trainers' entry point named {name!r}"
    )
    if ep is None:
        raise TrainerNotAvailable(
            name,
            f"no trainer for model type {name!r}: install {hint}. "
            f"Available: {available_trainers() or 'none'}",
        )
    try:
        factory = ep.load()
    except ImportError as exc:
        raise TrainerNotAvailable(
            name, f"trainer for model type {name!r} ({ep.value}) cannot be imported: {exc}. "
                  f"Install {hint}"
        ) from exc
    trainer = factory()
    if not isinstance(trainer, Trainer):
        raise TrainerNotAvailable(
            name, f"entry point {ep.value} for {name!r} does not implement the Trainer protocol"
        )
    return trainer


# -- artifacts --------------------------------------------------------------------------
def save_model(store: ArtifactStore, trainer: Trainer, model: Any) -> ArtifactRef:
    """Store a model in its library's format; returns the content-addressed reference."""
    return store.put_bytes(trainer.dump(model), fmt=trainer.artifact_format,
                           suffix=trainer.artifact_suffix)


def load_model(store: ArtifactStore, trainer: Trainer, uri: str,
               sha256: str | None = None) -> Any:
    """Load a model, verifying its bytes hash to `sha256` (ArtifactCorrupt otherwise)."""
    return trainer.load(store.get_bytes(uri, sha256))
