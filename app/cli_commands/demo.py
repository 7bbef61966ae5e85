"""`clm demo`: the main job end to end on one machine, with no servers to install.

Migrates the configured database (SQLite under ./var by default), imports two SYNTHETIC
series (a 'planted' one a model can learn, a 'random_walk' one it cannot), starts real
processes — the API (`clm serve`), two Celery workers (`clm worker`: one for the data and
evaluate queues, one for the train queue) and `clm beat` — and talks to the API over HTTP
with a token it creates: it trains XGBoost and LightGBM on both series, shows the
evaluations and promotion decisions, promotes a version, retrains against it as
champion, promotes the retrain and rolls back once; then it runs a small NSGA-II strategy
search and shows its Pareto front, Deflated Sharpe and hold-out check. Every process it
started is stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from app.core.config import Settings, get_settings

PLANTED, RANDOM = "SYN-PLANTED", "SYN-RANDOM"
TIMEFRAME = "1h"
MODEL_TYPES = ("xgboost", "lightgbm")


class DemoError(click.ClickException):
    pass


# -- output -----------------------------------------------------------------------------
class Printer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str = "", *, dim: bool = False) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        click.echo(f"{click.style(stamp, dim=True)} {click.style(message, dim=dim)}")

    def section(self, title: str) -> None:
        click.echo("")
        self(click.style(f"== {title}", bold=True))


# -- processes --------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Subprocesses in their own process groups, all stopped by `stop_all`."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: list[Proc] = []

    def start(self, name: str, args: list[str]) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 6.0) -> None:
        """SIGTERM every group (warm shutdown), SIGKILL what is left after `grace`.

        Ctrl-C / SIGTERM while stopping must not abandon a child: they only cut the
        grace short (straight to SIGKILL).
        """
        hurry = False

        def _hurry(_sig: int, _frame: Any) -> None:
            nonlocal hurry
            hurry = True

        previous = {sig: signal.signal(sig, _hurry) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for p in self.procs:
                if p.popen.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(p.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not hurry and time.monotonic() < deadline and any(
                p.popen.poll() is None for p in self.procs
            ):
                time.sleep(0.1)
            for p in self.procs:
                # Whatever is left of the group (pool children included).
                with suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=10)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _wait(predicate: Any, timeout: float, what: str, procs: list[Proc]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.popen.poll() is not None:
                raise DemoError(f"{p.name} exited ({p.popen.returncode}):\n{p.tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so `finally` blocks stop the children."""

    def _raise(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- HTTP -------------------------------------------------------------------------------
class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)
           ) -> Any:
        status, payload = self.call(method, path, body)
        if status not in expect:
            raise DemoError(f"{method} {path} answered {status}: {payload}")
        return payload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


# -- the demo ---------------------------------------------------------------------------
def _import_data(settings: Settings, bars: int, say: Printer) -> None:
    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    store = MarketDataStore.from_settings(settings)
    for symbol, kind, seed in ((PLANTED, "planted", 101), (RANDOM, "random_walk", 202)):
        report = store.merge(symbol, TIMEFRAME, generate_ohlcv(kind, bars, TIMEFRAME, seed=seed))
        say(f"{symbol} {TIMEFRAME}: {report.rows_after} bars of synthetic '{kind}' data "
            f"({report.added} new) in {settings.data_dir}")


def _submit(api: Api, model_type: str, symbol: str, span: int, say: Printer,
            trigger: str = "manual", params: dict[str, Any] | None = None) -> str:
    body = {"model_type": model_type, "symbol": symbol, "timeframe": TIMEFRAME,
            "dataset_span_days": span, "trigger_reason": trigger, "params": params or {}}
    status, payload = api.call("POST", "/clm/train", body)
    if status == 202:
        say(f"POST /clm/train {model_type} {symbol} -> 202 job {payload['job_id']}")
        return str(payload["job_id"])
    if status == 409:  # a job from an interrupted earlier run: follow it
        say(f"POST /clm/train {model_type} {symbol} -> 409: following active job "
            f"{payload['job_id']}")
        return str(payload["job_id"])
    raise DemoError(f"POST /clm/train answered {status}: {payload}")


