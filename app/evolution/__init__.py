"""Strategy evolution: parameter spaces, NSGA-II search over them, candidates, DSR.

Modules (each owns one concern):
- space.py       every strategy's parameter space (types, bounds, steps), in one place
- strategy.py    probabilities → positions (thresholds, min hold, stop loss / take profit)
- objectives.py  objective and constraint definitions and their values from metrics
- evaluate.py    one trial: walk-forward OOS with the pipeline's backtest, per regime; hold-out
- selection.py   Pareto front, hypervolume, regime-aware choice
- overfitting.py Deflated Sharpe Ratio (Bailey & López de Prado), hold-out verdict
- search.py      Optuna glue: RDBStorage in the CLM database, NSGA-II sampler, ask / tell
- service.py     DB-facing functions: start, advance, evaluate, reap, finish, variants
- dispatch.py    enqueue the evolution Celery tasks (after commit)
"""
