"""Trainer protocol and the registry of trainers by entry point (`clm.trainers`).

Owns `Trainer` (the protocol every model type implements), `get_trainer`,
`available_trainers`, the errors `TrainerNotAvailable` / `InvalidParams`, the
hyperparameter spec helper `ParamSpec`/`validate_against`, and `save_model` /
`load_model` (model ↔ content-addressed artifact in the library's own format).

Built-ins (xgboost, lightgbm; nhits, patchtst with the `[deep]` extra; rl_v2, rl_v3
with `[rl]`) are declared in pyproject.toml under the entry point group `clm.trainers`.
A plug-in package adds a trainer by declaring one more entry point there
(`my_model = my_pkg.trainers:MyTrainer`) — no change to CLM itself — and is trained
with `model_type: "other"` and the parameter `trainer: "my_model"` (docs/PLUGINS.md).

One protocol, three kinds of signal (`signal_kind`), all ending in the same currency:
a directional score in [0, 1] per bar ("P(up) or its equivalent") that the long/short
thresholds and the strategy rules turn into positions in [-1, 1], so every kind flows
through the same folds, backtest, gate, live scoring and lineage:
- classifier: P(up) (xgboost, lightgbm);
- forecaster: predicted log return over the horizon r̂ → 0.5 + 0.05·r̂/edge (edge = the
  trade's round-trip cost): the default thresholds 0.55/0.45 open a position exactly
  when the expected move beats the costs (nhits, patchtst; `forecast_score`);
- policy: the agent's position q in [-1, 1] → (q + 1)/2 (rl_v2, rl_v3; `policy_score`).
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
    "SIGNAL_KINDS",
    "InvalidParams",
    "ParamSpec",
    "Trainer",
    "TrainerNotAvailable",
    "as_feature_matrix",
    "as_labels",
    "available_trainers",
    "check_threads",
    "feature_names_of",
    "forecast_score",
    "get_trainer",
    "load_model",
    "policy_score",
    "refresh_trainers",
    "save_model",
    "signal_kind",
    "trainer_windows",
    "validate_against",
    "with_trade_costs",
]

ENTRY_POINT_GROUP = "clm.trainers"

# What to install for model types CLM knows of but does not ship a trainer for.
_INSTALL_HINTS: dict[str, str] = {
    "xgboost": "pip install 'xgboost>=2.0' (and reinstall clm so its entry points register)",
    "lightgbm": "pip install 'lightgbm>=4.3' (and reinstall clm so its entry points register)",
    "nhits": "pip install 'clm[deep]'",
    "patchtst": "pip install 'clm[deep]'",
    "rl_v2": "pip install 'clm[rl]'",
    "rl_v3": "pip install 'clm[rl]'",
}

SIGNAL_KINDS = ("classifier", "forecaster", "policy")
OTHER = "other"  # the model type of plug-in trainers, named by the parameter "trainer"
# Model types CLM itself names: a plug-in may not take their names under "other".
_BUILT_IN_TYPES = ("xgboost", "lightgbm", "nhits", "patchtst", "rl_v2", "rl_v3", OTHER)


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
    """A model type: fit on the causal feature rows, `predict_proba` a score in [0, 1].

    `fit(X, y)`: X holds the feature rows in time order (DataFrame with feature names),
    y the 0/1 next-h direction labels. Forecasters and policies read their targets and
    rewards from later rows of X itself (the `lag_1` column is the return into each
    bar), never beyond the rows they are given — so the walk-forward purge keeps them
    out of sample like the classifiers.

    `predict_proba(model, X)`: one score per row from that row alone (the score's
    meaning by `signal_kind` is in the module docstring).

    Optional attributes: `signal_kind` (default "classifier"), `requires` (modules the
    trainer imports lazily; checked when it is resolved so a missing extra answers with
    what to install), `feature_windows(params)` (feature families the model needs, e.g.
    the lag window of a sequence model; merged into the job's windows).

    Implementations must be deterministic given (data, params, seed, n_threads=1) and
    serialise models in their library's own format or safetensors (never pickle).
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
    nullable: bool = False  # None is accepted (and means what `doc` says)

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
        if value is None and spec.nullable:
            out[key] = None
            continue
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


def signal_kind(trainer: Any) -> str:
    """The trainer's kind of signal (`SIGNAL_KINDS`); classifiers need not declare it."""
    kind = str(getattr(trainer, "signal_kind", "classifier"))
    if kind not in SIGNAL_KINDS:
        raise ValueError(f"trainer {getattr(trainer, 'model_type', trainer)!r} declares "
                         f"signal_kind {kind!r}; allowed: {', '.join(SIGNAL_KINDS)}")
    return kind


def trainer_windows(trainer: Any, params: Mapping[str, Any] | None,
                    windows: Mapping[str, Any] | None) -> dict[str, Any]:
    """`windows` with the feature families the model needs set (its lag window, say):
    what the job's dataset is built with and its lineage records."""
    out = dict(windows or {})
    needs = getattr(trainer, "feature_windows", None)
    if needs is not None:
        out.update(needs(params))
    return out


def with_trade_costs(trainer: Any, params: Mapping[str, Any], cfg: Any) -> dict[str, Any]:
    """`params` with the job's costs where a trainer left them unset (None): a
    forecaster's edge `min_edge_bps` = the round trip, 2 × (fee + slippage) bps; a
    policy's reward cost `cost_bps` = fee + slippage per side (the instrument's when set)."""
    out = dict(params)
    per_side = float(cfg.fee_bps) + float(cfg.slippage_bps)
    if "min_edge_bps" in out and out["min_edge_bps"] is None:
        out["min_edge_bps"] = 2.0 * per_side
    if "cost_bps" in out and out["cost_bps"] is None:
        out["cost_bps"] = per_side
    return out


def forecast_score(predicted_return: Any, edge: float) -> np.ndarray:
    """A forecaster's score: 0.5 + 0.05·r̂/edge clipped to [0, 1], so the default
    thresholds (0.55 / 0.45) trade exactly when |r̂| beats `edge` (the round-trip cost as
    a fraction); edge 0 trades on the sign alone."""
    r = np.asarray(predicted_return, dtype=np.float64)
    if edge <= 0.0:
        return np.where(r > 0, 1.0, np.where(r < 0, 0.0, 0.5))
    return np.clip(0.5 + 0.05 * r / float(edge), 0.0, 1.0)


def policy_score(position: Any) -> np.ndarray:
    """A policy's score: its position q in [-1, 1] as (q + 1)/2 (flat = 0.5)."""
    q = np.clip(np.asarray(position, dtype=np.float64), -1.0, 1.0)
    return (q + 1.0) / 2.0


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


def get_trainer(model_type: str, params: Mapping[str, Any] | None = None) -> Trainer:
    """Instantiate the trainer registered for `model_type` under `clm.trainers`.

    model_type "other": the plug-in named by `params["trainer"]`, wrapped so that the
    parameter stays in the job's params (InvalidParams("trainer") when it is missing).
    Raises TrainerNotAvailable naming what to install when no entry point exists or
    the plug-in (or a module it requires) cannot be imported.
    """
    name = str(model_type)
    if name == OTHER:
        return _plugin_trainer(params)
    return _resolve(name, _INSTALL_HINTS.get(
        name, f"a plug-in package that registers a 'clm.trainers' entry point named {name!r}"))


def _resolve(name: str, hint: str) -> Trainer:
    ep = _entry_points().get(name)
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
    missing = [m for m in getattr(factory, "requires", ()) if not _importable(m)]
    if missing:
        raise TrainerNotAvailable(
            name, f"model type {name!r} needs {', '.join(missing)}, which is not installed: "
                  f"{hint}")
    trainer = factory()
    if not isinstance(trainer, Trainer):
        raise TrainerNotAvailable(
            name, f"entry point {ep.value} for {name!r} does not implement the Trainer protocol"
        )
    return trainer


_importable_cache: dict[str, bool] = {}


def _importable(module: str) -> bool:
    """Whether a top-level module is installed, without importing it (heavy libraries
    such as torch must not load in the web process that validates a request)."""
    found = _importable_cache.get(module)
    if found is None:
        from importlib.util import find_spec

        found = _importable_cache[module] = find_spec(module) is not None
    return found


def _plugin_trainer(params: Mapping[str, Any] | None) -> Trainer:
    raw = (params or {}).get("trainer") if isinstance(params, Mapping) else None
    if not isinstance(raw, str) or not raw:
        raise InvalidParams(
            "trainer", "model_type 'other' needs the parameter 'trainer' naming a plug-in "
                       f"trainer (a 'clm.trainers' entry point); installed: "
                       f"{[n for n in available_trainers() if n not in _BUILT_IN_TYPES]}")
    if raw in _BUILT_IN_TYPES:
        raise InvalidParams("trainer", f"trainer {raw!r} is a built-in model type: train it "
                                       f"with model_type {raw!r}")
    return PluginTrainer(raw, _resolve(
        raw, f"a plug-in package that registers a 'clm.trainers' entry point named {raw!r}"))


class PluginTrainer:
    """A plug-in trainer under model_type "other": the plug-in's own behaviour, with its
    name kept as the parameter "trainer" so every later step resolves it again."""

    model_type = OTHER

    def __init__(self, name: str, inner: Trainer) -> None:
        self.name = name
        self.inner = inner
        self.artifact_format = inner.artifact_format
        self.artifact_suffix = inner.artifact_suffix
        self.signal_kind = signal_kind(inner)

    def _own(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (params or {}).items() if k != "trainer"}

    def default_params(self) -> dict[str, Any]:
        return {"trainer": self.name, **self.inner.default_params()}

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if params is not None and not isinstance(params, Mapping):
            raise InvalidParams("params", "params must be a mapping")
        return {"trainer": self.name, **self.inner.validate_params(self._own(params))}

    def feature_windows(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return trainer_windows(self.inner, self._own(params), {})

    def fit(self, X: Any, y: Any, params: Mapping[str, Any] | None, *, seed: int,
            n_threads: int) -> Any:
        return self.inner.fit(X, y, self._own(params), seed=seed, n_threads=n_threads)

    def predict_proba(self, model: Any, X: Any, *, n_threads: int = 1) -> np.ndarray:
        return self.inner.predict_proba(model, X, n_threads=n_threads)

    def dump(self, model: Any) -> bytes:
        return self.inner.dump(model)

    def load(self, data: bytes) -> Any:
        return self.inner.load(data)


# -- artifacts --------------------------------------------------------------------------
def save_model(store: ArtifactStore, trainer: Trainer, model: Any) -> ArtifactRef:
    """Store a model in its library's format; returns the content-addressed reference."""
    return store.put_bytes(trainer.dump(model), fmt=trainer.artifact_format,
                           suffix=trainer.artifact_suffix)


def load_model(store: ArtifactStore, trainer: Trainer, uri: str,
               sha256: str | None = None) -> Any:
    """Load a model, verifying its bytes hash to `sha256` (ArtifactCorrupt otherwise)."""
    return trainer.load(store.get_bytes(uri, sha256))
