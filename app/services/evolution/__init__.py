"""Strategy search state and computations (services layer: the caller's session, flush only).

- config.py: `EvolutionConfig` (CLM_EVOLUTION_*) and request limits;
- create.py: `create_search` (validate a request, freeze its data, insert it queued);
- state.py: the state machine's writes (coordinator lease, generations, claims and
  leases, trial records, Pareto front, finish, reaper bookkeeping);
- scoring.py: a trial's evaluation and the finished search's choice (no database);
- views.py: the JSON shapes of searches and candidates (reads);
- variants.py: variant proposals for a degraded model;
- snapshot.py: the search's market data and its per-process caches;
- search.py (optuna_storage.py, optuna_ask.py, optuna_tell.py): the Optuna glue.
The transactions and what is published after them are app/flows/evolution.py's.
"""
