"""Benchmark of the distributed strategy search (prints figures; not a timed test).

Every search: the declared xgboost strategy space (trading rules, label horizon, feature
windows, learning rate searched) with the model size fixed (`--trees` trees of depth
`--depth`), walk-forward with `--folds` expanding purged folds on `--bars` SYNTHETIC
planted 1h bars (20% held out), `--population` x `--generations` trials, seed 11. Every
trial trains with 1 thread (EvalSettings.n_threads=1) and each worker's OpenMP budget is 1
(CLM_TRAIN_THREADS=1, as for any machine shared by several workers).

1. Optimizer overhead (in-process, `evolution.drive_inline`, the units of work the tasks
   run): per trial, the evaluation (walk-forward training + backtest) versus the search's
   own work — Optuna ask (study load + batched ask), Optuna tell, and CLM's bookkeeping
   (claim, lease renewals, recording, generation counters, Pareto front, coordinator
   transactions). The search's final step (hold-out fit, Deflated Sharpe) runs once per
   search and is reported apart. Target: (ask + tell + bookkeeping) <= 10% of evaluation.
2. Throughput: the same search on 1 and on 2 real Celery worker processes (prefork,
   concurrency 1, both consuming `evaluate` and `default`; the coordinator is a task on
   the same workers, which are idle at a generation boundary anyway), broker = embedded
   filesystem transport. Trials per minute over the trial phase (publishing the first
   advance -> last trial recorded, read from the database), and end to end (-> search
   finished). Target: 2 workers >= 1.7x 1 worker on >= 2 free cores.

Runs alternate 1 and 2 workers `--repeat` times; best and median are printed with the
load average (other processes on the machine skew single runs). The CPU the workers
actually got is read from /proc: on a shared machine it says how much of a shortfall is
the machine's, not the search's.

    .venv/bin/python bench/bench_evolution.py [--db sqlite|postgresql|both]
        [--bars 5000] [--trees 200] [--depth 4] [--folds 3] [--population 16]
        [--generations 3] [--repeat 3] [--skip-overhead] [--skip-throughput]
        [--quiet-load 1.5] [--pg-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, func, select, text

from app import migrate
from app.bus import evolution_tasks
from app.bus.producer import send
from app.core.config import Settings, get_settings, load_settings
from app.db import dispose_engines, transaction
from app.flows import evolution
from app.ml.evolution.space import SPACES, StrategySpace
from app.models.evolution import StrategyCandidate, StrategySearch
from app.services.evolution import scoring, search, state
from app.services.evolution.create import create_search
from tests.support.workers import WorkerSpec, running_workers, wait_for
from tests.test_evolution_search import planted_frame

FIXED_MODEL = ("model_n_estimators", "model_max_depth")


def _space(trees: int, depth: int) -> StrategySpace:
    declared = SPACES["xgboost"]
    return StrategySpace(
        "xgboost", tuple(p for p in declared.params if p.name not in FIXED_MODEL),
        fixed={"model_n_estimators": trees, "model_max_depth": depth},
        base_windows=dict(declared.base_windows),
    )


# -- databases ----------------------------------------------------------------------------
@contextmanager
def database(kind: str, root: Path, pg_admin_url: str) -> Iterator[str]:
    """A fresh migrated database for one search: a SQLite file, or a PostgreSQL database
    created for the run and dropped after it. Optuna's tables are created up front, as in
    any database that has seen a search before (a one-time cost, not a per-trial one)."""
    if kind == "sqlite":
        root.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{root / 'clm.db'}"
        migrate.upgrade(url)
        _create_optuna_tables(url)
        yield url
        return
    name = f"clm_bench_evo_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{pg_admin_url.rsplit('/', 1)[0]}/{name}"
    try:
        migrate.upgrade(url)
        _create_optuna_tables(url)
        yield url
    finally:
        dispose_engines()
        search.dispose_storages()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _create_optuna_tables(url: str) -> None:
    search.storage_for(url)
    search.dispose_storages()


def _environment(url: str, root: Path) -> tuple[Settings, dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    env = {"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(root / "var"),
           "CLM_DATA_DIR": str(root / "var" / "data"),
           "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0",
           "CLM_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
           # Each worker's thread budget: without it a worker sizes OpenMP to cores ÷ its
           # own concurrency (2 here), and two workers on two cores oversubscribe them.
           "CLM_TRAIN_THREADS": "1"}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engines()
    search.dispose_storages()
    return load_settings(), env


def _start(settings: Settings, args: argparse.Namespace, frame: Any) -> str:
    with transaction(settings.database_url) as session:
        started = create_search(
            session, settings, model_type="xgboost", symbol="BTCUSDT", timeframe="1h",
            dataset_span_days=max(1, args.bars // 24), frame=frame,
            population=args.population, generations=args.generations,
            base_space=_space(args.trees, args.depth), seed=11,
            evaluation={"fee_bps": 2.0, "n_folds": args.folds, "n_threads": 1})
    return str(started["search_id"])


def _wait_for_quiet(limit: float | None, max_wait_s: float = 600.0) -> None:
    """On a shared machine: wait (bounded) until the 1-minute load average is below
    `limit`, so a 1-vs-2-worker pair is not measured against someone else's job."""
    if limit is None:
        return
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


