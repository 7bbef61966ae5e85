"""Request parsing and the OpenAPI document, from the same pydantic models.

Views declare what they accept with `@documented(...)`; `parse_body`/`parse_query` validate
with those models (422 naming the field), and `build_openapi` turns the declarations into
the OpenAPI 3 document served at /openapi.json — one source, so docs cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from flask import Flask, request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from app.api.problems import ApiProblem, json_body, validation_errors
from app.core.domain import normalize_symbol

M = TypeVar("M", bound=BaseModel)

# A market symbol as clients may send it (any case; stored upper-case): the one symbol
# rule of app.core.domain, stated in the schema too so generated clients know it.
Symbol = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,29}$",
          description="e.g. BTCUSDT: 1-30 of A-Z, 0-9, '.', '_', '-' starting with a letter "
                      "or digit (stored upper-case)"),
    AfterValidator(normalize_symbol),
]


class StrictModel(BaseModel):
    """Base for request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class QueryModel(BaseModel):
    """Base for query strings: unknown parameters are ignored (browsers, caches add some)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against `model`; 400 for non-JSON, 422 naming fields."""
    data = json_body()
    if data is None:
        raw = request.get_data(cache=True)
        if raw.strip() and not request.is_json:
            raise ApiProblem(
                400,
                "Bad request",
                f"request body must be JSON sent with Content-Type: application/json "
                f"(got {request.mimetype or 'no Content-Type'})",
                errors=[{"field": "body", "message": "not sent as application/json"}],
            )
        if raw.strip() and raw.strip() != b"null":
            raise ApiProblem(
                400,
                "Bad request",
                "request body is not valid JSON",
                errors=[{"field": "body", "message": "not valid JSON"}],
            )
        data = None if raw.strip() else {}
    if not isinstance(data, dict):
        raise ApiProblem(
            422,
            "Unprocessable request",
            "request body must be a JSON object",
            errors=[{"field": "body", "message": "must be a JSON object"}],
        )
    try:
        # Strict, from JSON: a number field takes a JSON number (never `false` or
        # "1.5"), a boolean a JSON boolean, a string a JSON string; enum values and
        # date-times still come as the strings JSON has for them.
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise ApiProblem(
            422,
            "Unprocessable request",
            "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors=errors,
        ) from None


def parse_query(model: type[M]) -> M:
    """Validate the query string against `model`; 422 naming the parameter."""
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc, "query")
        raise ApiProblem(
            422,
            "Unprocessable request",
            "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors=errors,
        ) from None


@dataclass
class RouteDoc:
    summary: str
    role: str | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, str] = field(default_factory=dict)
    tag: str = "clm"
    media_type: str = "application/json"


def documented(
    summary: str,
    *,
    role: str | None = None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, str] | None = None,
    tag: str = "clm",
    media_type: str = "application/json",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach OpenAPI facts to a view function (read by `build_openapi`); `media_type` is
    that of its success responses."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__clm_doc__ = RouteDoc(  # type: ignore[attr-defined]
            summary, role, body, query, dict(responses or {200: "OK"}), tag, media_type
        )
        return func

    return decorate


_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _schema_of(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """`model`'s JSON schema with its nested definitions moved into `components` (every
    `$ref` points at `#/components/schemas/...`, so the document resolves)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    return schema


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _schema_of(model, components)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}}


# Answered by the service itself, whatever the route (app/api/problems.py): documented on
# every operation that can get them.
_ALWAYS = {414: "Request line (path and query string) too long"}
_WITH_BODY = {400: "Body is not JSON, not sent as application/json, or nested too deeply",
              413: "Body too large"}


def build_openapi(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route of `app`."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Problem": _PROBLEM_SCHEMA}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        doc: RouteDoc | None = getattr(view, "__clm_doc__", None)
        if doc is None:
            continue
        path = str(rule.rule)
        path_params = []
        # In the order they appear in the path (rule.arguments is a set).
        for arg in sorted(rule.arguments, key=lambda a, r=str(rule.rule): r.index(a)):
            path = path.replace(f"<{arg}>", f"{{{arg}}}")
            for conv in ("int", "string", "path"):
                path = path.replace(f"<{conv}:{arg}>", f"{{{arg}}}")
            path_params.append(
                {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "summary": doc.summary,
                "operationId": f"{rule.endpoint}_{method.lower()}".replace(".", "_"),
                "tags": [doc.tag],
                "parameters": list(path_params),
                "responses": {},
            }
            if doc.role:
                op["security"] = [{"bearer": []}]
                op["description"] = f"Requires role `{doc.role}` or higher."
            if doc.query is not None:
                op["parameters"] += _query_parameters(doc.query, components)
            if doc.body is not None:
                components[doc.body.__name__] = _schema_of(doc.body, components)
                op["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{doc.body.__name__}"}
                        }
                    },
                }
            for status, description in doc.responses.items():
                if status >= 400:
                    op["responses"][str(status)] = _problem(description)
                elif status == 204:
                    op["responses"][str(status)] = {"description": description}
                elif doc.media_type == "application/json":
                    op["responses"][str(status)] = {
                        "description": description,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                else:
                    op["responses"][str(status)] = {
                        "description": description,
                        "content": {doc.media_type: {"schema": {"type": "string"}}},
                    }
            extra: dict[int, str] = dict(_ALWAYS)
            if doc.role:
                extra |= {401: "Missing or bad token", 403: "Role too low"}
            if doc.body is not None:
                extra |= _WITH_BODY
            if doc.body is not None or doc.query is not None:
                extra[422] = "Invalid input (the offending field is named)"
            if path_params:
                extra[404] = "Not found"
            for status, description in sorted(extra.items()):
                op["responses"].setdefault(str(status), _problem(description))
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "CLM — Continuous Learning Manager", "version": "3.1.0"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
