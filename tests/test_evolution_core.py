"""Pure parts of strategy evolution: spaces, trading rules, objectives, front, DSR."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.analysis.objectives import (
    Constraints,
    constraint_values,
    is_feasible,
    objective_values,
    parse_objectives,
)
from app.analysis.overfitting import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    holdout_split,
    holdout_verdict,
    probabilistic_sharpe_ratio,
)
from app.analysis.selection import choose, dominates, hypervolume, pareto_front
from app.ml.evolution.space import SpaceError, TradingRules, decode, space_for
from app.ml.evolution.strategy import positions_from_probabilities

DIRS = ["maximize", "minimize"]

metrics_st = st.fixed_dictionaries({
    "sharpe": st.floats(-5, 5, allow_nan=False),
    "max_drawdown": st.floats(0, 1, allow_nan=False),
    "trades": st.integers(0, 200),
})


@settings(max_examples=200, deadline=None)
@given(st.lists(metrics_st, min_size=0, max_size=40))
def test_front_is_non_dominated_feasible_and_complete(trials: list[dict]) -> None:
    cons = Constraints(min_trades=50)
    values = [objective_values(m, ["sharpe", "max_drawdown"]) for m in trials]
    feasible = [is_feasible(constraint_values(m, cons)) for m in trials]
    front = pareto_front(values, DIRS, feasible)
    # every member satisfies the constraints (trades >= 50)
    assert all(trials[i]["trades"] >= 50 for i in front)
    # no member is dominated by any feasible point
    for i in front:
        assert not any(dominates(values[j], values[i], DIRS)
                       for j in range(len(trials)) if feasible[j])
    # every feasible non-member is dominated by a member (the front is complete)
    for j in range(len(trials)):
        if feasible[j] and j not in front:
            assert any(dominates(values[i], values[j], DIRS) for i in front)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 5), st.floats(0, 0.99)), min_size=1, max_size=15),
       st.tuples(st.floats(0.01, 5), st.floats(0, 0.99)))
def test_hypervolume_matches_wfg_and_never_shrinks(points: list, extra: tuple) -> None:
    from optuna._hypervolume import compute_hypervolume

    ref = [0.0, 1.0]
    hv = hypervolume(points, DIRS, ref)
    loss = np.array([[-s, d] for s, d in points])
    assert hv == pytest.approx(compute_hypervolume(loss, np.array([0.0, 1.0])), rel=1e-9)
    assert hypervolume([*points, extra], DIRS, ref) >= hv - 1e-12


def test_hypervolume_exact_small_case() -> None:
    # Two points (sharpe, dd): (2, 0.5) and (1, 0.2), reference (0, 1):
    # union of [0,2]x[0.5,1] and [0,1]x[0.2,1] = 1.0 + 0.3 = 1.3
    assert hypervolume([[2, 0.5], [1, 0.2]], DIRS, [0, 1]) == pytest.approx(1.3)
    assert hypervolume([[-1, 0.5]], DIRS, [0, 1]) == 0.0  # worse than the reference


# -- trading rules ----------------------------------------------------------------------
def _series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, n), 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 200), st.integers(0, 10_000), st.integers(1, 8),
       st.sampled_from([0.0, 0.01, 0.03]), st.sampled_from([0.0, 0.02, 0.05]),
       st.floats(0.5, 0.7), st.floats(0.3, 0.6), st.data())
def test_positions_are_causal(n: int, seed: int, hold: int, stop: float, take: float,
                              entry: float, exit_: float, data: st.DataObject) -> None:
    proba, close = _series(n, seed)
    rules = TradingRules(entry, min(exit_, entry), hold, stop or None, take or None)
    pos = positions_from_probabilities(proba, close, rules)
    t = data.draw(st.integers(0, n - 1))
    p2, c2 = proba.copy(), close.copy()
    rng = np.random.default_rng(seed + 1)
    p2[t + 1:] = rng.uniform(0, 1, n - t - 1)
    c2[t + 1:] *= rng.uniform(0.5, 1.5, n - t - 1)
    pos2 = positions_from_probabilities(p2, c2, rules)
    assert np.array_equal(pos[: t + 1], pos2[: t + 1])
    assert set(np.unique(pos)) <= {-1.0, 0.0, 1.0}


def test_vectorized_hysteresis_equals_the_loop() -> None:
    for seed in range(50):
        proba, close = _series(300, seed)
        fast = TradingRules(0.58, 0.47)
        # An unreachable stop loss forces the loop path with identical rules.
        slow = TradingRules(0.58, 0.47, stop_loss=1e9)
        assert np.array_equal(positions_from_probabilities(proba, close, fast),
                              positions_from_probabilities(proba, close, slow))


def test_stop_loss_take_profit_and_min_hold() -> None:
    close = np.array([100, 100, 97, 97, 100, 104, 104, 104], dtype=float)
    proba = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # stop at -2%: entered at 100 (bar 0), 97 at bar 2 stops it; flat that bar, re-enter
    # at bar 3 (97), take profit +5% is hit at 104 (bar 5).
    pos = positions_from_probabilities(close=close, proba=proba,
                                       rules=TradingRules(0.6, 0.5, 1, 0.02, 0.05))
    assert pos.tolist() == [1, 1, 0, 1, 1, 0, 1, 1]
    # min hold: a long entered at bar 0 is kept through exit signals until bar 3
    proba = np.array([0.9, 0.1, 0.1, 0.1, 0.1])
    pos = positions_from_probabilities(proba, np.full(5, 100.0),
                                       TradingRules(0.6, 0.5, 3, allow_short=False))
    assert pos.tolist() == [1, 1, 1, 0, 0]


# -- spaces ----------------------------------------------------------------------------
def test_space_validates_types_bounds_steps_and_names() -> None:
    space = space_for("xgboost")
    ok = space.validate(space.defaults())
    assert decode(space, ok).rules.entry_threshold == 0.55
    for bad, field in [({"entry_threshold": 0.9}, "entry_threshold"),
                       ({"min_hold_bars": 2.5}, "min_hold_bars"),
                       ({"stop_loss": 0.0123}, "stop_loss"),
                       ({"nope": 1}, "nope")]:
        with pytest.raises(SpaceError) as err:
            space.validate({**space.defaults(), **bad})
        assert err.value.field == field
    with pytest.raises(SpaceError):
        space_for("other")  # a plug-in brings no declared space


def test_narrow_stays_inside_the_declared_space() -> None:
    space = space_for("xgboost")
    narrowed = space.narrow({"window_returns": {"low": 30, "high": 50}, "stop_loss": 0.0})
    assert narrowed.param("window_returns").low == 30
    assert "stop_loss" not in narrowed.names and narrowed.fixed["stop_loss"] == 0.0
    with pytest.raises(SpaceError):
        space.narrow({"window_returns": {"low": 1, "high": 500}})


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.5))
def test_mutation_is_bounded_and_stays_in_space(seed: int, magnitude: float) -> None:
    space = space_for("xgboost")
    base = space.defaults()
    child = space.mutate(base, magnitude, np.random.default_rng(seed))
    space.validate(child)
    for p in space.params:
        if p.kind == "float" and base[p.name] > 0 and p.step is None:
            assert abs(child[p.name] / base[p.name] - 1) <= magnitude + 1e-9


def test_crossover_takes_each_value_from_a_parent() -> None:
    space = space_for("xgboost")
    rng = np.random.default_rng(3)
    a = space.mutate(space.defaults(), 0.5, rng)
    b = space.mutate(space.defaults(), 0.5, rng)
    child = space.crossover(a, b, rng)
    assert all(child[n] in (a[n], b[n]) for n in space.names)


def test_objectives_parse_and_values() -> None:
    assert parse_objectives(None) == ["sharpe", "max_drawdown"]
    with pytest.raises(ValueError):
        parse_objectives(["sharpe"])
    with pytest.raises(ValueError):
        parse_objectives(["sharpe", "alpha"])
    m = {"sharpe": 1.5, "max_drawdown": 0.1, "profit_factor": None, "trades": 3,
         "turnover": 0.2}
    assert objective_values(m, ["profit_factor", "turnover"]) == [10.0, 0.2]
    assert constraint_values({"trades": 49}, Constraints())["min_trades"] > 0
    assert constraint_values({"trades": 50}, Constraints())["min_trades"] <= 0


# -- overfitting -----------------------------------------------------------------------
def test_deflated_sharpe_penalises_many_trials() -> None:
    rng = np.random.default_rng(0)
    few = deflated_sharpe_ratio(0.1, 1000, list(rng.normal(0, 0.03, 5)))
    many = deflated_sharpe_ratio(0.1, 1000, list(rng.normal(0, 0.03, 500)))
    assert 0 <= many["dsr"] < few["dsr"] <= 1
    assert many["sr0"] > few["sr0"] > 0
    # With one trial there is nothing to deflate: DSR equals PSR against 0.
    one = deflated_sharpe_ratio(0.05, 500, [0.05])
    assert one["dsr"] == pytest.approx(probabilistic_sharpe_ratio(0.05, 0.0, 500))
    # Bailey & López de Prado's E[max] for N=100, V=1 is about 2.5
    assert expected_max_sharpe(100, 1.0) == pytest.approx(2.5, abs=0.05)


def test_holdout_split_and_verdict() -> None:
    assert holdout_split(1000, 0.2) == 800
    assert holdout_split(300, 0.2, min_bars=100) == 200
    assert holdout_verdict(2.0, 1.5).collapsed is False
    assert holdout_verdict(2.0, 0.5).collapsed is True
    assert holdout_verdict(2.0, -0.1).collapsed is True
    assert holdout_verdict(-1.0, -2.0).collapsed is False
    assert math.isnan(probabilistic_sharpe_ratio(0.1, 0.0, 1))


def test_choose_weighs_drawdown_more_in_volatile_regimes() -> None:
    risky = {"metrics": {"sharpe": 2.0, "max_drawdown": 0.3},
             "regime_metrics": {"volatile_up": {"bars": 100, "sharpe": 2.0,
                                                "max_drawdown": 0.30},
                                "calm_up": {"bars": 100, "sharpe": 3.0, "max_drawdown": 0.05}}}
    safe = {"metrics": {"sharpe": 1.5, "max_drawdown": 0.1},
            "regime_metrics": {"volatile_up": {"bars": 100, "sharpe": 1.2,
                                               "max_drawdown": 0.05},
                               "calm_up": {"bars": 100, "sharpe": 1.0, "max_drawdown": 0.04}}}
    assert choose([risky, safe], regime="calm_up")[0] == 0
    assert choose([risky, safe], regime="volatile_up")[0] == 1
    # A preference that ignores drawdown flips the volatile choice.
    prefs = {"volatile": {"sharpe": 1.0, "max_drawdown": 0.0}}
    assert choose([risky, safe], regime="volatile_up", preferences=prefs)[0] == 0