def _follow(api: Api, job_ids: list[str], say: Printer, timeout: float) -> dict[str, Any]:
    """Poll the jobs, printing each step as it starts and ends, until all finished."""
    seen: dict[tuple[str, str], str] = {}
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id in done:
                continue
            job = api.ok("GET", f"/clm/jobs/{job_id}")
            for step in job["steps"]:
                key = (job_id, step["name"])
                if seen.get(key) != step["status"] and step["status"] != "pending":
                    seen[key] = step["status"]
                    extra = ""
                    if step["name"] == "train_folds" and job["folds"]["total"]:
                        extra = f" ({job['folds']['done']}/{job['folds']['total']} work items)"
                    if step["status"] == "succeeded" and step["duration_s"] is not None:
                        extra += f" in {step['duration_s']:.2f}s"
                    say(f"  {job['model_id']:<28} {step['name']:<17} {step['status']}{extra}"
                        f"  [{job['progress']:.0%}]", dim=step["status"] == "running")
            if job["status"] in ("succeeded", "failed"):
                done[job_id] = job
                say(f"  {job['model_id']:<28} job {job['status']}"
                    + (f": version {job['version']} -> {job['version_status']}"
                       if job.get("version") else f": {job.get('error')}"))
        if time.monotonic() > deadline:
            raise DemoError(f"jobs not finished after {timeout:.0f}s")
        time.sleep(0.4)
    return done


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if pct else f"{value:.2f}"
    return str(value)


def _show_evaluations(jobs: list[dict[str, Any]]) -> None:
    header = (f"  {'model_id':<28} {'sharpe':>7} {'win':>6} {'PF':>6} {'MDD':>6} "
              f"{'trades':>6} {'score':>6}  decision")
    click.echo(click.style(header, bold=True))
    for job in jobs:
        ev = job.get("evaluation") or {}
        m = ev.get("metrics") or {}
        decision = job.get("version_status") or job["status"]
        click.echo(
            f"  {job['model_id']:<28} {_fmt(m.get('sharpe')):>7} "
            f"{_fmt(m.get('win_rate'), True):>6} {_fmt(m.get('profit_factor')):>6} "
            f"{_fmt(m.get('max_drawdown'), True):>6} {_fmt(m.get('trades')):>6} "
            f"{_fmt(ev.get('promotion_score')):>6}  {decision}")
        for c in ev.get("failed_criteria", []):
            click.echo(f"  {'':<28}   failed: {c['name']} = {_fmt(c.get('value'))} "
                       f"(needs {c['op']} {c.get('threshold')})")


# Live data: new planted bars arrive through a drop-folder feed in batches, and beat's
# feed poll and scheduler tick store them and score every version on them.
LIVE_BATCHES = (24, 24, 48)


def _fmt_lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f}{unit}"
    return f"{seconds:.0f}s"


def _live_table(api: Api, versions: list[tuple[str, str, str]]) -> None:
    for model_id, version, status in versions:
        rec = api.ok("GET", f"/clm/models/{model_id}/versions/{version}/live")
        m = rec.get("metrics") or {}
        click.echo(f"  {model_id:<24} {version:<22} {status:<10} {rec['bars']:>5} "
                   f"{rec['trades']:>6} {_fmt(m.get('sharpe')):>7} "
                   f"{_fmt(m.get('total_return'), True):>7}")


