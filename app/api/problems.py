"""problem+json errors (RFC 9457): every 4xx/5xx body the API sends is built here."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.core.errors import DomainError

log = logging.getLogger(__name__)

PROBLEM_MIME = "application/problem+json"
# Deeper JSON than this is refused (400) before anything recurses through it: real
# bodies nest a few levels; thousands of levels exhaust the parser's or our recursion.
MAX_JSON_DEPTH = 64
# Request bodies above this are refused with 413 (performance reports are the largest).
MAX_BODY_BYTES = 16 << 20
# Request lines (method, path and query string) longer than this are refused with 414.
# gunicorn's own check is off (`clm serve` sets limit_request_line=0, which its parser
# still bounds at 1 MiB) so that the answer is problem+json, not gunicorn's HTML page.
MAX_REQUEST_LINE = 8190


class ApiProblem(Exception):
    """Raise from a view or service adapter to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.headers = headers or {}
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = errors
        self.type = type_
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    type_: str = "about:blank",
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_MIME
    return response


def validation_errors(exc: ValidationError, location: str = "body") -> list[dict[str, str]]:
    """pydantic errors → [{"field", "message"}] with dotted field paths."""
    errors = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__")
        errors.append({"field": loc or location, "message": err.get("msg", "invalid value")})
    return errors


def unprocessable(field: str, message: str) -> ApiProblem:
    """A 422 naming one field."""
    return ApiProblem(
        422,
        "Unprocessable request",
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def _too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests containers deeper than `limit` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _nesting_problem() -> ApiProblem:
    message = f"nested deeper than {MAX_JSON_DEPTH} levels"
    return ApiProblem(400, "Bad request", f"request body is {message}",
                      errors=[{"field": "body", "message": message}])


def json_body() -> Any:
    """The request's parsed JSON (None when absent or not JSON); 400 naming `body` when
    it nests too deeply to be handled safely."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise _nesting_problem() from None
    if data is not None and _too_deep(data):
        raise _nesting_problem()
    return data


def _nul_path(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) in a JSON value holding a NUL byte."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return sub
            found = _nul_path(item, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def refuse_nul_bytes() -> None:
    """Text with a NUL byte (0x00) can never be stored or matched (PostgreSQL text cannot
    hold it): answer before any view runs, instead of a database error (a 500). A path
    parameter with one names nothing that can exist (404); a query parameter or a body
    field is invalid input (422 naming it)."""
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and "\x00" in value:
            raise ApiProblem(404, "Not found", f"{name}: no such {name} (it holds a NUL byte)")
    for key, values in request.args.lists():
        if "\x00" in key or any("\x00" in v for v in values):
            raise unprocessable(key.replace("\x00", "\\x00"), "must not contain NUL bytes")
    if request.is_json and request.content_length:
        found = _nul_path(json_body(), "")
        if found is not None:
            raise unprocessable(found.replace("\x00", "\\x00") or "body",
                                "must not contain NUL bytes")


def refuse_long_request_line() -> None:
    """414 problem+json when the request line is longer than MAX_REQUEST_LINE bytes."""
    target = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not target:
        query = request.environ.get("QUERY_STRING", "")
        target = request.environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
    length = len(request.method) + 1 + len(target) + 1 + len(
        request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
    if length > MAX_REQUEST_LINE:
        message = f"longer than {MAX_REQUEST_LINE} bytes ({length})"
        raise ApiProblem(414, "URI too long", f"request line is {message}",
                         errors=[{"field": "url", "message": message}])


def _refuse_nul_bytes_unless_protected() -> None:
    # A role-protected view checks its input after the token and role (app.api.security),
    # so a caller without them gets 401/403 whatever the input holds.
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "__clm_role__", None) is None:
        refuse_nul_bytes()


def init_app(app: Flask) -> None:
    if app.config.get("MAX_CONTENT_LENGTH") is None:  # Flask's default: unlimited
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.before_request(refuse_long_request_line)
    app.before_request(_refuse_nul_bytes_unless_protected)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH") or MAX_BODY_BYTES
        message = f"larger than {limit} bytes"
        return problem_response(413, "Payload too large", f"request body is {message}",
                                errors=[{"field": "body", "message": message}])

    @app.errorhandler(ApiProblem)
    def _api_problem(exc: ApiProblem) -> Response:
        response = problem_response(
            exc.status, exc.title, exc.detail, errors=exc.errors, type_=exc.type, **exc.extra
        )
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        # Services raise NotFound / Conflict / InvalidInput; each knows its status.
        return problem_response(
            exc.status, exc.title, exc.detail, errors=exc.errors, **exc.extra
        )

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, "Unprocessable request", detail, errors=errors)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = problem_response(status, exc.name, exc.description or exc.name)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(OperationalError)
    def _db_down(exc: OperationalError) -> Response:
        log.warning("database unavailable: %s", exc.orig)
        response = problem_response(
            503, "Service unavailable", "the database is not reachable; retry later"
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError) -> Response:
        if exc.connection_invalidated:
            return _db_down(exc)  # type: ignore[arg-type]
        log.exception("database error")
        return problem_response(500, "Internal server error", "unexpected database error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "Internal server error", "unexpected error; see server logs")
