"""Asking Optuna's NSGA-II for one generation of trials (part of the Optuna glue; see
app/services/evolution/search.py for why Optuna and what each trial costs).

Owns `ask_generation` (a whole generation sampled against one view of the study and
written in one transaction, drawing the values `study.ask` + `suggest` would draw),
`AskedTrial`, the recovery of each child's parents, `CLM_GENERATION_ATTR` (CLM's
generation tag on every asked trial) and `orphaned_trials` (by that tag, the trials a
crashed coordinator asked but never recorded, adopted by the next one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.services.evolution.optuna_storage import retry_transient

__all__ = ["CLM_GENERATION_ATTR", "AskedTrial", "ask_generation", "orphaned_trials"]

CLM_GENERATION_ATTR = "clm:generation"


@dataclass(frozen=True)
class AskedTrial:
    number: int
    trial_id: int
    params: dict[str, Any]
    parents: list[int]  # Optuna trial numbers the child inherited from (see _parents)


def _parents(params: Mapping[str, Any], parent_pop: Sequence[Any]) -> list[int]:
    """Which members of the parent population a child inherited from.

    NSGA-II (uniform crossover) copies each parameter from one of two parents and
    mutates a few; Optuna does not record the pair, so it is recovered here as the
    pair that explains the most of the child's values exactly (one parent when a copy
    explains everything). Recorded for lineage; the optimizer does not depend on it.
    """
    if not parent_pop:
        return []
    names = list(params)
    best: tuple[int, list[int]] = (-1, [])
    for i, a in enumerate(parent_pop):
        match_a = [params[n] == a.params.get(n) for n in names]
        if all(match_a):
            return [a.number]
        for b in parent_pop[i + 1:]:
            covered = sum(ma or params[n] == b.params.get(n) for n, ma in zip(names, match_a,
                                                                                strict=True))
            if covered > best[0]:
                best = (covered, [a.number, b.number])
    return best[1] if best[0] > 0 else []


def ask_generation(
    study: Any,
    distributions: Mapping[str, Any],
    count: int,
    generation: int,
    *,
    fixed: Sequence[Mapping[str, Any]] = (),
) -> list[AskedTrial]:
    """Ask `count` trials of one generation (params sampled now, at ask time).

    `fixed`: parameter sets to evaluate first (used by variant searches), the rest are
    sampled by NSGA-II. Every asked trial is tagged with CLM's generation.

    The whole generation is sampled against one view of the study: the parent
    population, the relative search space and the generation number are the same for
    every child of a generation (nothing of the study finishes while the coordinator
    holds its lease), so they are computed once instead of once per `study.ask`. The
    children are then written together — trials, params and system attributes — in one
    storage transaction instead of a commit per parameter and attribute. The values
    drawn are those `study.ask` + `suggest` would draw: the same sampler calls in the
    same order (sample_relative, then sample_independent for what it did not cover).
    Preset (`fixed`) children carry NSGA-II's generation tag like the sampled ones, so
    they count as members of their generation.
    """
    if count <= 0:
        return []
    sampler = study.sampler
    if not _batch_capable(sampler):
        return _ask_one_by_one(study, distributions, count, generation, fixed=fixed)
    from optuna.distributions import _get_single_value
    from optuna.trial import FrozenTrial, TrialState

    storage = study._storage
    study_id = study._study_id
    dists = dict(distributions)
    ga_key = sampler._get_generation_key()
    ga_generation = _ga_generation(study, sampler)
    parent_pop = retry_transient(lambda: sampler.get_parent_population(study, ga_generation))
    base_attrs = {ga_key: ga_generation, CLM_GENERATION_ATTR: generation}
    probe = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None,
                        datetime_start=None, datetime_complete=None, params={},
                        distributions={}, user_attrs={}, system_attrs=dict(base_attrs),
                        intermediate_values={}, trial_id=-1)
    search_space = sampler.infer_relative_search_space(study, probe) if parent_pop else {}

    # NSGA-II's sample_relative is "look up the generation's parents, then run the child
    # generation strategy on them"; the lookup is done once above, the strategy per child.
    child_strategy = getattr(sampler, "_child_generation_strategy", None)

    # Optuna's own order, kept so that a seed draws the same children either way: the
    # ask that selects the parents uses them in elite order, every later ask reads the
    # cached selection back in trial order.
    pops = [parent_pop]

    def sample_relative() -> dict[str, Any]:
        if not parent_pop:
            return {}
        if child_strategy is None:
            return dict(sampler.sample_relative(study, probe, search_space))
        out = dict(child_strategy(study, search_space, pops[-1]))
        if len(pops) == 1:
            pops.append(retry_transient(
                lambda: sampler.get_parent_population(study, ga_generation)))
        return out

    children: list[dict[str, Any]] = []
    for i in range(count):
        preset = dict(fixed[i]) if i < len(fixed) else {}
        relative: dict[str, Any] | None = None  # sampled at the first free parameter
        params: dict[str, Any] = {}
        for name, dist in dists.items():
            if name in preset:
                value = preset[name]
            elif dist.single():
                value = _get_single_value(dist)
            else:
                if relative is None:
                    relative = sample_relative()
                if name in relative and name in search_space and dist._contains(
                        dist.to_internal_repr(relative[name])):
                    value = relative[name]
                else:
                    value = sampler.sample_independent(study, probe, name, dist)
            dist.to_internal_repr(value)  # validates (NaN, type), as Trial._suggest does
            params[name] = value
        children.append(params)

    _check_distributions(study, dists)
    rdb = getattr(storage, "_backend", storage)
    if _bulk_insert_available(rdb):
        ids = retry_transient(lambda: _insert_trials(rdb, study_id, dists, children, base_attrs))
    else:
        ids = []
        for params in children:
            template = FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None,
                datetime_start=datetime.now(), datetime_complete=None, params=params,
                distributions=dists, user_attrs={}, system_attrs=dict(base_attrs),
                intermediate_values={}, trial_id=-1)
            trial_id = retry_transient(lambda t=template: storage.create_new_trial(study_id, t))
            ids.append((trial_id, storage.get_trial(trial_id).number))
    return [AskedTrial(number, tid, params, _parents(params, parent_pop))
            for (tid, number), params in zip(ids, children, strict=True)]


def _check_distributions(study: Any, dists: Mapping[str, Any]) -> None:
    """What Optuna checks when a parameter is set: a name keeps a compatible
    distribution across the study (here against the trials already read)."""
    from optuna.distributions import check_distribution_compatibility

    seen: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            seen.setdefault(name, dist)
    for name, dist in dists.items():
        if name in seen:
            check_distribution_compatibility(seen[name], dist)


def _bulk_insert_available(storage: Any) -> bool:
    try:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
    except ImportError:
        return False
    return isinstance(storage, RDBStorage) and all(hasattr(models, name) for name in (
        "StudyModel", "TrialModel", "TrialParamModel", "TrialSystemAttributeModel"))


def _insert_trials(
    storage: Any,
    study_id: int,
    dists: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]],
    system_attrs: Mapping[str, Any],
) -> list[tuple[int, int]]:
    """Write a generation's trials (RUNNING, params, system attributes) in one
    transaction; returns (trial_id, number) per child.

    The rows are exactly those RDBStorage.create_new_trial(template_trial=...) writes,
    numbered the way it numbers them (trials of the study before this one) under the same
    lock on the study row — one transaction and a few bulk statements instead of ~35
    statements and a commit per trial.
    """
    import json

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState
    from sqlalchemy import func, insert

    dist_json = {name: distribution_to_json(dist) for name, dist in dists.items()}
    attrs_json = {key: json.dumps(value) for key, value in system_attrs.items()}
    trials = models.TrialModel.__table__
    with _create_scoped_session(storage.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        before = session.query(func.count(models.TrialModel.trial_id)).filter(
            models.TrialModel.study_id == study_id).scalar() or 0
        now = datetime.now()
        created = session.execute(
            insert(trials).returning(trials.c.trial_id, trials.c.number,
                                     sort_by_parameter_order=True),
            [{"study_id": study_id, "number": before + i, "state": TrialState.RUNNING,
              "datetime_start": now, "datetime_complete": None}
             for i in range(len(children))]).all()
        ids = [(int(row.trial_id), int(row.number)) for row in created]
        session.execute(insert(models.TrialParamModel.__table__), [
            {"trial_id": tid, "param_name": name,
             "param_value": dists[name].to_internal_repr(value),
             "distribution_json": dist_json[name]}
            for (tid, _n), params in zip(ids, children, strict=True)
            for name, value in params.items()])
        session.execute(insert(models.TrialSystemAttributeModel.__table__), [
            {"trial_id": tid, "key": key, "value_json": value}
            for tid, _n in ids for key, value in attrs_json.items()])
    return ids


def _batch_capable(sampler: Any) -> bool:
    """Samplers whose generation state the batched ask reproduces (Optuna's GA samplers:
    NSGA-II on Optuna >= 4), without a constraints function run after trials."""
    try:
        from optuna.samplers._ga import BaseGASampler
    except ImportError:
        return False
    return isinstance(sampler, BaseGASampler) and hasattr(sampler, "get_parent_population") \
        and getattr(sampler, "_constraints_func", None) is None


def _ga_generation(study: Any, sampler: Any) -> int:
    """The generation Optuna's GA sampler gives a new trial (BaseGASampler's rule): the
    highest generation among complete trials, or the next one once it holds a full
    population."""
    from optuna.trial import TrialState

    key = sampler._get_generation_key()
    max_generation, count = 0, 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        g = t.system_attrs.get(key, -1)
        if g > max_generation:
            max_generation, count = g, 1
        elif g == max_generation:
            count += 1
    population = sampler.population_size
    return max_generation + 1 if population is not None and count >= population \
        else max_generation


def _ask_one_by_one(
    study: Any,
    distributions: Mapping[str, Any],
    count: int,
    generation: int,
    *,
    fixed: Sequence[Mapping[str, Any]] = (),
) -> list[AskedTrial]:
    """`study.ask` per trial (any other sampler; one commit per parameter)."""
    for params in fixed[:count]:
        retry_transient(lambda p=params: study.enqueue_trial(dict(p), skip_if_exists=False))
    asked: list[AskedTrial] = []
    for _ in range(count):
        trial = retry_transient(lambda: study.ask(dict(distributions)))
        retry_transient(lambda t=trial: study._storage.set_trial_system_attr(
            t._trial_id, CLM_GENERATION_ATTR, generation))
        asked.append(AskedTrial(trial.number, trial._trial_id, dict(trial.params), []))
    return asked


def orphaned_trials(study: Any, generation: int) -> list[AskedTrial]:
    """Trials a crashed coordinator asked for this generation but never recorded."""
    from optuna.trial import TrialState

    return [AskedTrial(t.number, t._trial_id, dict(t.params), [])
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.system_attrs.get(CLM_GENERATION_ATTR) == generation]