def _live_data(api: Api, settings: Settings, model_id: str, say: Printer, timeout: float,
               procs: list[Proc]) -> None:
    """A drop-folder feed for the planted series; three batches of new bars; the live
    records of the production version and the candidates grow as beat stores them."""
    import pandas as pd  # lazy: start-up (`clm demo --help` imports no data stack)

    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    folder = settings.var_dir / "drop" / PLANTED.lower()
    folder.mkdir(parents=True, exist_ok=True)
    status, feed = api.call("POST", "/clm/data/feeds", {
        "source": f"dir:{folder}", "symbol": PLANTED, "timeframe": TIMEFRAME,
        "interval_s": 1})
    if status == 409:  # a feed from an earlier run of the demo: use it
        feed = api.ok("GET", f"/clm/data/feeds/{feed['feed_id']}")
    elif status != 201:
        raise DemoError(f"POST /clm/data/feeds answered {status}: {feed}")
    say(f"POST /clm/data/feeds dir:{folder} {PLANTED} {TIMEFRAME} -> feed {feed['id']}")
    watched = [(v["model_id"], v["version"], v["status"]) for v in api.ok(
        "GET", f"/clm/models?symbol={PLANTED}&limit=50")["items"]
        if v["status"] in ("production", "candidate", "shadow") and v.get("artifact")]
    store = MarketDataStore.from_settings(settings)
    for n, size in enumerate(LIVE_BATCHES, start=1):
        stored = store.read(PLANTED, TIMEFRAME)
        last = stored.index[-1]
        bars = generate_ohlcv("planted", size, TIMEFRAME, seed=300 + n,
                              start=(last + pd.Timedelta(hours=1)).to_pydatetime(),
                              price0=float(stored["close"].iloc[-1]))
        # Written under a hidden name, then renamed in: a poll never sees half a file.
        part = folder / f".batch-{n}.part"
        bars.rename_axis("timestamp").to_csv(part)
        part.rename(folder / f"batch-{n}.csv")
        target = bars.index[-1]
        say(f"dropped batch-{n}.csv: {size} new bars up to {target:%Y-%m-%d %H:%M}Z")

        def scored(target: Any = target) -> bool:
            f = api.ok("GET", f"/clm/data/feeds/{feed['id']}")
            if not f.get("last_bar") or pd.Timestamp(f["last_bar"]) < target:
                return False
            lasts = [api.ok("GET", f"/clm/models/{m}/versions/{v}/live").get("last_bar")
                     for m, v, _ in watched]
            return all(last and pd.Timestamp(last) >= target for last in lasts)

        _wait(scored, timeout, f"batch {n} to be stored and scored", procs)
        f = api.ok("GET", f"/clm/data/feeds/{feed['id']}")
        lag = f.get("lag_s")
        say(f"  feed {feed['id']}: last bar {f['last_bar']}, lag "
            f"{_fmt_lag(lag)} (the synthetic series ends in the past), "
            f"error {f.get('last_error') or '-'}")
        click.echo(click.style(f"  {'model_id':<24} {'version':<22} {'status':<10} "
                               f"{'bars':>5} {'trades':>6} {'sharpe':>7} {'return':>7}",
                               bold=True))
        _live_table(api, watched)
    click.echo("  Every production, candidate and shadow version is scored on each new bar "
               "with its own trading rules and the instrument's costs (GET …/live); "
               f"GET /clm/models/{model_id}/serving names the version to use now.")


# Guarded deployment (section 7): demo-sized rules (defaults: 100 trades over 7 days, 20
# trades for the rollback guard) so a shadow can leave shadow on the demo's few new bars.
GUARD_ENV = {"CLM_SHADOW_MIN_TRADES": "5", "CLM_SHADOW_MIN_DAYS": "1",
             "CLM_PERFORMANCE_MIN_TRADES": "1"}
# A bad deploy for the guard to catch: long only, held at least 96 bars whatever happens.
BAD_STRATEGY = {"rules": {"entry_threshold": 0.5, "exit_threshold": 0.0,
                          "min_hold_bars": 96, "allow_short": False}}
BAD_SPAN_DAYS = 60


def _allocation_line(api: Api, model_id: str) -> str:
    alloc = api.ok("GET", f"/clm/models/{model_id}/allocation")
    shown = ", ".join(f"{v} {w:.2f}" for v, w in alloc["weights"].items())
    return f"allocation ({alloc['mode']}): {shown}"


def _drop(folder: Path, name: str, frame: Any) -> Any:
    """Write `frame` into the drop folder under a hidden name, then rename it in."""
    part = folder / f".{name}.part"
    frame.rename_axis("timestamp").to_csv(part)
    part.rename(folder / f"{name}.csv")
    return frame.index[-1]


