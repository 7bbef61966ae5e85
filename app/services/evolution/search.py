"""Optuna glue: NSGA-II sampler over an RDBStorage that lives in the CLM database.

The one import for the rest of CLM (the evolution flows, workers, tests, the bench): it
re-exports the public names of its three parts —
- app/services/evolution/optuna_storage.py: `storage_for` (one RDBStorage per process
  and URL), `create_study` / `load_study`, `dispose_storages`, `optuna_schema_head`;
- app/services/evolution/optuna_ask.py: `ask_generation` (one generation of trials,
  params fixed at ask time), `AskedTrial`, `CLM_GENERATION_ATTR`, `orphaned_trials`;
- app/services/evolution/optuna_tell.py: `tell_trial` (idempotent: a finished trial is
  never told twice), `tell_in_session`, `can_tell_in_session`, `trial_state`.
Callers use `search.<name>` (looked up at call time, so the bench can time each call).

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

from app.services.evolution.optuna_ask import (
    CLM_GENERATION_ATTR,
    AskedTrial,
    ask_generation,
    orphaned_trials,
)
from app.services.evolution.optuna_storage import (
    create_study,
    dispose_storages,
    load_study,
    make_sampler,
    optuna_schema_head,
    storage_for,
)
from app.services.evolution.optuna_tell import (
    can_tell_in_session,
    tell_in_session,
    tell_trial,
    trial_state,
)

__all__ = [
    "CLM_GENERATION_ATTR",
    "AskedTrial",
    "ask_generation",
    "can_tell_in_session",
    "create_study",
    "dispose_storages",
    "load_study",
    "make_sampler",
    "optuna_schema_head",
    "orphaned_trials",
    "storage_for",
    "tell_in_session",
    "tell_trial",
    "trial_state",
]
