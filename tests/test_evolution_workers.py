"""A strategy search on two real Celery worker processes, one SIGKILLed mid-search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.bus import evolution_tasks
from app.bus.producer import send
from app.core.config import Settings
from app.db import transaction
from app.flows import evolution
from app.ml.evolution.space import ParamDef, StrategySpace
from app.services.evolution.create import create_search
from app.services.evolution.views import get_search, list_candidates
from tests.support.workers import WorkerSpec, running_workers, wait_for
from tests.test_evolution_search import FAST_EVAL, TINY_WINDOWS, planted_frame

pytestmark = pytest.mark.slow


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_search_survives_a_killed_worker(sqlite_url: str, make_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    settings = make_settings(sqlite_url, CLM_EVOLUTION_TRIAL_LEASE_S=4,
                             CLM_EVOLUTION_REQUEUE_AFTER_S=6, CLM_LOG_JSON=0)
    # Heavier trials (more trees) so one is reliably caught mid-evaluation.
    space = StrategySpace("xgboost", (ParamDef("window_returns", "int", 12, 2, 96),
                                      ParamDef("entry_threshold", "float", 0.52, 0.5, 0.6,
                                               step=0.01)),
                          fixed={"model_n_estimators": 150, "model_max_depth": 3},
                          base_windows=TINY_WINDOWS)
    with transaction(settings.database_url) as session:
        started = create_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=100, frame=planted_frame(2000), evaluation=FAST_EVAL,
            population=6, generations=2, base_space=space, seed=1)
    sid = started["search_id"]
    specs = [WorkerSpec("evo-a", queues=("evaluate", "default")),
             WorkerSpec("evo-b", queues=("evaluate", "default"))]
    with running_workers(specs, log_dir=tmp_path / "logs") as (worker_a, worker_b):
        send([evolution_tasks.advance(sid)], settings)

        def running_on_a() -> str | None:
            for c in _all(settings, sid):
                owner = c["evaluated_by"] or ""
                pid = int(owner.rsplit(":", 1)[1]) if ":" in owner else -1
                if c["status"] == "running" and pid in (worker_a.pid, *[
                        p for p in [pid] if _ppid(p) == worker_a.pid]):
                    return owner
            return None

        victim_owner = wait_for(running_on_a, timeout=120, interval=0.02,
                                what="a trial running on worker A")
        worker_a.kill()  # SIGKILL to the whole worker (main process and pool child)
        victim = next(c for c in _all(settings, sid) if c["evaluated_by"] == victim_owner
                      and c["status"] == "running")

        def finished() -> bool:
            # The beat reaper's job, run from here: re-publish expired / lost work.
            evolution.reap(settings)
            with transaction(settings.database_url) as session:
                return get_search(session, sid)["status"] == "succeeded"

        wait_for(finished, timeout=150, interval=0.5, what="the search to finish")
        assert worker_b.alive()

    cands = _all(settings, sid)
    assert len(cands) == 12  # 2 generations x 6: every trial accounted for
    assert all(c["status"] in ("evaluated", "failed") for c in cands)
    with transaction(settings.database_url) as session:
        search = get_search(session, sid)
    assert search["trials_evaluated"] + search["trials_failed"] == 12
    redone = next(c for c in cands if c["id"] == victim["id"])
    assert redone["status"] == "evaluated" and redone["attempts"] >= 2
    assert redone["evaluated_by"] != victim_owner
    # Trials ran in two different worker processes.
    assert len({c["evaluated_by"] for c in cands} | {victim_owner}) >= 2
    assert any(c["pareto"] for c in cands)


def _all(settings: Settings, sid: str) -> list[dict]:
    with transaction(settings.database_url) as session:
        items, _ = list_candidates(session, search_id=sid, limit=500)
    return items
