"""Telling Optuna a trial's result (part of the Optuna glue; see
app/services/evolution/search.py for why Optuna and what each trial costs).

Owns `tell_trial` (idempotent: a finished trial is never told twice; one transaction on
an RDBStorage), `tell_in_session` (the same rows written in the caller's CLM transaction,
so a trial is told and recorded together), `can_tell_in_session` and `trial_state`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from app.services.evolution.optuna_storage import load_study, retry_transient, storage_for

__all__ = ["can_tell_in_session", "tell_in_session", "tell_trial", "trial_state"]


def trial_state(database_url: str, trial_id: int) -> str:
    """Optuna state name of a trial ("RUNNING", "COMPLETE", "FAIL", ...)."""
    storage = storage_for(database_url)
    return retry_transient(lambda: storage.get_trial(trial_id).state.name)


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
        return retry_transient(lambda: _tell_in_one_transaction(storage, int(trial_id), values,
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
        return retry_transient(_do)
    except RuntimeError as exc:
        # A concurrent teller finished it between our check and tell.
        if "finished" in str(exc).lower() or "already" in str(exc).lower():
            return False
        raise