def _guarded_deployment(api: Api, settings: Settings, model_id: str, v1: str, v2: str,
                        say: Printer, timeout: float, procs: list[Proc]) -> None:
    """The retrain v2 earns its way out of shadow on live bars, the Thompson allocation
    moves toward it, then a bad deploy is rolled back by the guard on its own."""
    import pandas as pd  # lazy: start-up imports no data stack

    from app.ml.data.store import MarketDataStore
    from app.ml.data.synthetic import generate_ohlcv

    def status(version: str) -> str:
        return str(api.ok("GET", f"/clm/models/{model_id}/versions/{version}")["status"])

    _wait(lambda: status(v2) != "shadow", timeout, f"{v2} to leave shadow", procs)
    audit = api.ok("GET", f"/clm/audit?model_id={model_id}&limit=20")["items"]
    exit_entry = next(e for e in audit if e["action"] == "version.shadow_exited")
    say(f"{v2}: shadow -> {status(v2)} on its live record")
    say(f"  audit: {exit_entry['actor']} {exit_entry['action']} {exit_entry['version']} — "
        f"{exit_entry['reason']}", dim=True)
    seen = [_allocation_line(api, model_id)]
    say(seen[0])
    if status(v2) != "candidate":
        raise DemoError(f"{v2} left shadow as {status(v2)}: {exit_entry['reason']}")

    def moved() -> bool:  # one more step, or the newcomer already at its cap
        line = _allocation_line(api, model_id)
        if line != seen[-1]:
            seen.append(line)
            say(line)
        weights = api.ok("GET", f"/clm/models/{model_id}/allocation")["weights"]
        return len(seen) >= 2 or weights.get(v2, 0.0) >= settings.allocation_newcomer_cap - 1e-6
    _wait(moved, timeout, "the allocation to move", procs)
    click.echo("  Each scheduler tick redraws the weights by Thompson sampling from the "
               "live per-bar returns (floor for production, cap for newcomers, a step limit)."
               )

    say(f"a bad deploy: xgboost {PLANTED} trained long-only, holding >= 96 bars")
    code, job = api.call("POST", "/clm/train", {
        "model_type": "xgboost", "symbol": PLANTED, "timeframe": TIMEFRAME,
        "dataset_span_days": BAD_SPAN_DAYS, "strategy": BAD_STRATEGY})
    if code != 202:
        raise DemoError(f"POST /clm/train answered {code}: {job}")
    bad = _follow(api, [job["job_id"]], say, timeout)[job["job_id"]]
    v3 = bad["version"]
    api.ok("POST", "/clm/promote", {"model_id": model_id, "version": v3,
                                    "promoted_by": "clm demo", "force": True,
                                    "reason": "demo: a bad deploy for the guard to catch"})
    say(f"POST /clm/promote {model_id} {v3} (force) -> production")
    store = MarketDataStore.from_settings(settings)
    stored = store.read(PLANTED, TIMEFRAME)
    last = stored.index[-1]
    # 12 bars up, then 60 bars down: a long-only holder rides the fall, v1 turns short
    up = generate_ohlcv("random_walk", 12, TIMEFRAME, seed=401, drift=0.004,
                        start=(last + pd.Timedelta(hours=1)).to_pydatetime(),
                        price0=float(stored["close"].iloc[-1]))
    down = generate_ohlcv("random_walk", 60, TIMEFRAME, seed=402, drift=-0.004,
                          start=(up.index[-1] + pd.Timedelta(hours=1)).to_pydatetime(),
                          price0=float(up["close"].iloc[-1]))
    folder = settings.var_dir / "drop" / PLANTED.lower()
    target = _drop(folder, "batch-fall", pd.concat([up, down]))
    say(f"dropped batch-fall.csv: 72 new bars (a rise, then a fall) up to "
        f"{target:%Y-%m-%d %H:%M}Z")

    def rolled() -> bool:
        prod = api.ok("GET", f"/clm/models?model_id={model_id}&status=production")["items"]
        return bool(prod) and prod[0]["version"] == v1
    _wait(rolled, timeout, "the guard to roll back", procs)
    audit = api.ok("GET", f"/clm/audit?model_id={model_id}&limit=20")["items"]
    entry = next(e for e in audit if e["action"] == "version.rolled_back"
                 and e["actor"] == "clm")
    say(f"automatic rollback: production is {v1} again")
    say(f"  audit: {entry['actor']} {entry['action']} {entry['version']} — {entry['reason']}",
        dim=True)
    click.echo(f"  {_allocation_line(api, model_id)}; events model.shadow_exited, "
               "allocation.changed, model.rolled_back are on the bus; /metrics has "
               "clm_allocation_weight, clm_shadow_progress, clm_automatic_decisions_total.")


