"""Optuna glue: NSGA-II sampler over an RDBStorage that lives in the CLM database.

Owns `storage_for` (one RDBStorage per process and URL), `create_study` / `load_study`,
`ask_generation` (one generation of trials, params fixed at ask time), `tell_trial`
(idempotent: a finished trial is never told twice) and `trial_state`.

Why Optuna rather than pymoo: Optuna's NSGA-II keeps the whole population state in SQL
storage (generation and parent-population caches are trial/study system attributes),
so any worker process can ask or tell with nothing but the database URL — exactly the
distributed, crash-tolerant shape the search needs. pymoo's NSGA-II keeps its population
in a Python object that would have to be pickled between tasks (CLM forbids pickle) and is
not installed. Optuna is already a dependency and supports constrained domination via
`Trial.set_constraint`.

The storage URL is the CLM database URL itself (same SQLite file, or the same PostgreSQL
database); CLM's Alembic uses its own version table, Optuna keeps `alembic_version` and
its tables (studies, trials, ...), and migrations/env.py compares only CLM's tables.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

__all__ = [
    "AskedTrial",
    "ask_generation",
    "create_study",
    "load_study",
    "make_sampler",
    "storage_for",
    "tell_trial",
    "trial_state",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_storages: dict[tuple[int, str], Any] = {}
T = TypeVar("T")

CLM_GENERATION_ATTR = "clm:generation"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_for(database_url: str) -> Any:
    """The process-wide Optuna RDBStorage on the CLM database (created on first use).

    SQLite: a 30 s busy timeout so concurrent workers wait for the write lock instead of
    failing; WAL mode is already set on the file by CLM's engine.
    """
    key = (os.getpid(), database_url)
    storage = _storages.get(key)
    if storage is not None:
        return storage
    with _lock:
        storage = _storages.get(key)
        if storage is None:
            import optuna

            _quiet_optuna()
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if database_url.startswith("sqlite"):
                kwargs = {"connect_args": {"timeout": 30}}
            storage = _retry(lambda: optuna.storages.RDBStorage(database_url,
                                                                 engine_kwargs=kwargs))
            _storages[key] = storage
    return storage


def dispose_storages() -> None:
    """Drop cached storages (after fork, or when a test switches databases)."""
    with _lock:
        for (pid, _url), storage in list(_storages.items()):
            if pid == os.getpid():
                storage.engine.dispose()
        _storages.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _storages.clear())


def _retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry on transient lock errors (SQLite "database is locked", PG deadlocks)."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            text = str(exc).lower()
            if i == attempts - 1 or not ("locked" in text or "deadlock" in text
                                         or "could not serialize" in text):
                raise
            log.info("optuna storage busy (%s); retrying", exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def make_sampler(population: int, seed: int) -> Any:
    """NSGA-II with the given population; constraints come from Trial.set_constraint."""
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


def create_study(database_url: str, study_name: str, directions: Sequence[str]) -> None:
    """Create the search's study (idempotent: an existing study is kept)."""
    import optuna

    storage = storage_for(database_url)
    _retry(lambda: optuna.create_study(storage=storage, study_name=study_name,
                                       directions=list(directions), load_if_exists=True))


def load_study(database_url: str, study_name: str, population: int, seed: int) -> Any:
    import optuna

    storage = storage_for(database_url)
    return _retry(lambda: optuna.load_study(study_name=study_name, storage=storage,
                                            sampler=make_sampler(population, seed)))


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

    `fixed`: parameter sets to evaluate first (enqueued; used by variant searches), the
    rest are sampled by NSGA-II. Every asked trial is tagged with CLM's generation.
    """
    from optuna.samplers import NSGAIISampler

    for params in fixed:
        _retry(lambda p=params: study.enqueue_trial(dict(p), skip_if_exists=False))
    asked: list[AskedTrial] = []
    for _ in range(count):
        trial = _retry(lambda: study.ask(dict(distributions)))
        _retry(lambda t=trial: study._storage.set_trial_system_attr(
            t._trial_id, CLM_GENERATION_ATTR, generation))
        parents: list[int] = []
        sampler = study.sampler
        if isinstance(sampler, NSGAIISampler):
            gen = study._storage.get_trial_system_attrs(trial._trial_id).get(
                NSGAIISampler._get_generation_key())
            if gen:
                parents = _parents(trial.params, sampler.get_parent_population(study, gen))
        asked.append(AskedTrial(trial.number, trial._trial_id, dict(trial.params), parents))
    return asked


def trial_state(database_url: str, trial_id: int) -> str:
    """Optuna state name of a trial ("RUNNING", "COMPLETE", "FAIL", ...)."""
    storage = storage_for(database_url)
    return _retry(lambda: storage.get_trial(trial_id).state.name)


def tell_trial(
    database_url: str,
    study_name: str,
    trial_id: int,
    values: Sequence[float] | None,
    constraints: Mapping[str, float] | None = None,
    *,
    population: int,
    seed: int,
    user_attrs: Mapping[str, Any] | None = None,
) -> bool:
    """Tell Optuna a trial's result (FAIL when values is None). Idempotent: returns False
    without touching a trial that is already finished (told by an earlier attempt)."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_for(database_url)

    def _do() -> bool:
        frozen = storage.get_trial(trial_id)
        if frozen.state.is_finished():
            return False
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=make_sampler(population, seed))
        trial = optuna.trial.Trial(study, trial_id)
        for key, value in (user_attrs or {}).items():
            storage.set_trial_user_attr(trial_id, key, value)
        if values is None:
            study.tell(trial, state=TrialState.FAIL)
            return True
        existing = frozen.system_attrs
        for key, value in (constraints or {}).items():
            if f"constraints:{key}" not in existing:
                trial.set_constraint(key, float(value))
        study.tell(trial, list(values))
        return True

    try:
        return _retry(_do)
    except RuntimeError as exc:
        # A concurrent teller finished it between our check and tell.
        if "finished" in str(exc).lower() or "already" in str(exc).lower():
            return False
        raise
