"""Strategy search end to end in one process: real Optuna NSGA-II on the CLM database,
real walk-forward backtests; planted best region, hypervolume, reaper, HTTP API."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text, update

from app.bus.evolution_tasks import NextSteps
from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.flows import evolution
from app.ml.evolution.space import ParamDef, StrategySpace
from app.ml.features import DEFAULT_WINDOWS
from app.models.evolution import CandidateStatus, SearchGeneration, StrategyCandidate
from app.services.evolution import search
from app.services.evolution.config import EvolutionConfig
from app.services.evolution.create import create_search
from app.services.evolution.views import list_candidates

PLANTED_LAG = 40
PLANTED_REGION = (34, 46)
# Every other feature family gets a window too short to see a 40-bar structure.
TINY_WINDOWS = {**DEFAULT_WINDOWS, "volatility": (2,), "rsi": (2,), "macd": (1, 2, 1),
                "volume_z": (2,), "range": (1,), "zscore": (2,)}
FAST_EVAL = {"fee_bps": 2.0, "min_train_rows": 300}


def planted_frame(n: int = 2400, lag: int = PLANTED_LAG, strength: float = 0.35,
                  seed: int = 0, vol: float = 0.004) -> pd.DataFrame:
    """SYNTHETIC prices that revert the move of exactly `lag` bars: the next return
    leans against sign(close_t / close_{t-lag}). Only a momentum window near `lag` sees
    it; shorter or longer windows mostly see noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, vol, n)
    lc = np.zeros(n)
    for t in range(1, n):
        lean = -np.sign(lc[t - 1] - lc[t - 1 - lag]) if t - 1 - lag >= 0 else 0.0
        lc[t] = lc[t - 1] + noise[t] + strength * vol * lean
    close = 100.0 * np.exp(lc)
    index = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC", name="timestamp")
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, vol / 4, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, vol / 4, n)))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.uniform(900, 1100, n)}, index=index)


def planted_space() -> StrategySpace:
    return StrategySpace(
        "xgboost",
        (ParamDef("window_returns", "int", 12, 2, 96),
         ParamDef("entry_threshold", "float", 0.52, 0.50, 0.60, step=0.01)),
        fixed={"model_n_estimators": 30, "model_max_depth": 2},
        base_windows=TINY_WINDOWS,
    )


def _start(settings: Settings, frame: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    with transaction(settings.database_url) as session:
        return create_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=100, frame=frame, evaluation=FAST_EVAL, **kw)


def _candidates(settings: Settings, search_id: str) -> list[dict[str, Any]]:
    with transaction(settings.database_url) as session:
        items, _ = list_candidates(session, search_id=search_id, limit=500)
    return items


def test_front_reaches_planted_region_and_hypervolume_grows(
        sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sqlite_url)
    started = _start(settings, planted_frame(), population=8, generations=4, seed=7,
                     base_space=planted_space())
    result = evolution.drive_inline(settings, started["search_id"], timeout_s=240)
    assert result["status"] == "succeeded"
    cands = _candidates(settings, started["search_id"])
    # every trial accounted for: 4 generations x 8, all evaluated or failed
    assert len(cands) == 32
    assert {c["status"] for c in cands} <= {"evaluated", "failed"}
    assert result["trials_evaluated"] + result["trials_failed"] == 32
    front = [c for c in cands if c["pareto"]]
    assert front and all(c["feasible"] and c["metrics"]["trades"] >= 50 for c in front)
    best = max(front, key=lambda c: c["objectives"]["sharpe"])
    lo, hi = PLANTED_REGION
    assert lo <= best["params"]["window_returns"] <= hi, best["params"]
    chosen = next(c for c in cands if c["id"] == result["chosen_candidate_id"])
    assert lo <= chosen["params"]["window_returns"] <= hi
    # NSGA-II children name their parents (earlier candidates of the same search)
    later = [c for c in cands if c["generation"] > 0]
    assert any(c["parents"] for c in later)
    ids = {c["id"]: c for c in cands}
    assert all(ids[p]["generation"] < c["generation"] for c in later for p in c["parents"])
    # hypervolume of the front never shrinks and ends higher than generation 0's
    with transaction(settings.database_url) as session:
        hv = [g.hypervolume for g in session.scalars(
            select(SearchGeneration).where(SearchGeneration.search_id == started["search_id"])
            .order_by(SearchGeneration.generation))]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(hv))
    assert hv[-1] > hv[0]
    # overfitting guard on the chosen candidate: DSR in [0, 1] and a hold-out verdict
    assert 0.0 <= chosen["deflated_sharpe"] <= 1.0
    assert result["result"]["deflated_sharpe"]["n_trials"] == 32
    assert chosen["holdout"]["metrics"]["oos_bars"] >= 400
    assert chosen["overfit"] is chosen["holdout"]["collapsed"]
    # scored per regime, and a choice per regime from the front
    assert chosen["regime_metrics"] and result["result"]["regime_choice"]