# A small search: 8 x 2 trials of a fixed small model (the thresholds, windows, label
# horizon and trading rules are searched), so the section takes seconds, not minutes.
SEARCH_SPAN_DAYS = 120
SEARCH_BODY = {"model_type": "xgboost", "symbol": PLANTED, "timeframe": TIMEFRAME,
               "population": 8, "generations": 2,
               "space": {"model_n_estimators": 40, "model_max_depth": 3}}


def _strategy_search(api: Api, span_days: int, say: Printer, timeout: float) -> str:
    """POST /clm/evolve, follow the search, show its front and the overfitting guard."""
    started = api.ok("POST", "/clm/evolve", {**SEARCH_BODY, "dataset_span_days": span_days},
                     expect=(202,))
    sid = started["search_id"]
    say(f"POST /clm/evolve xgboost {PLANTED} ({SEARCH_BODY['population']} x "
        f"{SEARCH_BODY['generations']} trials; maximize Sharpe, minimize drawdown, trades "
        f">= 50; each trial walk-forward out of sample) -> 202 search {sid[:8]}…, job "
        f"{started['job_id'][:8]}…")
    deadline = time.monotonic() + timeout
    shown = -1
    while True:
        search = api.ok("GET", f"/clm/searches/{sid}")
        for g in search.get("generation_stats") or []:
            if g["completed_at"] and g["generation"] > shown:
                shown = g["generation"]
                say(f"  generation {g['generation']}: {g['evaluated']} evaluated, "
                    f"{g['failed']} failed; front hypervolume {_fmt(g['hypervolume'])}")
        if search["status"] in ("succeeded", "failed"):
            break
        if time.monotonic() > deadline:
            raise DemoError(f"strategy search {sid} still {search['status']} after "
                            f"{timeout:.0f}s")
        time.sleep(0.5)
    if search["status"] == "failed":
        raise DemoError(f"strategy search {sid} failed: {search.get('error')}")
    front = api.ok("GET", f"/clm/candidates?search_id={sid}&pareto=true&limit=50")["items"]
    chosen_id = search.get("chosen_candidate_id")
    click.echo(f"  {'candidate':>9} {'sharpe':>7} {'MDD':>6} {'trades':>6}  "
               "entry  exit  hold  horizon  returns-window")
    for c in sorted(front, key=lambda c: -(c["metrics"].get("sharpe") or 0.0)):
        m, p = c["metrics"], c["params"]
        mark = "  <- chosen" if c["id"] == chosen_id else ""
        click.echo(f"  {c['id']:>9} {_fmt(m.get('sharpe')):>7} "
                   f"{_fmt(m.get('max_drawdown'), pct=True):>6} {m.get('trades', 0):>6}  "
                   f"{p.get('entry_threshold', '-'):<5}  {p.get('exit_threshold', '-'):<4}  "
                   f"{p.get('min_hold_bars', '-'):<4}  {p.get('label_horizon', '-'):<7}  "
                   f"{p.get('window_returns', '-')}{mark}")
    result = search.get("result") or {}
    dsr = result.get("deflated_sharpe") or {}
    hold = result.get("holdout") or {}
    say(f"Pareto front: {len(front)} of {search['trials_evaluated']} evaluated; chosen "
        f"candidate {chosen_id}: Deflated Sharpe Ratio {_fmt(dsr.get('dsr'))} given "
        f"{dsr.get('n_trials', '?')} trials; final hold-out (bars no trial saw): Sharpe "
        f"{_fmt(hold.get('holdout_sharpe'))} vs OOS {_fmt(hold.get('oos_sharpe'))} -> "
        f"{'COLLAPSED (flagged)' if hold.get('collapsed') else 'held up'}")
    click.echo("  POST /clm/candidates/{id}/train turns a candidate into a training job "
               "that goes through the same gate.")
    return sid


