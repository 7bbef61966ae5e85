"""docs/API.md stays true: it documents exactly the routes of GET /openapi.json, each with
the role the route enforces, its query parameters and body fields, and exactly the `clm`
commands with their options. README points to it, and nowhere outside the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from app.core.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "API.md"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROLE_LINE = re.compile(r"^\*\*Role:\*\* (anyone|viewer|operator|admin)\s*$", re.M)
OPENAPI_ROLE = re.compile(r"Requires role `(\w+)` or higher")


def _sections(text: str) -> dict[str, str]:
    """`### heading` → the text up to the next heading (any level)."""
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        if heading.startswith("### "):
            name = heading[4:].strip()
            assert name not in sections, f"docs/API.md has the heading {heading!r} twice"
            sections[name] = body
    return sections


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    return _sections(API_MD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def http_docs(docs: dict[str, str]) -> dict[tuple[str, str], str]:
    """(METHOD, path) → its section, for every `### METHOD /path` heading."""
    out = {}
    for heading, body in docs.items():
        method, _, path = heading.partition(" ")
        if method in HTTP_METHODS and path.startswith("/"):
            out[(method, path)] = body
    return out


@pytest.fixture(scope="module")
def flask_app(sqlite_dbs: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from app import create_app

    root = tmp_path_factory.mktemp("api-docs")
    settings = load_settings({
        "CLM_DATABASE_URL": sqlite_dbs.migrated(), "CLM_VAR_DIR": str(root / "var"),
        "CLM_DATA_DIR": str(root / "var" / "data"),
        "CLM_ARTIFACT_ROOT": str(root / "var" / "artifacts"), "CLM_LOG_JSON": "0",
    })
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture(scope="module")
def operations(flask_app: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) → operation object of the served OpenAPI document."""
    response = flask_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    ops = {
        (method.upper(), path): {**op, "_components": document["components"]["schemas"]}
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert ops, "the OpenAPI document lists no operation"
    return ops


def _openapi_role(op: dict[str, Any]) -> str:
    found = OPENAPI_ROLE.search(op.get("description", ""))
    return found.group(1) if found else "anyone"


def _documented_role(section: str, where: str) -> str:
    roles = ROLE_LINE.findall(section)
    assert len(roles) == 1, f"docs/API.md {where}: expected one '**Role:** <role>' line"
    return roles[0]


def test_every_operation_is_documented_with_its_role(operations, http_docs):
    missing = sorted(f"{m} {p}" for m, p in operations if (m, p) not in http_docs)
    assert not missing, f"routes missing from docs/API.md: {missing}"
    wrong = []
    for (method, path), op in sorted(operations.items()):
        documented = _documented_role(http_docs[(method, path)], f"{method} {path}")
        if documented != _openapi_role(op):
            wrong.append(f"{method} {path}: docs say {documented}, OpenAPI {_openapi_role(op)}")
    assert not wrong, "roles in docs/API.md differ from /openapi.json:\n" + "\n".join(wrong)


def test_docs_name_no_route_that_does_not_exist(operations, http_docs):
    extra = sorted(f"{m} {p}" for m, p in http_docs if (m, p) not in operations)
    assert not extra, f"docs/API.md documents routes that do not exist: {extra}"


def test_the_documented_role_is_the_enforced_one(flask_app, operations):
    """The role /openapi.json states (and so docs/API.md) is the one `require_role`
    enforces, and every route but Flask's static files and the console's pages other than
    GET /ui/ is in the OpenAPI document."""
    seen = set()
    for rule in flask_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = flask_app.view_functions[rule.endpoint]
        if rule.endpoint.startswith("ui.") and not hasattr(view, "__clm_doc__"):
            continue  # the console's HTML pages: only its entry page is an API route
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        view = flask_app.view_functions[rule.endpoint]
        needed = getattr(view, "__clm_role__", None)
        enforced = needed.value if needed is not None else "anyone"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            assert (method, path) in operations, f"{method} {path} is not in /openapi.json"
            assert _openapi_role(operations[(method, path)]) == enforced, (
                f"{method} {path}: OpenAPI says {_openapi_role(operations[(method, path)])}, "
                f"the view enforces {enforced}"
            )
            seen.add((method, path))
    assert seen == set(operations)


def _body_fields(op: dict[str, Any]) -> list[str]:
    body = op.get("requestBody")
    if body is None:
        return []
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    return list(op["_components"][ref].get("properties", {}))


def test_query_parameters_and_body_fields_are_documented(operations, http_docs):
    missing = []
    for (method, path), op in sorted(operations.items()):
        section = http_docs[(method, path)]
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        for name in [*names, *_body_fields(op)]:
            if f"`{name}`" not in section:
                missing.append(f"{method} {path}: `{name}`")
    assert not missing, "fields missing from docs/API.md:\n" + "\n".join(missing)


def _commands(group: click.Group, prefix: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"clm {' '.join((*prefix, name))} cannot be loaded"
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_cli_command_is_documented_with_its_options(docs):
    from app.cli import cli

    commands = dict(_commands(cli))
    problems = []
    for path, command in sorted(commands.items()):
        if isinstance(command, click.Group):
            continue
        heading = "clm " + " ".join(path)
        if heading not in docs:
            problems.append(f"no '### {heading}' section")
            continue
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help" and f"`{opt}`" not in docs[heading]:
                    problems.append(f"{heading}: option `{opt}` not documented")
    documented = {h for h in docs if h.startswith("clm ")}
    for heading in sorted(documented):
        if tuple(heading.split()[1:]) not in commands:
            problems.append(f"'### {heading}' names no existing command")
    assert not problems, "docs/API.md vs the clm commands:\n" + "\n".join(problems)


def test_readme_points_to_the_api_reference_inside_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/API.md" in readme
    assert "../shared" not in readme, "README must not point outside the repository"
