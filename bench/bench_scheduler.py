"""Scheduler tick with many tracked models, and the drift check over 1M rows × all features.

Run: .venv/bin/python bench/bench_scheduler.py [--tracked N] [--baseline-tracked M]
     [--rows R] [--baseline-rows B] [--backend sqlite|postgresql|both] [--due-share F]

Tick (app.flows.checks.run_tick, one transaction, best of 3): N explicitly tracked models
(default 10,000; target < 1 s) against a baseline of M (default 100), on a fresh, migrated
database. "steady" = nothing due (the common case: one query over the tracked set);
"F due" = a share F (default 1 %) of the models is due in that tick, so their periodic
decisions are written and arbitrated (their jobs are refused — no market data — which
still walks the whole decision path). PostgreSQL needs CLM_TEST_PG_ADMIN_URL or a local
server (postgresql://postgres@127.0.0.1:5432).

Drift (app.analysis.drift.compare_to_reference, best of 3): R feature rows
(default 1,000,000) ×
all 18 features + a prediction column against a reference, vs a baseline of B rows
(default 10,000). Target < 2 s. Building the 1M-row feature frame is reported separately:
it is the market data's cost, not the check's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CLM_LOG_JSON", "0")


def best_of(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# -- tick -------------------------------------------------------------------------------
def _database(backend: str, tmp: Path) -> tuple[str, Any]:
    """A fresh migrated database URL and a cleanup function."""
    from app import migrate

    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'bench_{uuid.uuid4().hex[:6]}.db'}"
        migrate.upgrade(url)
        return url, lambda: None
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("CLM_TEST_PG_ADMIN_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"clm_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    migrate.upgrade(url)

    def drop() -> None:
        from app.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def _seed_tracked(url: str, n: int, anchor: datetime, due: int) -> None:
    """n explicitly tracked xgboost models; `due` of them trained long ago."""
    from sqlalchemy import insert

    from app.db import transaction
    from app.models.continuous import TrackedModel

    old = anchor - timedelta(days=30)
    rows = [{
        "model_id": f"xgboost_sym{i:05d}_1h", "model_type": "xgboost",
        "symbol": f"SYM{i:05d}", "timeframe": "1h", "source": "explicit", "enabled": True,
        "anchor_at": old if i < due else anchor, "created_at": anchor, "updated_at": anchor,
    } for i in range(n)]
    with transaction(url) as session:
        session.execute(insert(TrackedModel), rows)


def bench_tick(backend: str, sizes: list[int], due_share: float, tmp: Path
               ) -> list[tuple[str, int, float, int]]:
    from app.bus.outbox import set_relay_kicker
    from app.core.config import load_settings
    from app.db import dispose_engines, transaction
    from app.flows.checks import run_tick
    from app.models.continuous import TriggerDecision

    set_relay_kicker(None)
    out: list[tuple[str, int, float, int]] = []
    now = datetime.now(UTC)
    for n in sizes:
        for label, due in (("steady", 0), (f"{due_share:.0%} due", max(1, int(n * due_share)))):
            url, cleanup = _database(backend, tmp)
            try:
                settings = load_settings({"CLM_DATABASE_URL": url, "CLM_VAR_DIR": str(tmp)})
                _seed_tracked(url, n, now, due)

                def one(settings: Any = settings) -> Any:
                    with transaction(settings.database_url, immediate=True) as session:
                        return run_tick(session, settings, now=now)

                first = one()
                assert first.tracked == n and first.due == due, first.to_dict()
                if due:
                    # The due slots were decided (rejected: no data) in the first tick, so
                    # each repeat walks the due path again: clear them between runs.
                    def timed(one: Any = one, url: str = url) -> None:
                        from sqlalchemy import delete

                        with transaction(url) as session:
                            session.execute(delete(TriggerDecision))
                        t0 = time.perf_counter()
                        one()
                        timed.seconds = min(getattr(timed, "seconds", 1e9),  # type: ignore[attr-defined]
                                            time.perf_counter() - t0)

                    for _ in range(3):
                        timed()
                    secs = timed.seconds  # type: ignore[attr-defined]
                else:
                    secs = best_of(one, 3)
                out.append((f"{backend} tick, {label}", n, secs, due))
            finally:
                dispose_engines()
                cleanup()
    return out


# -- drift ------------------------------------------------------------------------------
def bench_drift(rows: int, baseline: int) -> tuple[list[tuple[str, int, float]], float]:
    from app.analysis.drift import build_reference, compare_to_reference
    from app.ml.data.synthetic import generate_ohlcv
    from app.ml.features import build_features

    t0 = time.perf_counter()
    frame = generate_ohlcv("random_walk", rows + 2000, "1h", seed=1)
    feats = build_features(frame).dropna()
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    preds = rng.beta(5, 5, len(feats))
    reference = build_reference(feats.iloc[:50_000], preds[:50_000])
    big, big_p = feats.iloc[-rows:], preds[-rows:]
    small, small_p = feats.iloc[-baseline:], preds[-baseline:]
    results = []
    for label, f, p in (("drift check", big, big_p), ("drift check (baseline)", small, small_p)):
        secs = best_of(lambda f=f, p=p: compare_to_reference(reference, f, p), 3)
        results.append((f"{label}, {f.shape[1]} features + predictions", len(f), secs))
    result = compare_to_reference(reference, big, big_p)
    assert result.features_total == feats.shape[1]
    return results, build_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracked", type=int, default=10_000)
    parser.add_argument("--baseline-tracked", type=int, default=100)
    parser.add_argument("--due-share", type=float, default=0.01)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"cpus {os.cpu_count()}, load average {load:.2f} (timings are noisy when load > cpus)")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with TemporaryDirectory() as tmp:
        tick_rows: list[tuple[str, int, float, int]] = []
        for backend in backends:
            try:
                tick_rows += bench_tick(backend, [args.baseline_tracked, args.tracked],
                                        args.due_share, Path(tmp))
            except Exception as exc:  # e.g. no PostgreSQL server here
                print(f"{backend}: skipped ({type(exc).__name__}: {exc})")
    print(f"\n{'scheduler tick':<34} {'tracked':>9} {'due':>6} {'best s':>9} "
          f"{'per model µs':>13} {'vs baseline':>12}")
    base: dict[str, float] = {}
    for label, n, secs, due in tick_rows:
        key = label
        if n == args.baseline_tracked:
            base[key] = secs
        ratio = secs / base[key] if key in base and n != args.baseline_tracked else 1.0
        target = "  (target < 1 s)" if n == args.tracked else ""
        print(f"{label:<34} {n:>9,} {due:>6,} {secs:>9.4f} {secs / n * 1e6:>13.1f} "
              f"{ratio:>11.1f}x{target}")

    drift_rows, build_s = bench_drift(args.rows, args.baseline_rows)
    print(f"\n{'drift (PSI + KS)':<44} {'rows':>10} {'best s':>9} {'rows/s':>13} "
          f"{'vs baseline':>12}")
    base_rate = drift_rows[1][1] / drift_rows[1][2]
    for label, n, secs in drift_rows:
        rate = n / secs
        target = "  (target < 2 s)" if n == args.rows else ""
        print(f"{label:<44} {n:>10,} {secs:>9.3f} {rate:>13,.0f} "
              f"{secs / drift_rows[1][2]:>11.1f}x{target}")
    print(f"(building the {args.rows:,}-row feature frame itself took {build_s:.2f} s; "
          f"per-row throughput vs baseline: {drift_rows[0][1] / drift_rows[0][2] / base_rate:.2f})")


if __name__ == "__main__":
    main()