def run_demo(bars: int, span_days: int, timeout: float) -> None:
    say = Printer()
    settings = get_settings()
    from app import migrate
    from app.db import transaction
    from app.services.auth import create_token

    say.section("1. Database and market data")
    say(f"database {settings.database_url.split('?')[0]}, broker {settings.broker_url}")
    migrate.upgrade(settings.database_url)
    say(f"migrated to {migrate.current_revision(settings.database_url)}")
    _import_data(settings, bars, say)
    with transaction(settings.database_url) as session:
        token = create_token(session, role="admin", name=f"demo-{int(time.time())}",
                             actor="clm demo")
    say("created an admin API token for this demo")

    say.section("2. Processes: API, workers, beat")
    log_dir = settings.var_dir / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Short beat periods so the live-data section's bars are stored and scored in seconds.
    env = {"CLM_FEED_TICK_S": "2", "CLM_SCHEDULER_TICK_S": "2", **GUARD_ENV, **os.environ,
           "PYTHONUNBUFFERED": "1"}
    procs = Processes(log_dir, env)
    try:
        api_proc = procs.start("api", ["serve", "--port", str(port), "--workers", "1"])
        steps = procs.start("worker-steps", ["worker", "--queues", "data,evaluate,default",
                                             "--concurrency", "1",
                                             "--hostname", "demo-steps@%h",
                                             "--loglevel", "INFO"])
        train = procs.start("worker-train", ["worker", "--queues", "train",
                                             "--concurrency", "2",
                                             "--hostname", "demo-train@%h",
                                             "--loglevel", "INFO"])
        beat = procs.start("beat", ["beat"])
        for p in (steps, train):
            _wait(lambda p=p: " ready." in p.log.read_text(errors="replace"), 120,
                  f"{p.name} to be ready", procs.procs)
            say(f"{p.name} ready (pid {p.popen.pid}, log {p.log})")
        _wait(lambda: _health(base), 60, "the API", [api_proc])
        say(f"API up at {base} (pid {api_proc.popen.pid}); beat pid {beat.popen.pid}")
        api = Api(base, token)

        say.section("3. Training: XGBoost and LightGBM on both series")
        ids = [_submit(api, mt, sym, span_days, say) for sym in (PLANTED, RANDOM)
               for mt in MODEL_TYPES]
        status, dup = api.call("POST", "/clm/train", {
            "model_type": "xgboost", "symbol": PLANTED, "timeframe": TIMEFRAME,
            "dataset_span_days": span_days})
        say(f"a second request for xgboost {PLANTED} while its job is active -> {status} "
            f"(active job {dup.get('job_id') if isinstance(dup, dict) else '?'})")
        finished = _follow(api, ids, say, timeout)

        say.section("4. Evaluation (walk-forward, out of sample, with fees) and decisions")
        _show_evaluations([finished[i] for i in ids])
        click.echo("  Passing the gate makes a candidate; failing makes a failed version. "
                   "Nothing reaches production without an explicit promote.")

        say.section("5. Promote, retrain against the champion, promote, roll back")
        first = finished[ids[0]]
        if first.get("version_status") != "candidate":
            raise DemoError(f"expected a candidate from {first['model_id']}, got "
                            f"{first.get('version_status')}: {first.get('evaluation')}")
        model_id, v1 = first["model_id"], first["version"]
        promoted = api.ok("POST", "/clm/promote", {"model_id": model_id, "version": v1,
                                                    "promoted_by": "clm demo",
                                                    "reason": "passed the gate in the demo"})
        say(f"POST /clm/promote {model_id} {v1} -> production "
            f"(retired: {(promoted.get('retired') or {}).get('version')})")
        retrain_id = _submit(api, "xgboost", PLANTED, span_days, say, trigger="periodic")
        retrain = _follow(api, [retrain_id], say, timeout)[retrain_id]
        champ = (retrain.get("evaluation") or {}).get("champion") or {}
        say(f"champion {champ.get('version')} retrained on the same folds: Sharpe "
            f"{_fmt(champ.get('champion_sharpe'))} vs challenger "
            f"{_fmt(champ.get('challenger_sharpe'))} -> {champ.get('reason')}")
        v2 = retrain["version"]
        force = retrain.get("version_status") == "failed"
        promoted = api.ok("POST", "/clm/promote", {
            "model_id": model_id, "version": v2, "promoted_by": "clm demo",
            "reason": "periodic retrain" + (" (forced: it did not beat the champion)"
                                            if force else ""), "force": force})
        say(f"POST /clm/promote {model_id} {v2}{' (force)' if force else ''} -> production, "
            f"retired {(promoted.get('retired') or {}).get('version')}")
        rolled = api.ok("POST", "/clm/rollback", {"model_id": model_id,
                                                   "rollback_by": "clm demo",
                                                   "reason": "demo: roll back once"})
        say(f"POST /clm/rollback {model_id} -> production is "
            f"{(rolled.get('production') or {}).get('version')} again, "
            f"retired {(rolled.get('retired') or {}).get('version')}")
        audit = api.ok("GET", f"/clm/audit?model_id={model_id}&limit=10")
        for entry in audit.get("items", [])[:4]:
            say(f"  audit: {entry.get('at')} {entry.get('actor')} {entry.get('action')} "
                f"{entry.get('version')} — {entry.get('reason')}", dim=True)

        # the retrain goes back to shadow: it earns its way out on live bars (section 7)
        with transaction(settings.database_url, immediate=True) as session:
            from app.services import registry
            for target_status in ("candidate", "shadow"):
                registry.set_status(session, model_id, v2, target_status, actor="clm demo",
                                    reason="demo: back to shadow, to leave it on live bars")
        api.ok("PUT", f"/clm/models/{model_id}/allocation", {"mode": "thompson"})
        say(f"{v2} back in shadow; PUT /clm/models/{model_id}/allocation thompson")

        say.section("6. Live data: a drop-folder feed; every version scored on new bars")
        _live_data(api, settings, model_id, say, timeout, procs.procs)

        say.section("7. Guarded deployment: shadow exit, Thompson allocation, auto-rollback")
        _guarded_deployment(api, settings, model_id, v1, v2, say, timeout, procs.procs)

        say.section("8. Strategy search: NSGA-II over thresholds, windows, horizon, rules")
        search_id = _strategy_search(api, min(span_days, SEARCH_SPAN_DAYS), say, timeout)
    finally:
        say.section("9. Stopping the processes this demo started")
        procs.stop_all()
        say(f"stopped {len(procs.procs)} processes; their logs are in {log_dir}")

    say.section("Where to look next")
    example = json.dumps({"model_type": "lightgbm", "symbol": PLANTED, "timeframe": "1h",
                          "dataset_span_days": span_days}, separators=(",", ":"))
    click.echo(f"""  Everything lives under {settings.var_dir} (database, market data, artifacts).
  Start the service yourself, each in its own terminal:
    .venv/bin/clm serve --port 8000
    .venv/bin/clm worker --queues data,evaluate,default --concurrency 1
    .venv/bin/clm worker --queues train --concurrency 2
    .venv/bin/clm beat
  Then, with this demo's admin token (or `clm token create --role viewer --name me`):
    export TOKEN={token}
    curl -s -H "Authorization: Bearer $TOKEN" localhost:8000/clm/jobs | python -m json.tool
    curl -s -H "Authorization: Bearer $TOKEN" localhost:8000/clm/jobs/{retrain_id}
    curl -s -H "Authorization: Bearer $TOKEN" "localhost:8000/clm/models?model_id={model_id}"
    curl -s -H "Authorization: Bearer $TOKEN" localhost:8000/clm/status
    curl -s -H "Authorization: Bearer $TOKEN" localhost:8000/clm/searches/{search_id}
    curl -s localhost:8000/openapi.json | python -m json.tool | less
  Train something else:
    curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{example}' localhost:8000/clm/train
  Watch the workers: celery -A workers.celery_app inspect active   (or Flower)""")
    say(f"demo finished in {time.monotonic() - say.t0:.0f}s")
    with transaction(settings.database_url) as session:  # the console (issue 15): last lines
        viewer = create_token(session, role="viewer", name=f"demo-viewer-{int(time.time())}",
                              actor="clm demo")
    click.echo("Web console (with `clm serve --port 8000` running): http://localhost:8000/ui/")
    click.echo(f"Sign in there with this viewer token: {viewer}")


@click.command()
@click.option("--bars", default=8760, show_default=True, type=click.IntRange(2000, 200_000),
              help="1h bars per synthetic series")
@click.option("--span-days", default=360, show_default=True, type=click.IntRange(30, 8000),
              help="dataset_span_days of each training job")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(30),
              help="seconds to wait for the training jobs")
def demo(bars: int, span_days: int, timeout: int) -> None:
    """Run the main job end to end on this machine (no servers needed)."""
    if span_days * 24 > bars:
        raise click.BadParameter(f"{span_days} days of 1h bars need --bars >= {span_days * 24}")
    with _interruptible():
        try:
            run_demo(bars, span_days, timeout)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: every process the demo started was stopped", err=True)
            sys.exit(130)