# -- 1. overhead ---------------------------------------------------------------------------
@dataclass
class Overhead:
    trials: int
    evaluate_ms: float
    ask_ms: float
    tell_ms: float
    bookkeeping_ms: float
    finish_s: float
    parts_ms: dict[str, float]

    @property
    def optimizer_ms(self) -> float:
        return self.ask_ms + self.tell_ms + self.bookkeeping_ms

    @property
    def share(self) -> float:
        return self.optimizer_ms / self.evaluate_ms


def overhead(args: argparse.Namespace, frame: Any, url: str, root: Path) -> Overhead:
    settings, _env = _environment(url, root)
    timers = {"ask": 0.0, "tell": 0.0, "evaluate": 0.0, "finish": 0.0, "claim": 0.0,
              "lease": 0.0, "record": 0.0}
    originals: list[tuple[Any, str, Any]] = []

    def timed(owner: Any, attr: str, name: str, fn: Callable[..., Any] | None = None) -> None:
        original = getattr(owner, attr)
        target = fn or original

        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return target(*a, **kw)
            finally:
                timers[name] += time.perf_counter() - t
        originals.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    # "ask" is everything the coordinator asks Optuna for: study creation/lookup, the
    # study load and the generation's trials.
    for attr in ("create_study", "load_study", "ask_generation"):
        timed(search, attr, "ask")
    timed(search, "tell_trial", "tell")
    # Where the storage allows it the tell runs inside the record's transaction (one
    # commit): it is timed as "tell" and taken out of "record" below.
    timed(state, "tell_in_session", "tell")
    joint = search.can_tell_in_session(settings.database_url)
    timed(scoring, "evaluate_strategy", "evaluate")
    timed(evolution, "run_finish", "finish")
    # Parts of CLM's bookkeeping, shown separately (names as of this writing).
    for attr, name in (("_claim", "claim"), ("_heartbeat", "lease"), ("_record_trial", "record")):
        if hasattr(evolution, attr):
            timed(evolution, attr, name)
    try:
        sid = _start(settings, args, frame)
        t0 = time.perf_counter()
        result = evolution.drive_inline(settings, sid, timeout_s=3600)
        total = time.perf_counter() - t0
    finally:
        for owner, attr, original in reversed(originals):
            setattr(owner, attr, original)
    n = result["trials_evaluated"] + result["trials_failed"]
    # Lease renewals run inside evaluate_strategy (after each fold): bookkeeping, not
    # evaluation.
    evaluation = timers["evaluate"] - timers["lease"]
    book = total - evaluation - timers["ask"] - timers["tell"] - timers["finish"]
    parts = {k: timers[k] / n * 1e3 for k in ("claim", "lease", "record")}
    if joint:
        parts["record"] -= timers["tell"] / n * 1e3
    parts["coordinator+other"] = book / n * 1e3 - sum(parts.values())
    return Overhead(n, evaluation / n * 1e3, timers["ask"] / n * 1e3,
                    timers["tell"] / n * 1e3, book / n * 1e3, timers["finish"], parts)


