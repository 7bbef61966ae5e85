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

Cost per trial (what the search adds to each walk-forward evaluation). Optuna's public
path — `study.ask()` + one `suggest` per parameter, `Trial.set_constraint` per
constraint + `study.tell` — commits once per parameter, attribute and state change and
re-reads the study's trials for every ask: ~45-50 ms per ask and ~30-40 ms per tell on
SQLite. Here, for Optuna's NSGA-II on an RDBStorage:
- the storage is created once per process (lazily, so a forked worker child makes its
  own), with CLM's SQLite pragmas, and without re-reading Optuna's migration scripts
  when the schema is current (`_open_storage`); studies are read through Optuna's own
  trial cache, kept per process and study;
- a generation is sampled against one view of the study (parents, search space and
  generation number computed once) and written in one transaction (`_insert_trials`);
- a tell is one transaction (`_tell_in_one_transaction`).
Both write exactly the rows Optuna's API writes and draw the same values for the same
seed (tests/test_evolution_optuna_fastpath.py compares them with the public path, which
remains the fallback for other samplers or storages). They rely on Optuna's RDB schema
(`optuna.storages._rdb.models`), stable since Optuna 3.0; the pin is `optuna<6`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from app.db import retry_if_busy

__all__ = [
    "AskedTrial",
    "ask_generation",
    "can_tell_in_session",
    "create_study",
    "load_study",
    "make_sampler",
    "storage_for",
    "tell_in_session",
    "tell_trial",
    "trial_state",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_storages: dict[tuple[int, str], Any] = {}
_STUDY_CACHE_SIZE = 8
_study_storages: OrderedDict[tuple[int, str, str], Any] = OrderedDict()
_known_studies: set[tuple[int, str, str]] = set()
T = TypeVar("T")

CLM_GENERATION_ATTR = "clm:generation"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The same settings CLM's own engine uses (app/db.py): WAL is a property of the file,
    # but `synchronous` is per connection and SQLite's default (FULL) fsyncs the WAL on
    # every commit — Optuna commits once per storage call, so that fsync dominated ask
    # and tell. NORMAL in WAL mode is still safe against a process crash.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def storage_for(database_url: str) -> Any:
    """The process-wide Optuna RDBStorage on the CLM database (created on first use).

    Created lazily in the process that uses it (a forked Celery child makes its own: the
    cache is keyed by pid and cleared after fork). SQLite: a 30 s busy timeout so
    concurrent workers wait for the write lock instead of failing, and the connection
    pragmas of CLM's engine. Optuna's heartbeat is deliberately off: CLM's trial leases
    decide liveness, and Optuna's stale-trial handling would FAIL a trial that CLM's
    reaper is about to hand to another worker.
    """
    key = (os.getpid(), database_url)
    storage = _storages.get(key)
    if storage is not None:
        return storage
    with _lock:
        storage = _storages.get(key)
        if storage is None:
            _quiet_optuna()
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            sqlite = database_url.startswith("sqlite")
            if sqlite:
                kwargs = {"connect_args": {"timeout": 30}}
            storage = _retry(lambda: _open_storage(database_url, kwargs))
            if sqlite:
                from sqlalchemy import event

                event.listen(storage.engine, "connect", _sqlite_pragmas)
                storage.engine.dispose()  # connections opened so far lack the pragmas
            _storages[key] = storage
    return storage


def _open_storage(database_url: str, engine_kwargs: dict[str, Any]) -> Any:
    """RDBStorage without re-reading Optuna's migration scripts in every process.

    Optuna's own start-up creates missing tables and then compares the database's schema
    revision with the newest migration script, which means importing every script
    (~50-80 ms per process, paid again by each Celery pool child). Here the newest
    revision is computed once per process (`optuna_schema_head`, preloaded by the worker
    before it forks) and the database's revision is read with one query; anything other
    than an exact match — tables missing, an older or newer schema — takes Optuna's
    full path, which creates the tables or raises its own upgrade message.
    """
    import optuna

    fast = None
    try:
        fast = optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs,
                                          skip_compatibility_check=True,
                                          skip_table_creation=True)
        if fast.get_current_version() == optuna_schema_head():
            return fast
    except Exception as exc:  # no tables yet (a fresh database), an odd schema, ...
        if _transient(exc):
            raise
        log.debug("optuna storage: full start-up (%s)", exc)
    if fast is not None:
        fast.engine.dispose()
    return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs)