def test_search_on_postgresql_shares_the_database_with_optuna(
        pg_url: str, make_settings: Callable[..., Settings]) -> None:
    from app import migrate

    settings = make_settings(pg_url)
    started = _start(settings, planted_frame(1600), population=4, generations=2,
                     base_space=planted_space())
    result = evolution.drive_inline(settings, started["search_id"], timeout_s=180)
    assert result["status"] == "succeeded"
    assert result["trials_evaluated"] + result["trials_failed"] == 8
    with transaction(settings.database_url) as session:
        n_trials = session.execute(text(
            "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :name AND t.state = 'COMPLETE'"),
            {"name": f"clm-search-{started['search_id']}"}).scalar_one()
    assert n_trials == 8
    migrate.check(pg_url)  # Optuna's tables do not disturb CLM's schema check


def test_reaper_recovers_a_dead_trial_and_a_lost_coordinator(
        sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sqlite_url, CLM_EVOLUTION_TRIAL_LEASE_S=5,
                             CLM_EVOLUTION_REQUEUE_AFTER_S=5)
    started = _start(settings, planted_frame(1600), population=4, generations=2,
                     base_space=planted_space())
    sid = started["search_id"]
    trials = evolution.run_advance(settings, sid, publish=False).trials
    assert len(trials) == 4
    # A worker claims trial 0 and dies: its lease runs out with the trial "running".
    job = evolution._claim(settings, trials[0], "dead-worker",
                           EvolutionConfig.from_settings(settings))
    assert job is not None
    for cid in trials[1:]:
        evolution.run_trial(settings, cid, publish=False)
    # Lease still valid: nothing to do.
    assert evolution.reap(settings, publish=False).next_steps == NextSteps()
    later = utcnow() + timedelta(seconds=10)
    report = evolution.reap(settings, now=later, publish=False)
    assert report.expired_trials == [trials[0]]
    assert report.next_steps == NextSteps(trials=(trials[0],))
    # The "dead" worker wakes up late with a result: told and recorded go together, so
    # a worker that lost its lease neither records nor tells Optuna anything.
    late = evolution._record_trial(settings, job, "dead-worker", {"sharpe": 9.0}, None,
                                   [9.0, 0.0], {"evaluation_ok": 0.0}, None, 1.0,
                                   tell_attrs={"clm_candidate_id": job["candidate_id"]},
                                   publish=False)
    assert late == NextSteps()
    assert search.trial_state(settings.database_url, job["optuna_trial_id"]) == "RUNNING"
    # The re-published trial completes the generation; its advance message is "lost".
    out = evolution.run_trial(settings, trials[0], publish=False)
    assert out == NextSteps(searches=(sid,))
    with transaction(settings.database_url) as session:
        cand = session.get(StrategyCandidate, trials[0])
        assert cand is not None and cand.attempts == 2 and cand.status == "evaluated"
        gen = session.get(SearchGeneration, (sid, 0))
        assert gen is not None and gen.completed_at is not None
        session.execute(update(SearchGeneration).values(
            completed_at=utcnow() - timedelta(seconds=60)))
    report = evolution.reap(settings, publish=False)
    assert report.advanced_searches == [sid]
    result = evolution.drive_inline(settings, sid, timeout_s=120)
    assert result["status"] == "succeeded" and result["trials_evaluated"] + \
        result["trials_failed"] == 8
    storage = search.storage_for(settings.database_url)
    with transaction(settings.database_url) as session:
        recorded = session.scalars(select(StrategyCandidate)
                                   .where(StrategyCandidate.search_id == sid)).all()
    for cand in recorded:  # every recorded trial was told, once, with its own values
        told = storage.get_trial(cand.optuna_trial_id)
        assert told.state.name == "COMPLETE"
        assert told.user_attrs["clm_candidate_id"] == cand.id
        if cand.objectives:
            assert told.values == list(cand.objectives.values())
    # A duplicate delivery of a finished trial or of the coordinator is a no-op.
    assert evolution.run_trial(settings, trials[0], publish=False) == NextSteps()
    assert evolution.run_advance(settings, sid, publish=False) == NextSteps()