# -- 2. throughput -------------------------------------------------------------------------
@dataclass
class Throughput:
    workers: int
    trials: int
    trial_phase_s: float
    end_to_end_s: float
    mean_trial_s: float
    busy: float  # share of worker time spent inside trial tasks (claim -> recorded)
    cores: float | None  # CPU the worker processes got, in cores, over the trial phase

    @property
    def rate(self) -> float:
        return self.trials / self.trial_phase_s * 60

    @property
    def rate_e2e(self) -> float:
        return self.trials / self.end_to_end_s * 60


def throughput(n_workers: int, args: argparse.Namespace, frame: Any, url: str,
               root: Path) -> Throughput:
    settings, env = _environment(url, root)
    sid = _start(settings, args, frame)
    specs = [WorkerSpec(f"bench{i}", queues=("evaluate", "default")) for i in range(n_workers)]

    def finished() -> bool:
        with transaction(settings.database_url) as session:
            status = session.scalar(select(StrategySearch.status)
                                    .where(StrategySearch.id == sid))
        return str(getattr(status, "value", status)) in ("succeeded", "failed")

    with running_workers(specs, log_dir=root / "logs", env=env) as procs:
        roots = [w.pid for w in procs]
        cpu0 = _tree_cpu_seconds(roots)
        t0 = time.time()
        send([evolution_tasks.advance(sid)], settings)
        # The end is read from the database afterwards, so polling slowly costs no
        # accuracy and leaves the cores to the workers.
        wait_for(finished, timeout=3600, interval=0.5, what="the search")
        cpu1 = _tree_cpu_seconds(roots)
        wall = time.time() - t0
    with transaction(settings.database_url) as session:
        row = session.get(StrategySearch, sid)
        assert row is not None
        last_trial = session.scalar(select(func.max(StrategyCandidate.finished_at))
                                    .where(StrategyCandidate.search_id == sid))
        spans = [(c.finished_at - c.started_at).total_seconds() for c in session.scalars(
            select(StrategyCandidate).where(StrategyCandidate.search_id == sid))]
        trials = row.trials_evaluated + row.trials_failed
        status = str(getattr(row.status, "value", row.status))
        end = row.finished_at
    if status != "succeeded":
        raise RuntimeError(f"search {sid} {status}")
    phase = _utc_seconds(last_trial) - t0
    e2e = _utc_seconds(end) - t0
    cores = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    return Throughput(n_workers, trials, phase, e2e, statistics.fmean(spans),
                      sum(spans) / (phase * n_workers), cores)