@functools.cache
def optuna_schema_head() -> str:
    """The newest revision among the installed Optuna's storage migrations."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from optuna.storages._rdb import storage as rdb_storage

    here = os.path.dirname(rdb_storage.__file__)
    config = Config(os.path.join(here, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(here, "alembic").replace("%", "%%"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _cached_storage(database_url: str, study_name: str) -> Any:
    """Optuna's trial cache over the process-wide storage, one per study (LRU).

    Optuna's `_CachedStorage` (what `optuna.load_study(storage=url)` wraps around an
    RDBStorage) keeps finished trials — immutable — and re-reads only unfinished or new
    ones, so a coordinator that asks generation after generation reads each finished
    trial once per process instead of once per ask.
    """
    from optuna.storages._cached_storage import _CachedStorage

    key = (os.getpid(), database_url, study_name)
    with _lock:
        cached = _study_storages.get(key)
        if cached is not None:
            _study_storages.move_to_end(key)
            return cached
    cached = _CachedStorage(storage_for(database_url))
    with _lock:
        cached = _study_storages.setdefault(key, cached)
        while len(_study_storages) > _STUDY_CACHE_SIZE:
            _study_storages.popitem(last=False)
    return cached


def dispose_storages() -> None:
    """Drop cached storages (after fork, or when a test switches databases)."""
    with _lock:
        for (pid, _url), storage in list(_storages.items()):
            if pid == os.getpid():
                storage.engine.dispose()
        _storages.clear()
        _study_storages.clear()
        _known_studies.clear()


def _clear_after_fork() -> None:
    # The parent's engines and caches are not the child's: start empty, build lazily.
    _storages.clear()
    _study_storages.clear()
    _known_studies.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clear_after_fork)


def _transient(exc: BaseException) -> bool:
    """A lock/serialization error worth retrying. Optuna's RDBStorage wraps SQLAlchemy
    errors of its own sessions in StorageInternalError; the cause tells."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OperationalError):
            text = str(seen).lower()
            return "locked" in text or "deadlock" in text or "could not serialize" in text
        seen = seen.__cause__
    return False


def _retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry on transient lock errors (SQLite "database is locked", PG deadlocks)."""
    return retry_if_busy(fn, attempts, 0.05, conflict=_transient)


def make_sampler(population: int, seed: int) -> Any:
    """NSGA-II with the given population; constraints come from Trial.set_constraint."""
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


def create_study(database_url: str, study_name: str, directions: Sequence[str]) -> None:
    """Create the search's study (idempotent: an existing study is kept)."""
    import optuna

    key = (os.getpid(), database_url, study_name)
    if key in _known_studies:
        return
    storage = storage_for(database_url)
    try:
        storage.get_study_id_from_name(study_name)  # one read: the usual case
    except KeyError:
        _retry(lambda: optuna.create_study(storage=storage, study_name=study_name,
                                           directions=list(directions),
                                           load_if_exists=True))
    _known_studies.add(key)