def test_evaluation_error_fails_the_trial_not_the_search(
        sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sqlite_url)
    space = StrategySpace("xgboost", (ParamDef("window_returns", "int", 12, 2, 900),),
                          fixed={"model_n_estimators": 20}, base_windows=TINY_WINDOWS)
    # 900-bar look-backs leave too few rows on 1,300 bars: those trials fail.
    started = _start(settings, planted_frame(1300), population=6, generations=1, seed=3,
                     base_space=space)
    result = evolution.drive_inline(settings, started["search_id"], timeout_s=120)
    cands = _candidates(settings, started["search_id"])
    failed = [c for c in cands if c["status"] == "failed"]
    assert result["status"] == "succeeded" and len(cands) == 6
    assert failed and all("InsufficientData" in c["error"] or "rows" in c["error"]
                          for c in failed)
    assert not any(c["pareto"] for c in failed)


# -- HTTP -------------------------------------------------------------------------------
def _store_data(settings: Settings, frame: pd.DataFrame) -> None:
    from app.ml.data.store import MarketDataStore

    MarketDataStore(settings.data_dir).merge("BTCUSDT", "1h", frame)


def test_http_evolve_candidates_and_train(client: Any, auth: Callable[[str], dict[str, str]],
                                          settings: Settings) -> None:
    _store_data(settings, planted_frame(2000))
    body = {"model_type": "xgboost", "symbol": "btcusdt", "timeframe": "1h",
            "dataset_span_days": 80, "population": 4, "generations": 1,
            "space": {"model_n_estimators": 20, "window_volatility": 8, "window_zscore": 8,
                      "label_horizon": 1}}
    assert client.post("/clm/evolve", json=body).status_code == 401
    assert client.post("/clm/evolve", json=body, headers=auth("viewer")).status_code == 403
    bad = client.post("/clm/evolve", json={**body, "objectives": ["sharpe"]},
                      headers=auth("operator"))
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    bad = client.post("/clm/evolve", json={**body, "space": {"entry_threshold": 0.99}},
                      headers=auth("operator"))
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["field"] == "space.entry_threshold"
    resp = client.post("/clm/evolve", json=body, headers=auth("operator"))
    assert resp.status_code == 202, resp.get_json()
    sid, job_id = resp.get_json()["search_id"], resp.get_json()["job_id"]
    evolution.drive_inline(settings, sid, timeout_s=180)

    job = client.get(f"/clm/jobs/{job_id}", headers=auth("viewer"))
    assert job.status_code == 200 and job.get_json()["status"] == "succeeded"
    assert job.get_json()["progress"] == 1.0 and job.get_json()["search_id"] == sid
    found = client.get(f"/clm/searches/{sid}", headers=auth("viewer")).get_json()
    assert found["status"] == "succeeded" and found["chosen_candidate_id"]
    (stats,) = found["generation_stats"]
    assert stats["generation"] == 0 and stats["size"] == 4
    assert stats["evaluated"] + stats["failed"] == 4 and stats["completed_at"]
    assert stats["hypervolume"] == pytest.approx(found["result"]["hypervolume"])
    assert client.get("/clm/searches/nope", headers=auth("viewer")).status_code == 404

    page1 = client.get(f"/clm/candidates?search_id={sid}&limit=3", headers=auth("viewer"))
    assert page1.status_code == 200
    data = page1.get_json()
    assert len(data["items"]) == 3 and data["next_cursor"]
    page2 = client.get(f"/clm/candidates?search_id={sid}&limit=3&cursor={data['next_cursor']}",
                       headers=auth("viewer")).get_json()
    ids = [c["id"] for c in data["items"] + page2["items"]]
    assert len(ids) == 4 and ids == sorted(set(ids)) and page2["next_cursor"] is None
    stepped = ("entry_threshold", "exit_threshold", "stop_loss", "take_profit")
    for cand in data["items"] + page2["items"]:  # on the declared grid, no float noise
        assert all(cand["params"][k] == round(cand["params"][k], 10) for k in stepped), \
            cand["params"]
        if cand["status"] == "evaluated":  # timestamps like everywhere else: UTC, "Z"
            assert cand["metrics"]["oos_start"].endswith("Z"), cand["metrics"]["oos_start"]
    first = data["items"][0]
    for key in ("id", "search_id", "params", "objectives", "metrics", "pareto", "generation",
                "parents", "regime", "status"):
        assert key in first
    front = client.get(f"/clm/candidates?search_id={sid}&pareto=true",
                       headers=auth("viewer")).get_json()["items"]
    assert front and all(c["pareto"] for c in front)
    assert client.get("/clm/candidates?pareto=maybe", headers=auth("viewer")).status_code == 422
    assert client.get("/clm/candidates?cursor=zzz", headers=auth("viewer")).status_code == 422

    assert client.post("/clm/candidates/999999/train",
                       headers=auth("operator")).status_code == 404
    assert client.post("/clm/candidates/abc/train", headers=auth("operator")).status_code == 404
    trained = client.post(f"/clm/candidates/{front[0]['id']}/train", headers=auth("operator"))
    assert trained.status_code == 202, trained.get_json()
    tjob = client.get(f"/clm/jobs/{trained.get_json()['job_id']}",
                      headers=auth("viewer")).get_json()
    assert tjob["model_id"] == "xgboost_btcusdt_1h" and tjob["status"] == "queued"
    again = client.post(f"/clm/candidates/{front[0]['id']}/train", headers=auth("operator"))
    assert again.status_code == 409  # the model already has an active job
    assert again.get_json()["job_id"] == trained.get_json()["job_id"]
    # Both requests are trigger decisions naming the candidate: one started the job, the
    # other was coalesced into it.
    decisions = client.get("/clm/triggers?model_id=xgboost_btcusdt_1h",
                           headers=auth("viewer")).get_json()["items"]
    assert sorted((d["outcome"], d["job_id"]) for d in decisions) == [
        ("coalesced", trained.get_json()["job_id"]), ("triggered", trained.get_json()["job_id"])]
    assert all(d["details"]["candidate_id"] == front[0]["id"] for d in decisions)
    with transaction(settings.database_url) as session:
        cand = session.get(StrategyCandidate, front[0]["id"])
        assert cand is not None and cand.training_job_id == trained.get_json()["job_id"]
        pending = session.scalars(select(StrategyCandidate).where(
            StrategyCandidate.status == CandidateStatus.PENDING)).all()
        assert pending == []
    spaces = client.get("/clm/strategy-spaces", headers=auth("viewer")).get_json()
    assert {"xgboost", "lightgbm"} <= set(spaces)


