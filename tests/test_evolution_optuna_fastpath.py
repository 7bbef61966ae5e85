"""The search's Optuna fast paths store exactly what Optuna's public API would.

`search.ask_generation` samples a whole generation against one view of the study and
writes each child in one transaction; `search.tell_trial` writes a result in one
transaction. Both are checked here against `study.ask` + `suggest` and `study.tell` +
`Trial.set_constraint` on twin studies with the same seeds.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from app.services.evolution import optuna_ask, search

DISTS = {
    "a": IntDistribution(2, 96),
    "b": FloatDistribution(0.5, 0.6, step=0.01),
    "c": FloatDistribution(0.01, 0.3, log=True),
    "d": IntDistribution(4, 4),  # single: never sampled
}
POP = 6


def _values(params: dict[str, Any]) -> tuple[list[float], dict[str, float]]:
    x = float(params["a"])
    values = [-abs(x - 40) / 40 + params["b"], params["c"]]
    return values, {"min_trades": (30 - x) / 30, "evaluation_ok": 0.0}


def _tell_public(study: Any, trial_id: int, values: list[float],
                 constraints: dict[str, float]) -> None:
    trial = optuna.trial.Trial(study, trial_id)
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    study.tell(trial, values)


def _frozen(study: Any) -> list[Any]:
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


@pytest.fixture(autouse=True)
def _fresh_storages() -> Any:
    search.dispose_storages()
    yield
    search.dispose_storages()


def test_batched_ask_and_one_transaction_tell_match_optuna(db_url: str) -> None:
    directions = ["maximize", "minimize"]
    search.create_study(db_url, "fast", directions)
    search.create_study(db_url, "public", directions)
    for generation in range(3):
        seed = 1000 + generation
        fast = search.load_study(db_url, "fast", POP, seed)
        public = search.load_study(db_url, "public", POP, seed)
        asked = search.ask_generation(fast, DISTS, POP, generation)
        reference = optuna_ask._ask_one_by_one(public, DISTS, POP, generation)
        assert [t.params for t in asked] == [t.params for t in reference]
        assert [t.number for t in asked] == [t.number for t in reference]
        if generation:
            assert all(t.parents for t in asked)  # lineage recovered from the parents
        for fast_trial, ref_trial in zip(asked, reference, strict=True):
            values, constraints = _values(fast_trial.params)
            assert search.tell_trial(db_url, "fast", fast_trial.trial_id, values,
                                     constraints, population=POP, seed=seed,
                                     user_attrs={"clm_candidate_id": fast_trial.number})
            _tell_public(public, ref_trial.trial_id, values, constraints)
        # A second tell of a finished trial is a no-op.
        assert not search.tell_trial(db_url, "fast", asked[0].trial_id, [0.0, 0.0], {},
                                     population=POP, seed=seed)
    fast_trials, public_trials = _frozen(fast), _frozen(public)
    assert len(fast_trials) == len(public_trials) == 3 * POP
    ga_key = optuna.samplers.NSGAIISampler._get_generation_key()
    for f, p in zip(fast_trials, public_trials, strict=True):
        assert f.state == p.state == TrialState.COMPLETE
        assert f.params == p.params and f.distributions == p.distributions
        assert f.values == p.values
        assert f.constraints == p.constraints
        assert f.system_attrs[ga_key] == p.system_attrs[ga_key]
        assert f.system_attrs[search.CLM_GENERATION_ATTR] == \
            p.system_attrs[search.CLM_GENERATION_ATTR]
        assert f.user_attrs["clm_candidate_id"] == f.number
    # The NSGA-II parent populations chosen from those trials are the same too.
    sampler = optuna.samplers.NSGAIISampler(population_size=POP, seed=0)
    for gen in (1, 2):
        assert [t.number for t in sampler.get_parent_population(fast, gen)] == \
            [t.number for t in sampler.get_parent_population(public, gen)]


def test_fixed_trials_count_in_nsga2s_generation(sqlite_url: str) -> None:
    """A variant's preset parameters are evaluated as members of generation 0: tagged
    with NSGA-II's generation, so the next generation breeds from a full population.
    (`study.enqueue_trial` + `ask` leaves a fully fixed trial untagged, and the next
    generation would then be sampled at random.)"""
    search.create_study(sqlite_url, "fixed", ["maximize", "minimize"])
    fixed = [{"a": 40, "b": 0.55, "c": 0.1, "d": 4}, {"a": 12, "b": 0.5, "c": 0.2, "d": 4}]
    study = search.load_study(sqlite_url, "fixed", POP, 7)
    asked = search.ask_generation(study, DISTS, POP, 0, fixed=fixed)
    assert [t.params for t in asked[:2]] == fixed
    assert len({tuple(sorted(t.params.items())) for t in asked}) == POP
    for t in asked:
        values, constraints = _values(t.params)
        search.tell_trial(sqlite_url, "fixed", t.trial_id, values, constraints,
                          population=POP, seed=7)
    ga_key = optuna.samplers.NSGAIISampler._get_generation_key()
    study = search.load_study(sqlite_url, "fixed", POP, 8)
    assert all(t.system_attrs[ga_key] == 0 for t in study.get_trials(deepcopy=False))
    children = search.ask_generation(study, DISTS, POP, 1)
    assert all(t.parents for t in children)
    assert {t.system_attrs[ga_key] for t in study.get_trials(deepcopy=False)} == {0, 1}


def test_fast_tell_of_a_failure_and_of_a_nan(sqlite_url: str) -> None:
    search.create_study(sqlite_url, "fails", ["maximize"])
    study = search.load_study(sqlite_url, "fails", 2, 0)
    one, two = search.ask_generation(study, {"a": IntDistribution(1, 9)}, 2, 0)
    assert search.tell_trial(sqlite_url, "fails", one.trial_id, None, {"x": 1.0},
                             population=2, seed=0)
    assert search.tell_trial(sqlite_url, "fails", two.trial_id, [math.nan], {"x": 0.0},
                             population=2, seed=0)
    trials = _frozen(search.load_study(sqlite_url, "fails", 2, 0))
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.values is None for t in trials)


def test_fast_tell_replaces_what_an_interrupted_tell_left(db_url: str) -> None:
    """Rows written by an earlier attempt that did not finish the trial (e.g. Optuna's
    one-commit-per-call path dying half-way) are overwritten, on both backends."""
    search.create_study(db_url, "left", ["maximize", "minimize"])
    study = search.load_study(db_url, "left", 2, 0)
    (asked,) = search.ask_generation(study, {"a": IntDistribution(1, 9)}, 1, 0)
    storage = search.storage_for(db_url)
    storage.set_trial_system_attr(asked.trial_id, "constraints:min_trades", 5.0)
    storage.set_trial_user_attr(asked.trial_id, "clm_candidate_id", -1)
    assert search.tell_trial(db_url, "left", asked.trial_id, [0.5, 0.25],
                             {"min_trades": -1.0, "evaluation_ok": 0.0}, population=2, seed=0,
                             user_attrs={"clm_candidate_id": 7})
    (trial,) = _frozen(search.load_study(db_url, "left", 2, 0))
    assert trial.state == TrialState.COMPLETE and trial.values == [0.5, 0.25]
    assert trial.constraints == {"min_trades": -1.0, "evaluation_ok": 0.0}
    assert trial.user_attrs == {"clm_candidate_id": 7}
    assert not search.tell_trial(db_url, "left", asked.trial_id, [9.0, 9.0], {},
                                 population=2, seed=0)


def test_tell_in_the_callers_transaction(db_url: str) -> None:
    """A caller recording the result in CLM's tables can tell in the same commit; a
    rollback leaves the trial running."""
    from app.db import transaction

    search.create_study(db_url, "joint", ["maximize"])
    study = search.load_study(db_url, "joint", 2, 0)
    (asked,) = search.ask_generation(study, {"a": IntDistribution(1, 9)}, 1, 0)
    with pytest.raises(RuntimeError), transaction(db_url) as session:
        assert search.tell_in_session(session, asked.trial_id, [1.0], {"x": 0.0})
        raise RuntimeError("the caller's record failed")
    assert search.storage_for(db_url).get_trial(asked.trial_id).state == TrialState.RUNNING
    with transaction(db_url) as session:
        assert search.tell_in_session(session, asked.trial_id, [1.0], {"x": 0.0},
                                      user_attrs={"clm_candidate_id": 3})
    trial = search.storage_for(db_url).get_trial(asked.trial_id)
    assert trial.state == TrialState.COMPLETE and trial.values == [1.0]
    assert trial.constraints == {"x": 0.0} and trial.user_attrs == {"clm_candidate_id": 3}
    with transaction(db_url) as session:
        assert not search.tell_in_session(session, asked.trial_id, [2.0])