def load_study(database_url: str, study_name: str, population: int, seed: int) -> Any:
    """The study with an NSGA-II sampler, over this process's cached storage of it."""
    import optuna

    storage = _cached_storage(database_url, study_name)
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
    parent_pop = _retry(lambda: sampler.get_parent_population(study, ga_generation))
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
            pops.append(_retry(lambda: sampler.get_parent_population(study, ga_generation)))
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
        ids = _retry(lambda: _insert_trials(rdb, study_id, dists, children, base_attrs))
    else:
        ids = []
        for params in children:
            template = FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None,
                datetime_start=datetime.now(), datetime_complete=None, params=params,
                distributions=dists, user_attrs={}, system_attrs=dict(base_attrs),
                intermediate_values={}, trial_id=-1)
            trial_id = _retry(lambda t=template: storage.create_new_trial(study_id, t))
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
        _retry(lambda p=params: study.enqueue_trial(dict(p), skip_if_exists=False))
    asked: list[AskedTrial] = []
    for _ in range(count):
        trial = _retry(lambda: study.ask(dict(distributions)))
        _retry(lambda t=trial: study._storage.set_trial_system_attr(
            t._trial_id, CLM_GENERATION_ATTR, generation))
        asked.append(AskedTrial(trial.number, trial._trial_id, dict(trial.params), []))
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
    without touching a trial that is already finished (told by an earlier attempt).

    On an RDBStorage the whole tell — user attributes, constraints (Optuna's
    `constraints:<name>` system attributes, what `Trial.set_constraint` writes), values
    and the final state — is one transaction that locks the trial row, instead of a
    study load and one commit per attribute. That is exactly what `study.tell` stores
    for this sampler: NSGA-II without a constraints function does nothing in
    `after_trial`, so no sampler is built here.
    """
    storage = storage_for(database_url)
    if _fast_tell_available(storage):
        return _retry(lambda: _tell_in_one_transaction(storage, int(trial_id), values,
                                                       constraints, user_attrs))
    return _tell_with_study(database_url, study_name, trial_id, values, constraints,
                            population=population, seed=seed, user_attrs=user_attrs)


def can_tell_in_session(database_url: str) -> bool:
    """Whether `tell_in_session` works for this database (Optuna's RDB storage with the
    table models it writes); otherwise callers use `tell_trial`."""
    return _fast_tell_available(storage_for(database_url))


def _fast_tell_available(storage: Any) -> bool:
    try:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
    except ImportError:
        return False
    return isinstance(storage, RDBStorage) and all(hasattr(models, name) for name in (
        "TrialModel", "TrialValueModel", "TrialUserAttributeModel",
        "TrialSystemAttributeModel"))


def _tell_in_one_transaction(
    storage: Any,
    trial_id: int,
    values: Sequence[float] | None,
    constraints: Mapping[str, float] | None,
    user_attrs: Mapping[str, Any] | None,
) -> bool:
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as session:
        return _write_tell(session, trial_id, values, constraints, user_attrs)


def tell_in_session(
    session: Any,
    trial_id: int,
    values: Sequence[float] | None,
    constraints: Mapping[str, float] | None = None,
    *,
    user_attrs: Mapping[str, Any] | None = None,
) -> bool:
    """`tell_trial` inside the caller's transaction on the same database (the caller
    commits): a caller that records the trial's result in CLM's tables anyway can make
    the tell and its record one atomic commit. Optuna's tables must be in the session's
    database (they are: the storage URL is the CLM database URL)."""
    return _write_tell(session, int(trial_id), values, constraints, user_attrs)


def _write_tell(
    session: Any,
    trial_id: int,
    values: Sequence[float] | None,
    constraints: Mapping[str, float] | None,
    user_attrs: Mapping[str, Any] | None,
) -> bool:
    """The rows `Trial.set_constraint` + `set_user_attr` + `study.tell` write, in one
    transaction holding the trial row's lock (a concurrent teller waits, then sees it
    finished). Rows an interrupted earlier attempt may have left are replaced."""
    import json

    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import insert

    floats = None if values is None else [float(v) for v in values]
    if floats is not None and any(math.isnan(v) for v in floats):
        floats = None  # study.tell turns a NaN objective into a FAIL trial; so do we
    checked = {f"constraints:{k}": float(v) for k, v in (constraints or {}).items()}
    if any(math.isnan(v) for v in checked.values()):
        raise ValueError(f"NaN constraint in {constraints!r}")
    state = TrialState.FAIL if floats is None else TrialState.COMPLETE
    user = {str(k): json.dumps(v) for k, v in (user_attrs or {}).items()}
    system = {k: json.dumps(v) for k, v in checked.items()} if floats is not None else {}

    def put(session: Any, model: Any, rows: list[dict[str, Any]], keys: tuple[str, ...],
            columns: tuple[str, ...]) -> None:
        """Insert rows, replacing any an interrupted earlier attempt left (upsert)."""
        if not rows:
            return
        table = model.__table__
        dialect = session.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            stmt = dialect_insert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c[k] for k in keys],
                set_={c: stmt.excluded[c] for c in columns})
            session.execute(stmt, rows)
            return
        for row in rows:
            session.execute(table.delete().where(*(table.c[k] == row[k] for k in keys)))
        session.execute(insert(table), rows)

    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
    if trial.state.is_finished():
        return False
    if trial.state != TrialState.RUNNING:
        raise ValueError(f"cannot tell a {trial.state.name} trial ({trial_id})")
    attr_keys, attr_columns = ("trial_id", "key"), ("value_json",)
    put(session, models.TrialUserAttributeModel,
        [{"trial_id": trial_id, "key": k, "value_json": v} for k, v in user.items()],
        attr_keys, attr_columns)
    put(session, models.TrialSystemAttributeModel,
        [{"trial_id": trial_id, "key": k, "value_json": v} for k, v in system.items()],
        attr_keys, attr_columns)
    if floats is not None:
        value_model = models.TrialValueModel
        rows = []
        for objective, v in enumerate(floats):
            stored, value_type = value_model.value_to_stored_repr(v)
            rows.append({"trial_id": trial_id, "objective": objective, "value": stored,
                         "value_type": value_type})
        put(session, value_model, rows, ("trial_id", "objective"), ("value", "value_type"))
    trial.state = state
    trial.datetime_complete = datetime.now()
    session.flush()
    return True


def _tell_with_study(
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
    """The public-API tell (any storage): load the study, set attributes, study.tell."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_for(database_url)

    def _do() -> bool:
        frozen = storage.get_trial(trial_id)
        if frozen.state.is_finished():
            return False
        study = load_study(database_url, study_name, population, seed)
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
