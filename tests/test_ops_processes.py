"""The whole system from the Procfile, as an operator runs it: `clm db upgrade`, then
`honcho start` on the embedded default (SQLite + filesystem broker, no servers).

One running system serves the tests of this module, in order:
- every Procfile process is up, and each one's liveness probe (`python -m app.liveness`,
  what compose.yaml's health checks run) says so — workers and beat by answering a
  remote-control ping, not merely by having a PID;
- a training job submitted over HTTP to the production WSGI server (gunicorn) finishes on
  the Procfile's workers; Flower, started by the same Procfile with basic auth from
  FLOWER_BASIC_AUTH, lists both workers with their queues and the job's tasks by name;
- GET /metrics from gunicorn (several worker processes) reports the job, its step
  durations, queue depths and request latency for the endpoints that were called;
- every log line any process wrote about the job is JSON carrying its job_id;
- SIGINT to honcho stops every process, leaving none behind.
Separately: the Procfile's web command refuses a database that is not at migration head.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import load_settings
from tests.support.pipeline import SPAN_DAYS, seed_market
from tests.support.private_services import free_port
from tests.support.workers import REPO, tail, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
FLOWER_AUTH = ("ops", "s3cret-flower")
TINY = {"n_estimators": 20, "max_depth": 3}
PROCESSES = ("web", "worker-train", "worker-eval", "beat", "events", "flower")


@dataclass
class System:
    """The honcho-run system: its environment, ports, log, token and what tests learned."""

    root: Path
    env: dict[str, str]
    web: str
    flower: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str
    facts: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def probe(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.liveness", *args], env=self.env,
                              cwd=self.root, capture_output=True, text=True, timeout=60)


def _system_env(root: Path) -> dict[str, str]:
    """The test's environment minus every CLM_* setting: the embedded default under root."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLM_", "FLOWER_", "PROMETHEUS_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "CLM_VAR_DIR": str(root / "var"),
        "CLM_WEB_PORT": str(free_port()),
        "CLM_FLOWER_PORT": str(free_port()),
        "CLM_LOG_JSON": "1",
        "CLM_TRAIN_THREADS": "1",
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        # The system's own timing, short enough for a test.
        "CLM_OUTBOX_RELAY_INTERVAL_S": "2",
    })
    return env


def _get(url: str, **kw: Any) -> requests.Response | None:
    try:
        return requests.get(url, timeout=5, **kw)
    except requests.RequestException:
        return None


