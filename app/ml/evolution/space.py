"""Strategy parameter spaces: one declaration per model type, used everywhere.

A *strategy* is the model type plus everything that turns its predictions into trades:
entry/exit probability thresholds, minimum holding period, stop loss / take profit,
feature windows, label horizon and the model's key hyperparameters. Each is a `ParamDef`
(type, bounds, step) in `SPACES`; the search samples from it (`distributions`), requests
are validated against it (`validate`, `narrow`) and variants are mutated inside it
(`mutate`). Nothing else in CLM hard-codes a bound.

Parameter names are flat (Optuna needs flat names) and say where a value goes:
- strategy rules: entry_threshold, exit_threshold, min_hold_bars, stop_loss, take_profit
- label: label_horizon
- feature windows: window_<family> (a family of app.ml.features.DEFAULT_WINDOWS)
- model hyperparameters: model_<name> (validated again by the trainer)
`decode` turns a flat dict into a `StrategyParams` (model params, windows, horizon, rules).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from app.ml.features import DEFAULT_WINDOWS, normalize_windows
from app.ml.trainers import InvalidParams, TrainerNotAvailable, get_trainer, trainer_windows

__all__ = [
    "SPACES",
    "ParamDef",
    "SpaceError",
    "StrategyParams",
    "StrategySpace",
    "TradingRules",
    "decode",
    "space_for",
]

Kind = Literal["int", "float", "categorical"]


class SpaceError(ValueError):
    """A strategy parameter is unknown or outside its declared space; `.field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class ParamDef:
    """One searchable parameter: kind, closed bounds [low, high], grid step, default."""

    name: str
    kind: Kind
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"{self.name}: categorical parameter needs choices")
        else:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"{self.name}: need low <= high, got {self.low}, {self.high}")
            if self.log and self.step is not None:
                raise ValueError(f"{self.name}: a log-scaled parameter cannot have a step")

    def check(self, value: Any) -> Any:
        """`value` coerced to this parameter's type; SpaceError if outside the space."""
        if self.kind == "categorical":
            assert self.choices is not None
            if value not in self.choices:
                raise SpaceError(self.name, f"{self.name} must be one of {list(self.choices)}, "
                                            f"got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer
                                                         | np.floating):
            raise SpaceError(self.name, f"{self.name} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise SpaceError(self.name, f"{self.name} must be finite, got {value!r}")
        if self.kind == "int":
            if not number.is_integer():
                raise SpaceError(self.name, f"{self.name} must be an integer, got {value!r}")
            number = int(number)
        assert self.low is not None and self.high is not None
        # Tolerance: grid values computed as low + k·step carry float rounding.
        eps = 1e-9 * max(1.0, abs(self.high - self.low))
        if not (self.low - eps <= number <= self.high + eps):
            raise SpaceError(self.name, f"{self.name} = {value!r} is outside [{self.low:g}, "
                                        f"{self.high:g}]")
        if self.step is not None:
            k = (number - self.low) / self.step
            if abs(k - round(k)) > 1e-6:
                raise SpaceError(self.name, f"{self.name} = {value!r} is not on the grid "
                                            f"{self.low:g} + k·{self.step:g}")
        return int(number) if self.kind == "int" else self.snap(number)

    def snap(self, value: float) -> Any:
        """Clip `value` into the bounds and round it onto the grid (int / step)."""
        if self.kind == "categorical":
            return value
        assert self.low is not None and self.high is not None
        v = min(max(float(value), self.low), self.high)
        if self.step is not None:
            v = self.low + round((v - self.low) / self.step) * self.step
            v = min(v, self.high)
            # Keep as many decimals as the step has, so 0.1 + 2·0.05 prints as 0.2.
            decimals = max(0, -math.floor(math.log10(self.step)) + 2) if self.step else 12
            v = round(v, decimals)
        if self.kind == "int":
            return round(v)
        return float(v)

    def distribution(self) -> Any:
        """The Optuna distribution for this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            assert self.choices is not None
            return CategoricalDistribution(list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=self.step)

    def mutate(self, value: Any, magnitude: float, rng: np.random.Generator) -> Any:
        """A neighbour of `value`: relative change uniform in ±magnitude, kept in the space.

        Integers move by at least one step when the draw is non-zero, so a ±20% mutation
        of `min_hold_bars = 2` can still change it. Categoricals switch with probability
        `magnitude`.
        """
        if self.kind == "categorical":
            assert self.choices is not None
            others = [c for c in self.choices if c != value]
            if others and rng.random() < magnitude:
                return others[int(rng.integers(len(others)))]
            return value
        factor = 1.0 + rng.uniform(-magnitude, magnitude)
        new = float(value) * factor
        if self.kind == "int":
            unit = self.step or 1
            if round(new) == value and factor != 1.0:
                new = value + (unit if factor > 1.0 else -unit)
        return self.snap(new)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default}
        if self.kind == "categorical":
            out["choices"] = list(self.choices or ())
        else:
            out.update({"low": self.low, "high": self.high, "step": self.step, "log": self.log})
        if self.doc:
            out["doc"] = self.doc
        return out


@dataclass(frozen=True)
class TradingRules:
    """How OOS probabilities become positions (see app.ml.evolution.strategy)."""

    entry_threshold: float = 0.55
    exit_threshold: float = 0.5
    min_hold_bars: int = 1
    stop_loss: float | None = None
    take_profit: float | None = None
    allow_short: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_threshold": self.entry_threshold,
            "exit_threshold": self.exit_threshold,
            "min_hold_bars": self.min_hold_bars,
            "stop_loss": self.stop_loss,
            "take_profit": self.take_profit,
            "allow_short": self.allow_short,
        }


@dataclass(frozen=True)
class StrategyParams:
    """A flat parameter dict decoded into what each part of the pipeline consumes."""

    model_type: str
    model_params: dict[str, Any]
    windows: dict[str, tuple[int, ...]]
    label_horizon: int
    rules: TradingRules

    def to_strategy_dict(self) -> dict[str, Any]:
        """The `strategy` a training job carries (windows, horizon, thresholds, risk)."""
        return {
            "windows": {k: list(v) for k, v in self.windows.items()},
            "label_horizon": self.label_horizon,
            "long_threshold": self.rules.entry_threshold,
            "short_threshold": round(1.0 - self.rules.entry_threshold, 10)
            if self.rules.allow_short else 0.0,
            "rules": self.rules.to_dict(),
        }


_RULE_NAMES = ("entry_threshold", "exit_threshold", "min_hold_bars", "stop_loss",
               "take_profit", "allow_short")


@dataclass(frozen=True)
class StrategySpace:
    """The searchable parameters of one model type plus fixed values for the rest.

    `params`: what the optimizer varies. `fixed`: flat values that are not searched
    (e.g. `{"take_profit": 0.0}` to switch take-profit off); every name must still be
    declared in the base space. `base_windows`: feature windows for families no
    `window_*` parameter controls.
    """

    model_type: str
    params: tuple[ParamDef, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    base_windows: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: dict(DEFAULT_WINDOWS)
    )

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in space for {self.model_type}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def param(self, name: str) -> ParamDef:
        for p in self.params:
            if p.name == name:
                return p
        raise SpaceError(name, f"unknown strategy parameter {name!r} for {self.model_type}; "
                               f"known: {sorted(self.names)}")

    def snap_all(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter snapped onto its grid (others passed through)."""
        declared = set(self.names)
        return {k: self.param(k).snap(v) if k in declared else v for k, v in params.items()}

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def defaults(self) -> dict[str, Any]:
        """Every searched parameter's default plus the fixed values."""
        out = {p.name: p.default for p in self.params}
        out.update(self.fixed)
        return out

    def validate(self, params: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Check a flat parameter dict against the space; fill defaults.

        Unknown names and out-of-space values raise SpaceError naming the parameter.
        With `partial=False` every searched parameter must be present.
        """
        if not isinstance(params, Mapping):
            raise SpaceError("params", "strategy params must be an object")
        out = self.defaults()
        known = set(self.names) | set(self.fixed)
        for key, value in params.items():
            if key not in known:
                raise SpaceError(str(key), f"unknown strategy parameter {key!r} for "
                                           f"{self.model_type}; known: {sorted(known)}")
            if key in self.fixed and key not in self.names:
                if value != self.fixed[key]:
                    raise SpaceError(key, f"{key} is fixed to {self.fixed[key]!r} in this space")
                continue
            out[key] = self.param(key).check(value)
        if not partial:
            missing = [n for n in self.names if n not in params]
            if missing:
                raise SpaceError(missing[0], f"missing strategy parameter {missing[0]!r}")
        decode(self, out)  # cross-parameter checks (windows, model params)
        return out

    def narrow(self, overrides: Mapping[str, Any] | None) -> StrategySpace:
        """A sub-space from a request: `{name: value}` fixes a parameter, `{name: {low,
        high, step?}}` narrows its bounds. Both must stay inside the declared space."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise SpaceError("space", "space overrides must be an object")
        params = {p.name: p for p in self.params}
        fixed = dict(self.fixed)
        for name, spec in overrides.items():
            base = self.param(str(name))
            if isinstance(spec, Mapping):
                if base.kind == "categorical":
                    choices = spec.get("choices")
                    if not isinstance(choices, list) or not choices:
                        raise SpaceError(name, f"{name}: give 'choices' (a non-empty list)")
                    for c in choices:
                        base.check(c)
                    params[name] = replace(base, choices=tuple(choices),
                                           default=choices[0] if base.default not in choices
                                           else base.default)
                    continue
                unknown = sorted(set(spec) - {"low", "high", "step"})
                if unknown:
                    raise SpaceError(name, f"{name}: unknown bound key(s) {unknown}")
                low = base.check(spec.get("low", base.low))
                high = base.check(spec.get("high", base.high))
                if low > high:
                    raise SpaceError(name, f"{name}: low {low} > high {high}")
                step = spec.get("step", base.step)
                if step is not None and (isinstance(step, bool) or not isinstance(
                        step, int | float) or step <= 0):
                    raise SpaceError(name, f"{name}: step must be a positive number")
                if base.kind == "int" and step is not None and float(step) != int(step):
                    raise SpaceError(name, f"{name}: step must be an integer")
                default = min(max(base.default, low), high)
                params[name] = replace(base, low=low, high=high, step=step,
                                       default=replace(base, low=low, high=high,
                                                       step=step).snap(default))
            else:
                fixed[name] = base.check(spec)
                params.pop(name, None)
        narrowed = StrategySpace(self.model_type, tuple(params.values()), fixed,
                                 dict(self.base_windows))
        decode(narrowed, narrowed.defaults())
        return narrowed

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored on the search so every worker decodes the same space."""
        return {
            "model_type": self.model_type,
            "params": [p.describe() for p in self.params],
            "fixed": dict(self.fixed),
            "base_windows": {k: list(v) for k, v in self.base_windows.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StrategySpace:
        params = []
        for p in data["params"]:
            kind = p["type"]
            params.append(ParamDef(
                name=p["name"], kind=kind, default=p["default"],
                low=p.get("low"), high=p.get("high"), step=p.get("step"),
                log=bool(p.get("log", False)),
                choices=tuple(p["choices"]) if kind == "categorical" else None,
                doc=p.get("doc", ""),
            ))
        return cls(
            model_type=str(data["model_type"]),
            params=tuple(params),
            fixed=dict(data.get("fixed") or {}),
            base_windows={k: tuple(v) for k, v in (data.get("base_windows") or {}).items()}
            or dict(DEFAULT_WINDOWS),
        )

    def mutate(self, params: Mapping[str, Any], magnitude: float,
               rng: np.random.Generator) -> dict[str, Any]:
        """Every searched parameter moved by a relative ±magnitude (see ParamDef.mutate)."""
        if not 0.0 < magnitude <= 1.0:
            raise SpaceError("magnitude", f"mutation magnitude must be in (0, 1], got "
                                          f"{magnitude!r}")
        out = dict(params)
        for p in self.params:
            out[p.name] = p.mutate(params.get(p.name, p.default), magnitude, rng)
        return self.validate(out)

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any],
                  rng: np.random.Generator) -> dict[str, Any]:
        """Uniform crossover: each searched parameter from `a` or `b` with equal odds."""
        child = {p.name: (a if rng.random() < 0.5 else b).get(p.name, p.default)
                 for p in self.params}
        return self.validate(child)


def _window_tuple(family: str, value: int) -> tuple[int, ...]:
    if family == "returns":
        # Always keep the one-bar return; the searched window is the momentum look-back.
        return (1, int(value)) if int(value) != 1 else (1,)
    if family == "macd":
        fast = max(1, int(value) // 2)
        return (fast, int(value), 9)
    return (int(value),)


def decode(space: StrategySpace, params: Mapping[str, Any]) -> StrategyParams:
    """Flat, validated parameters → model params, windows, label horizon, trading rules."""
    merged = {**space.fixed, **params}
    model_params: dict[str, Any] = {}
    windows: dict[str, Any] = dict(space.base_windows)
    rules: dict[str, Any] = {}
    label_horizon = 1
    for key, value in merged.items():
        if key.startswith("model_"):
            model_params[key[len("model_"):]] = value
        elif key.startswith("window_"):
            family = key[len("window_"):]
            if family not in DEFAULT_WINDOWS:
                raise SpaceError(key, f"{key}: unknown feature family {family!r}")
            windows[family] = _window_tuple(family, int(value))
        elif key == "label_horizon":
            label_horizon = int(value)
        elif key in _RULE_NAMES:
            rules[key] = value
        else:
            raise SpaceError(key, f"unknown strategy parameter {key!r}")
    if space.model_type != "other" or model_params.get("trainer"):
        try:
            trainer = get_trainer(space.model_type, model_params)
            checked = trainer.validate_params(model_params)
        except InvalidParams as exc:
            raise SpaceError(f"model_{exc.key}", str(exc)) from None
        except TrainerNotAvailable:
            pass  # the search's request check names what to install
        else:
            # A sequence model's input window (its lags) follows its look-back.
            windows = trainer_windows(trainer, checked, windows)
    try:
        norm_windows = normalize_windows(windows)
    except ValueError as exc:
        raise SpaceError("windows", str(exc)) from None
    entry = float(rules.get("entry_threshold", 0.55))
    exit_ = float(rules.get("exit_threshold", 0.5))
    # Zero switches a risk exit off (0 is the lower bound of the declared spaces).
    stop = rules.get("stop_loss")
    take = rules.get("take_profit")
    trading = TradingRules(
        entry_threshold=entry,
        exit_threshold=min(exit_, entry),
        min_hold_bars=int(rules.get("min_hold_bars", 1)),
        stop_loss=float(stop) if stop else None,
        take_profit=float(take) if take else None,
        allow_short=bool(rules.get("allow_short", True)),
    )
    return StrategyParams(space.model_type, model_params, norm_windows, label_horizon, trading)


# -- the declared spaces ----------------------------------------------------------------
def _common() -> list[ParamDef]:
    return [
        ParamDef("entry_threshold", "float", 0.55, 0.50, 0.70, step=0.01,
                 doc="enter long when P(up) >= t, short when P(up) <= 1 - t"),
        ParamDef("exit_threshold", "float", 0.50, 0.40, 0.60, step=0.01,
                 doc="leave a long when P(up) < t (short: > 1 - t); capped at entry"),
        ParamDef("min_hold_bars", "int", 1, 1, 24,
                 doc="bars a position is held before a signal exit (risk exits ignore it)"),
        ParamDef("stop_loss", "float", 0.0, 0.0, 0.10, step=0.005,
                 doc="exit when the trade's return at a close is <= -x (0 = off)"),
        ParamDef("take_profit", "float", 0.0, 0.0, 0.20, step=0.005,
                 doc="exit when the trade's return at a close is >= x (0 = off)"),
        ParamDef("label_horizon", "int", 1, 1, 12, doc="bars ahead the model predicts"),
        ParamDef("window_returns", "int", 12, 2, 96,
                 doc="momentum look-back in bars (ret_1 is always kept)"),
        ParamDef("window_volatility", "int", 24, 4, 96, step=4, doc="volatility window"),
        ParamDef("window_zscore", "int", 24, 4, 96, step=4, doc="price z-score window"),
    ]


SPACES: dict[str, StrategySpace] = {
    "xgboost": StrategySpace("xgboost", (
        *_common(),
        ParamDef("model_n_estimators", "int", 60, 20, 300, step=10, doc="boosting rounds"),
        ParamDef("model_max_depth", "int", 3, 2, 8, doc="tree depth"),
        ParamDef("model_learning_rate", "float", 0.1, 0.01, 0.3, log=True, doc="eta"),
    )),
    "lightgbm": StrategySpace("lightgbm", (
        *_common(),
        ParamDef("model_n_estimators", "int", 60, 20, 300, step=10, doc="boosting rounds"),
        ParamDef("model_num_leaves", "int", 15, 4, 63, doc="leaves per tree"),
        ParamDef("model_learning_rate", "float", 0.1, 0.01, 0.3, log=True),
    )),
    # The deep and RL types: their input window (model_lookback) sets the lag features;
    # budgets are small so a trial stays in seconds on a CPU worker.
    "nhits": StrategySpace("nhits", (
        *_common(),
        ParamDef("model_lookback", "int", 48, 16, 128, step=8, doc="input window, bars"),
        ParamDef("model_horizon", "int", 4, 1, 12, doc="bars the network forecasts"),
        ParamDef("model_hidden_size", "int", 64, 16, 256, step=16, doc="MLP units"),
        ParamDef("model_max_steps", "int", 200, 50, 600, step=50, doc="optimizer steps"),
        ParamDef("model_learning_rate", "float", 1e-3, 1e-4, 1e-2, log=True, doc="Adam"),
    )),
    "patchtst": StrategySpace("patchtst", (
        *_common(),
        ParamDef("model_lookback", "int", 48, 16, 128, step=8, doc="input window, bars"),
        ParamDef("model_patch_len", "int", 8, 4, 16, step=2, doc="bars per patch"),
        ParamDef("model_hidden_size", "int", 32, 16, 64, step=16, doc="transformer width"),
        ParamDef("model_max_steps", "int", 200, 50, 600, step=50, doc="optimizer steps"),
        ParamDef("model_learning_rate", "float", 1e-3, 1e-4, 1e-2, log=True, doc="Adam"),
    )),
    "rl_v2": StrategySpace("rl_v2", (
        *_common(),
        ParamDef("model_lookback", "int", 16, 4, 64, step=4, doc="lagged returns observed"),
        ParamDef("model_total_timesteps", "int", 10_000, 2_000, 40_000, step=2_000,
                 doc="environment steps"),
        ParamDef("model_learning_rate", "float", 3e-4, 1e-4, 3e-3, log=True, doc="Adam"),
        ParamDef("model_gamma", "float", 0.5, 0.0, 0.99, step=0.01, doc="discount per bar"),
        ParamDef("model_ent_coef", "float", 0.01, 0.0, 0.05, step=0.005, doc="entropy bonus"),
    )),
    "rl_v3": StrategySpace("rl_v3", (
        *_common(),
        ParamDef("model_lookback", "int", 16, 4, 64, step=4, doc="lagged returns observed"),
        ParamDef("model_total_timesteps", "int", 3_000, 1_000, 10_000, step=500,
                 doc="environment steps"),
        ParamDef("model_learning_rate", "float", 3e-4, 1e-4, 3e-3, log=True, doc="Adam"),
        ParamDef("model_gamma", "float", 0.5, 0.0, 0.99, step=0.01, doc="discount per bar"),
    )),
}


def space_for(model_type: str) -> StrategySpace:
    """The declared space of `model_type`; SpaceError naming `model_type` if none."""
    try:
        return SPACES[str(model_type)]
    except KeyError:
        raise SpaceError("model_type", f"no strategy space for model type {model_type!r}; "
                                       f"searchable: {sorted(SPACES)}") from None