def _tree_cpu_seconds(roots: list[int]) -> float | None:
    """CPU seconds used so far by the given processes and all their descendants (Linux
    /proc; recycled pool children are in their parent's cutime once reaped)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ppid = int(fields[1])
            stats[int(entry)] = (ppid, sum(int(f) for f in fields[11:15]) / tick)
    except (OSError, ValueError):
        return None
    tree = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _cpu) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in tree if pid in stats)


def _cores(r: Throughput) -> str:
    return "?" if r.cores is None else f"{r.cores:.2f}"


def _utc_seconds(value: Any) -> float:
    from app.core.timeutil import ensure_utc

    return ensure_utc(value).timestamp()


# -- report --------------------------------------------------------------------------------
def _stats(values: list[float]) -> str:
    return f"best {max(values):.2f}, median {statistics.median(values):.2f}"


def bench_database(kind: str, args: argparse.Namespace, frame: Any, tmp: Path) -> None:
    print(f"\n== {kind} ==  ({_load()})")
    shares: list[Overhead] = []
    for i in range(0 if args.skip_overhead else args.repeat):
        with database(kind, tmp / f"{kind}-inline{i}", args.pg_admin_url) as url:
            o = overhead(args, frame, url, tmp / f"{kind}-inline{i}")
        shares.append(o)
        ask_tell = (o.ask_ms + o.tell_ms) / o.evaluate_ms * 100
        print(f"in-process #{i + 1}: {o.trials} trials; per trial: evaluation "
              f"{o.evaluate_ms:.0f} ms; Optuna ask {o.ask_ms:.1f} ms + tell {o.tell_ms:.1f} ms"
              f" + CLM bookkeeping {o.bookkeeping_ms:.1f} ms = {o.optimizer_ms:.1f} ms "
              f"= {o.share * 100:.1f}% (ask+tell only {ask_tell:.1f}%); final step "
              f"{o.finish_s:.1f} s once per search  ({_load()})")
        print("    bookkeeping per trial: " + ", ".join(
            f"{k} {v:.1f} ms" for k, v in o.parts_ms.items()))
    pct = [o.share * 100 for o in shares]
    if pct:
        print(f"optimizer overhead, % of trial evaluation time: best {min(pct):.1f}, median "
              f"{statistics.median(pct):.1f} (target <= 10)")

    if args.skip_throughput:
        return
    runs: dict[int, list[Throughput]] = {1: [], 2: []}
    for i in range(args.repeat):
        _wait_for_quiet(args.quiet_load)
        for n in (1, 2):
            with database(kind, tmp / f"{kind}-w{n}-{i}", args.pg_admin_url) as url:
                r = throughput(n, args, frame, url, tmp / f"{kind}-w{n}-{i}")
            runs[n].append(r)
            print(f"#{i + 1} {n} worker(s): {r.trials} trials, trial phase {r.trial_phase_s:.1f}"
                  f" s = {r.rate:.1f} trials/min (end to end {r.end_to_end_s:.1f} s = "
                  f"{r.rate_e2e:.1f}/min); mean trial task {r.mean_trial_s * 1e3:.0f} ms, "
                  f"workers busy {r.busy * 100:.0f}%, CPU got {_cores(r)} cores  ({_load()})")
    one = [r.rate for r in runs[1]]
    two = [r.rate for r in runs[2]]
    pairs = [b.rate / a.rate for a, b in zip(runs[1], runs[2], strict=True)]
    pairs_e2e = [b.rate_e2e / a.rate_e2e for a, b in zip(runs[1], runs[2], strict=True)]
    print(f"trials/min, 1 worker: {_stats(one)}; 2 workers: {_stats(two)}")
    print(f"speed-up 2 vs 1 workers (trial phase): best/best {max(two) / max(one):.2f}x, "
          f"median/median {statistics.median(two) / statistics.median(one):.2f}x, "
          f"per pair {', '.join(f'{p:.2f}' for p in pairs)} (target >= 1.7x)")
    cores = [(a.cores, b.cores) for a, b in zip(runs[1], runs[2], strict=True)]
    if all(c1 and c2 for c1, c2 in cores):
        print("CPU the workers got, 2 vs 1: per pair " + ", ".join(
            f"{c2 / c1:.2f}x" for c1, c2 in cores if c1 and c2)
            + " (below 2x: other processes held the cores; the speed-up cannot exceed it)")
    print(f"speed-up end to end (with the final step): per pair "
          f"{', '.join(f'{p:.2f}' for p in pairs_e2e)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--quiet-load", type=float, default=None,
                        help="before each 1-vs-2 pair, wait (<= 10 min) until the 1-minute "
                             "load average is below this")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "CLM_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    frame = planted_frame(args.bars)
    print(f"cores: {os.cpu_count()}; search: {args.population} x {args.generations} trials, "
          f"{args.bars} SYNTHETIC 1h bars (20% held out), xgboost {args.trees} trees depth "
          f"{args.depth}, 1 thread, {args.folds} walk-forward folds; {_load()}")
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    with tempfile.TemporaryDirectory(prefix="clm-bench-evo-") as tmp:
        for kind in kinds:
            bench_database(kind, args, frame, Path(tmp))


if __name__ == "__main__":
    main()
