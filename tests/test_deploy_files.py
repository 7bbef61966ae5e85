"""Procfile and compose.yaml: valid, and describing the same processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import services_required

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = {"web", "worker-train", "worker-eval", "beat", "events", "flower"}


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def test_procfile_has_every_process():
    assert set(procfile()) == PROCESSES
    honcho = Path(sys.executable).parent / "honcho"
    result = subprocess.run([str(honcho), "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_procfile_processes_after_migrate():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert PROCESSES | {"postgres", "redis", "migrate"} <= set(services)
    assert services["migrate"]["command"] == ["clm", "db", "upgrade"]
    for name in PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert "noeviction" in services["redis"]["command"]
    assert "5555:5555" in services["flower"]["ports"]
    assert "healthcheck" in services["web"] and "healthcheck" in services["worker-train"]


def test_compose_file_is_valid_for_docker_compose():
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True
    ).returncode == 0:
        command = ["docker", "compose", "-f", "compose.yaml", "config", "-q"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose", "-f", "compose.yaml", "config", "-q"]
    else:
        if services_required():
            pytest.fail("no docker compose / docker-compose to validate compose.yaml")
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
