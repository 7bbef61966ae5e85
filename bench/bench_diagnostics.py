"""What a version's diagnostics cost a training job (issue 15: at most 10 %).

Run: .venv/bin/python bench/bench_diagnostics.py [--bars 20000] [--pairs 3]
     [--model-type xgboost|lightgbm]

Each pair runs the same training job twice through the pipeline's own executors in this
process (what the Celery tasks call; embedded SQLite in a throw-away var dir, one
training thread), once with CLM_DIAGNOSTICS=0 and once with it on, in alternating order.
Timed: from POST /clm/train to the job's `succeeded` — prepare, every fold, the final
fit, evaluate and register, run one after another (with real workers the folds run in
parallel and the attributions hide in the folds' own wall time, so this is the worst
case). Prints each pair's ratio, the median, and the diagnostics' own timings inside the
jobs with them on (fold attributions + the evaluate step's report) as a share of the job.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run_inline(settings: Any, job_id: str) -> dict[str, Any]:
    from app.db import transaction
    from app.flows import pipeline
    from app.services import jobs

    while True:
        with transaction(settings.database_url) as session:
            job = jobs.get_job(session, job_id)
            todo = jobs.pending_dispatches(session, job_id)
        if job["status"] in ("succeeded", "failed"):
            return job
        for d in todo:
            if d.kind is None:
                pipeline.execute_stage(settings, d.job_id, d.task.rsplit(".", 1)[1])
            else:
                pipeline.execute_work_item(settings, d.job_id, d.kind, int(d.fold or 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model-type", default="xgboost", choices=["xgboost", "lightgbm"])
    args = parser.parse_args()

    var_dir = Path(tempfile.mkdtemp(prefix="clm-bench-diag-"))
    for key in [k for k in os.environ if k.startswith("CLM_")]:
        del os.environ[key]
    os.environ.update(CLM_VAR_DIR=str(var_dir), CLM_LOG_LEVEL="WARNING", CLM_TRAIN_THREADS="1",
                      CLM_LOG_JSON="1")

    from app import create_app, migrate
    from app.core.config import get_settings
    from app.db import transaction
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv
    from app.services.auth import create_token

    base = get_settings()
    migrate.upgrade(base.database_url)
    MarketDataStore(base.data_dir).merge("BENCH", "1h",
                                         generate_ohlcv("planted", args.bars, "1h", seed=7))
    client = create_app(base).test_client()
    with transaction(base.database_url) as session:
        token = create_token(session, role="operator", name="bench")
    headers = {"Authorization": f"Bearer {token}"}
    span_days = int(args.bars / 24) - 2

    def job(diagnostics: bool) -> tuple[float, dict[str, Any]]:
        settings = dataclasses.replace(base, diagnostics=diagnostics)
        t0 = time.perf_counter()
        r = client.post("/clm/train", headers=headers, json={
            "model_type": args.model_type, "symbol": "BENCH", "timeframe": "1h",
            "dataset_span_days": span_days})
        assert r.status_code == 202, r.get_json()
        done = _run_inline(settings, r.get_json()["job_id"])
        elapsed = time.perf_counter() - t0
        assert done["status"] == "succeeded", done.get("error")
        return elapsed, done

    job(True)  # warm-up: imports, first-call costs of both libraries
    ratios, shares = [], []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        times: dict[bool, float] = {}
        for flag in order:
            times[flag], done = job(flag)
            if flag:
                attr = sum((it.get("result") or {}).get("attributions_s") or 0.0
                           for it in done["folds"]["items"])
                evaluate = next(s for s in done["steps"] if s["name"] == "evaluate")
                own = attr + (evaluate["detail"].get("diagnostics_s") or 0.0)
                shares.append(own / times[flag])
        ratio = times[True] / times[False]
        ratios.append(ratio)
        print(f"pair {i + 1}: off {times[False]:.2f} s, on {times[True]:.2f} s, "
              f"ratio {ratio:.3f}, diagnostics' own time {shares[-1] * 100:.1f} % of the job")
    print(f"{args.model_type}, {args.bars} bars, {base.walk_forward_folds} folds: "
          f"ratio on/off median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); diagnostics' own time median "
          f"{statistics.median(shares) * 100:.1f} % of the job; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