def _started_pids(log: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"\| (\S+)\.1 started \(pid=(\d+)\)", log)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_honcho(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int | None:
    """SIGINT (Ctrl-C) to honcho; it stops its processes (SIGKILL after 5 s)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    return proc.poll()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("procfile")
    env = _system_env(root)
    upgrade = subprocess.run([str(BIN / "clm"), "db", "upgrade"], env=env, cwd=root,
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    settings = load_settings(env)
    assert settings.database_url.startswith("sqlite") and settings.is_embedded_broker
    seed_market(settings)
    from app.db import dispose_engines, transaction
    from app.services.auth import create_token

    with transaction(settings.database_url) as session:
        token = create_token(session, role="operator", name="ops-test")
    dispose_engines()
    log_path = root / "honcho.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # honcho gives each process a $PORT (web's is the base port, -p), as `make up`
            [str(BIN / "honcho"), "-f", str(REPO / "Procfile"), "-d", str(root), "start",
             "-p", env["CLM_WEB_PORT"]],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    system = System(root, env, f"http://127.0.0.1:{env['CLM_WEB_PORT']}",
                    f"http://127.0.0.1:{env['CLM_FLOWER_PORT']}", proc, log_path, token)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"honcho exited {proc.returncode}:\n{tail(system.log())}")
            health = _get(system.web + "/health")
            flower = _get(system.flower + "/healthcheck")
            log = system.log()
            return bool(health is not None and health.status_code == 200
                        and flower is not None and flower.status_code == 200
                        and log.count(" ready.") >= 2 and "beat: Starting" in log
                        and "consuming " in log)

        wait_for(ready, timeout=120, interval=0.3, what="the Procfile's processes")
        yield system
    finally:
        _stop_honcho(proc)
        for pid in _started_pids(system.log()).values():  # whatever honcho left behind
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_every_procfile_process_is_up_and_answers_its_liveness_probe(system: System):
    assert set(_started_pids(system.log())) == set(PROCESSES)
    health = requests.get(system.web + "/health", timeout=5).json()
    assert health["status"] == "ok"
    assert health["database"] == {"reachable": True, "backend": "sqlite"}
    assert health["broker"] == {"reachable": True, "backend": "filesystem"}
    probes = {
        "web": ("web", "--url", system.web + "/health"),
        "worker-train": ("worker", "--name", "train"),
        "worker-eval": ("worker", "--name", "eval"),
        "beat": ("beat",),
        "events": ("events", "--max-age", "30"),
        "flower": ("flower", "--url", system.flower + "/healthcheck"),
    }
    for name, args in probes.items():
        result = system.probe(*args)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "alive" in result.stdout
    # A node that is not running does not answer: the probe can fail.
    missing = system.probe("worker", "--name", "nobody", "--timeout", "1")
    assert missing.returncode == 1 and "no answer" in missing.stdout


def test_a_training_job_runs_on_the_procfile_workers_and_flower_shows_it(system: System):
    r = requests.post(system.web + "/clm/train", headers=system.headers(), timeout=10, json={
        "model_type": "xgboost", "symbol": "PLANTED", "timeframe": "1h",
        "dataset_span_days": SPAN_DAYS, "params": TINY})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    system.facts["job_id"] = job_id

    system.facts["job_gets"] = 0

    def finished() -> dict[str, Any] | None:
        r = requests.get(f"{system.web}/clm/jobs/{job_id}", headers=system.headers(),
                         timeout=10)
        assert r.status_code == 200, r.text
        system.facts["job_gets"] += 1
        body = r.json()
        return body if body["status"] in ("succeeded", "failed") else None

    job = wait_for(finished, timeout=150, interval=0.5, what=f"job {job_id}")
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["version_status"] == "candidate"
    items = job["folds"]["items"]
    assert items and all(i["worker"].startswith("train@") for i in items)
    system.facts["job"] = job

    # Flower's API needs the credentials from FLOWER_BASIC_AUTH.
    assert requests.get(system.flower + "/api/workers", timeout=10).status_code == 401
    assert requests.get(system.flower + "/api/workers", auth=("ops", "wrong"),
                        timeout=10).status_code == 401
    workers = requests.get(system.flower + "/api/workers?refresh=1", auth=FLOWER_AUTH,
                           timeout=30).json()
    queues = {node.split("@")[0]: {q["name"] for q in info.get("active_queues") or []}
              for node, info in workers.items()}
    assert queues.get("train") == {"train"}, workers.keys()
    assert queues.get("eval") == {"data", "evaluate", "default"}

    def job_tasks() -> dict[str, str] | None:
        tasks = requests.get(system.flower + "/api/tasks", auth=FLOWER_AUTH,
                             timeout=10).json()
        mine = {}
        for task in tasks.values():
            if job_id in str(task.get("args")):
                mine.setdefault(task["name"], set()).add(task["state"])
        wanted = {"clm.job.prepare", "clm.job.train_fold", "clm.job.final_fit",
                  "clm.job.evaluate"}
        return mine if wanted <= set(mine) and all(
            s == {"SUCCESS"} for n, s in mine.items() if n in wanted) else None

    # Task events arrive asynchronously: poll until Flower saw every step succeed.
    by_name = wait_for(job_tasks, timeout=30, interval=0.5, what="Flower to see the tasks")
    assert all(name.startswith("clm.job.") for name in by_name)
    # Every task of the job is listed under its readable name with its worker.
    tasks = requests.get(system.flower + "/api/tasks", auth=FLOWER_AUTH, timeout=10).json()
    fold_workers = {t["worker"] for t in tasks.values()
                    if t["name"] == "clm.job.train_fold" and job_id in str(t["args"])}
    assert fold_workers and all(w.startswith("train@") for w in fold_workers)


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    for s in samples.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_metrics_from_the_wsgi_server_report_the_job_and_every_worker_process(
        system: System):
    job_id = system.facts.get("job_id")
    assert job_id, "needs the training job of the previous test"
    # Requests spread over gunicorn's worker processes; the scrape must count them all.
    calls = 12
    for _ in range(calls):
        r = requests.get(f"{system.web}/clm/jobs/{job_id}", headers=system.headers(),
                         timeout=10)
        assert r.status_code == 200
    text = requests.get(system.web + "/metrics", timeout=10).text
    samples = _samples(text)
    assert _value(samples, "clm_training_jobs", status="succeeded",
                  trigger_reason="manual") == 1.0
    assert _value(samples, "clm_training_job_duration_seconds_count",
                  model_type="xgboost", status="succeeded") == 1.0
    assert _value(samples, "clm_training_step_duration_seconds_count",
                  step="train_folds") == 1.0
    assert {s.labels["queue"] for s in samples["clm_queue_depth"]} == {
        "data", "train", "evaluate", "default"}
    assert _value(samples, "clm_model_versions", status="candidate") == 1.0
    assert _value(samples, "clm_database_up") == 1.0
    # Exactly every request, whichever gunicorn worker served it (multiprocess mode).
    assert _value(samples, "clm_http_request_duration_seconds_count",
                  endpoint="/clm/jobs/<job_id>", method="GET",
                  status="200") == calls + system.facts["job_gets"]
    assert _value(samples, "clm_http_request_duration_seconds_count",
                  endpoint="/clm/train", method="POST", status="202") == 1.0


def test_every_log_line_about_the_job_is_json_with_its_job_id(system: System):
    job_id = system.facts.get("job_id")
    assert job_id, "needs the training job of the previous tests"
    about_job = []
    for line in system.log().splitlines():
        process, _, text = line.partition("| ")
        if job_id not in text:
            continue
        about_job.append((process.split()[-1], text))
        assert text.startswith("{"), f"not JSON: {line}"
        record = json.loads(text)
        assert record.get("job_id") == job_id, line
    by_process = {p for p, _ in about_job}
    assert {"worker-train.1", "worker-eval.1", "web.1"} <= by_process
    # Celery's own lines about the job's tasks carry it too (received ... succeeded).
    messages = [json.loads(t)["message"] for _, t in about_job]
    assert any("clm.job.train_fold" in m and "succeeded" in m for m in messages)
    assert any("clm.job.prepare" in m and "received" in m for m in messages)


def test_sigint_stops_every_process(system: System):
    pids = _started_pids(system.log())
    assert set(pids) == set(PROCESSES)
    started = time.monotonic()
    rc = _stop_honcho(system.proc)
    elapsed = time.monotonic() - started
    assert rc is not None, "honcho did not stop"
    assert elapsed < 20
    log = system.log()
    for name in PROCESSES:
        assert f"{name}.1 stopped" in log, tail(log)
    # honcho waited for each process (the Procfile execs them) or killed its group.
    leftovers = {name: pid for name, pid in pids.items() if _group_alive(pid)}
    assert not leftovers, leftovers
    after = log[log.index("sending SIGTERM"):] if "sending SIGTERM" in log else ""
    assert "Traceback" not in after, tail(after, 60)


def test_procfile_web_refuses_a_database_not_at_head(tmp_path: Path):
    """The web command, exactly as the Procfile has it, on a fresh (unmigrated) database."""
    command = next(line.partition(":")[2].strip()
                   for line in (REPO / "Procfile").read_text().splitlines()
                   if line.startswith("web:"))
    env = _system_env(tmp_path)
    result = subprocess.run(["/bin/sh", "-c", command], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "clm db upgrade" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    # Nothing was migrated behind the operator's back.
    from app import migrate

    assert migrate.current_revision(load_settings(env).database_url) is None
    assert shlex.split(command)[:2] == ["exec", "clm"]


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


def test_compose_runs_the_procfile_commands_with_matching_probes():
    """compose.yaml: each Procfile process as a service with the same command and a
    liveness probe that asks that very process (worker node names line up)."""
    import yaml

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    procfile = {line.partition(":")[0]: shlex.split(line.partition(":")[2])
                for line in (REPO / "Procfile").read_text().splitlines()
                if line and not line.startswith("#")}
    for name in PROCESSES:
        service = services[name]
        command = [part for part in procfile[name] if part != "exec"]
        assert service["command"][:2] == command[:2], name  # same program and subcommand
        probe = service["healthcheck"]["test"]
        assert probe[:4] == ["CMD", "python", "-m", "app.liveness"], name
        assert set(service["volumes"]) == {"clm-data:/var/clm/data",
                                           "clm-artifacts:/var/clm/artifacts"}
    for name, node in (("worker-train", "train"), ("worker-eval", "eval")):
        service = services[name]
        assert service["command"][service["command"].index("--hostname") + 1] == f"{node}@%h"
        assert service["healthcheck"]["test"][-2:] == ["--name", node]
        soft = float(service["environment"]["CLM_WORKER_SOFT_SHUTDOWN_TIMEOUT_S"])
        assert _seconds(service["stop_grace_period"]) > soft
    assert services["web"]["command"][:2] == ["clm", "serve"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert "--maxmemory" in redis
    migrate = services["migrate"]
    assert migrate["command"] == ["clm", "db", "upgrade"] and migrate["restart"] == "no"


def test_clm_data_import_shows_a_progress_bar_on_a_terminal(tmp_path: Path):
    """Long CLI work shows progress: `clm data import` of a large file, stderr a terminal."""
    import fcntl
    import pty
    import struct
    import termios

    from app.ml.data.synthetic import generate_ohlcv

    frame = generate_ohlcv("random_walk", 150_000, "1m", seed=3)
    csv = tmp_path / "big.csv"
    frame.reset_index().to_csv(csv, index=False)
    assert csv.stat().st_size >= 8 << 20  # above the size that gets a bar
    env = _system_env(tmp_path)
    primary, secondary = pty.openpty()
    # A terminal 100 columns wide (a fresh pty is 0 × 0, where tqdm draws nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.run(
            [str(BIN / "clm"), "data", "import", str(csv), "--symbol", "BIGUSDT",
             "--timeframe", "1m"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=secondary, timeout=120)
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO once the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert "parsing big.csv" in terminal and "rows" in terminal, terminal
    assert "150k" in terminal or "150000" in terminal, terminal  # the bar reached the end
    assert b"150000 rows" in proc.stdout