# -- publishing after commit ------------------------------------------------------------
def _published(settings: Settings) -> list[tuple[str, str, list[Any]]]:
    """(task, queue, args) of every evolution task waiting in the embedded broker, oldest
    first (the outbox relay's kicks left out)."""
    import base64
    import json

    out = []
    for path in sorted((settings.var_dir / "broker" / "queue").glob("*.msg")):
        message = json.loads(path.read_text())
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        task = message["headers"]["task"]
        if task.startswith("clm.evolution."):
            out.append((task, path.name.split(".")[-2], json.loads(body)[0]))
    return out


def test_units_of_work_publish_their_follow_ups_only_once_committed(
        sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sqlite_url)
    request = {"model_type": "xgboost", "symbol": "BTCUSDT", "timeframe": "1h",
               "dataset_span_days": 100, "frame": planted_frame(1300), "evaluation": FAST_EVAL,
               "population": 2, "generations": 1, "base_space": planted_space()}
    with pytest.raises(RuntimeError), transaction(settings.database_url) as session:
        evolution.start_search(session, settings, **request)
        raise RuntimeError("the request fails after the search was created")
    assert _published(settings) == []  # rolled back: nothing to work on, nothing sent
    with transaction(settings.database_url) as session:
        sid = evolution.start_search(session, settings, **request)["search_id"]
    assert _published(settings) == [("clm.evolution.advance_search", "default", [sid])]

    steps = evolution.run_advance(settings, sid)
    assert len(steps.trials) == 2
    assert _published(settings)[1:] == [("clm.evolution.evaluate_trial", "evaluate", [t])
                                        for t in steps.trials]
