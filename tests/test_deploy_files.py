"""Procfile, compose.yaml and the Dockerfile: valid, and describing the same processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
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


def _expanded(command: str, env: dict[str, str]) -> list[str]:
    """The words `command` becomes once /bin/sh expands it (as honcho runs each line),
    without running it: `set --` takes the expanded words as positional parameters."""
    script = f'set -- {command}; printf "%s\\n" "$@"'
    result = subprocess.run(["/bin/sh", "-c", script], env={"PATH": os.defpath, **env},
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def _web_port(env: dict[str, str]) -> str:
    words = _expanded(procfile()["web"], env)
    assert words[:3] == ["exec", "clm", "serve"], words
    return words[words.index("--port") + 1]


def test_web_listens_on_PORT_else_CLM_WEB_PORT_else_8000():
    assert _web_port({}) == "8000"
    assert _web_port({"CLM_WEB_PORT": "8100"}) == "8100"
    assert _web_port({"PORT": "5000", "CLM_WEB_PORT": "8100"}) == "5000"
    assert _web_port({"PORT": "5000"}) == "5000"
    assert _web_port({"PORT": "", "CLM_WEB_PORT": "8100"}) == "8100"  # empty counts as unset


def test_honcho_start_gives_web_its_base_port():
    """What the Procfile comment says: `honcho start` sets PORT (its base port for the
    first process type, web), and `-p N` moves it."""
    from honcho.environ import expand_processes, parse_procfile

    processes = parse_procfile((ROOT / "Procfile").read_text()).processes
    for base in (5000, 8000):
        web = next(p for p in expand_processes(processes, port=base) if p.name == "web.1")
        assert _web_port({"CLM_WEB_PORT": "8100", **web.env}) == str(base)


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


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_user() -> str:
    """The uid the image runs as (its last USER, without the group)."""
    users = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    assert users, "the Dockerfile sets no USER: the image would run as root"
    return users[-1].split(":")[0]


def test_dockerfile_runs_clm_as_a_non_root_user_without_build_secrets():
    instructions = dockerfile_instructions()
    uid = dockerfile_user()
    assert uid.isdigit() and int(uid) != 0, uid  # numeric: runAsNonRoot can verify it
    # The uid the image creates its user with is the one it switches to.
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(rf"useradd [^&]*--uid {uid}\b", runs), runs
    # The `clm` console script (pyproject's [project.scripts]) is what the image runs.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "clm" in scripts
    (cmd,) = [json.loads(rest) for word, rest in instructions if word == "CMD"]
    assert cmd[0] == "clm"
    assert not [rest for word, rest in instructions if word == "ENTRYPOINT"]
    # No build-time secrets: no ARG or ENV named like one, no secret mounts, and only the
    # project's own source is copied (never a .env or a credentials file).
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|AUTH", re.I)
    for word, rest in instructions:
        if word in {"ARG", "ENV"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split("=")[0]]
            assert not any(secret_name.search(name) for name in names), (word, rest)
        assert "--mount=type=secret" not in rest
        if word in {"COPY", "ADD"}:
            sources = rest.split()[:-1]
            assert all(not s.startswith(".env") and "secret" not in s.lower()
                       for s in sources), rest
            assert word == "COPY", "ADD can fetch URLs at build time"
