"""Every model type on the same planted and random-walk series, walk-forward in one
process each (so peak memory is the type's own): Sharpe, trades, gate, training time
and peak RSS, with XGBoost as the baseline of the same run (time and memory ratios).

    python bench/bench_model_types.py            # all types
    python bench/bench_model_types.py nhits      # some

Budgets are the test suite's small CPU budgets (tests/test_model_types.py); SYNTHETIC
data (app.ml.data.synthetic), 2,880 1h bars, 3 folds, 5 bps fees, one thread, and the
tests' strategy rule (a 1 % take-profit, see tests/test_model_types.py for why).
"""

from __future__ import annotations

import json
import subprocess
import sys

BUDGETS: dict[str, dict] = {
    "xgboost": {"n_estimators": 40, "max_depth": 3},
    "nhits": {"max_steps": 150, "hidden_size": 32},
    "patchtst": {"max_steps": 150, "hidden_size": 16, "encoder_layers": 1, "lookback": 24},
    "rl_v2": {"total_timesteps": 8000},
    "rl_v3": {"total_timesteps": 2400},
}

_CHILD = r"""
import json, resource, sys, time
from app.core.config import DEFAULT_GATE
from app.ml.data.synthetic import generate_ohlcv
from app.ml.evaluation import EvaluationConfig, apply_gate, run_walk_forward
from app.ml.evolution.space import TradingRules
from app.ml.oos import oos_metrics
from app.ml.trainers import get_trainer
model_type, kind, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
get_trainer(model_type)
frame = generate_ohlcv(kind, 2880, seed=11 if kind == "planted" else 12)
cfg = EvaluationConfig()
rep = run_walk_forward(frame, model_type, params, cfg, seed=0, n_threads=1, keep_dataset=True)
# The same strategy rule as tests/test_model_types.py: a 1 % take-profit.
m = oos_metrics(rep.dataset, rep.predictions, cfg, TradingRules(take_profit=0.01))
gate = apply_gate(m, DEFAULT_GATE)
fit_s = sum(p.fit_seconds for p in rep.predictions)
print(json.dumps({"sharpe": m["sharpe"], "trades": m["trades"], "passed": gate.passed,
                  "fit_s": fit_s, "total_s": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(model_type: str, kind: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, model_type, kind,
                          json.dumps(BUDGETS[model_type])], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    types = argv or list(BUDGETS)
    if "xgboost" not in types:
        types = ["xgboost", *types]
    base: dict = {}
    print(f"{'type':9s} {'series':12s} {'sharpe':>7s} {'trades':>6s} {'gate':>5s} "
          f"{'fit s':>7s} {'×xgb':>6s} {'peak MB':>8s} {'×xgb':>5s}")
    for model_type in types:
        for kind in ("planted", "random_walk"):
            r = run(model_type, kind)
            if model_type == "xgboost":
                base[kind] = r
            b = base[kind]
            print(f"{model_type:9s} {kind:12s} {r['sharpe']:7.2f} {r['trades']:6d} "
                  f"{'pass' if r['passed'] else 'fail':>5s} {r['fit_s']:7.2f} "
                  f"{r['fit_s'] / max(b['fit_s'], 1e-9):6.1f} {r['peak_mb']:8.0f} "
                  f"{r['peak_mb'] / b['peak_mb']:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
