"""The web console at /ui/: server-rendered HTML pages over the same services as the API.

`bp` is registered by `app.api.build_app` like the API's blueprints. Errors inside the
console answer as a page for a browser (a sign-in redirect for 401 on GET) and as
problem+json for any other client, so API callers see the API's error shape here too.
Every response forbids framing and scripts (no page needs JavaScript).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import redirect, render_template, request
from werkzeug.wrappers import Response

from app.api.problems import ApiProblem, problem_response
from app.core.errors import DomainError
from app.ui.views import bp

__all__ = ["bp"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def wants_html() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def _error(status: int, title: str, detail: str, errors: Any = None,
           headers: dict[str, str] | None = None, **extra: Any) -> Any:
    if not wants_html():
        response = problem_response(status, title, detail, errors=errors, **extra)
        response.headers.update(headers or {})
        return response
    if status == 401 and request.method == "GET":
        return redirect(f"/ui/login?next={quote(request.full_path.rstrip('?'))}", code=303)
    body = render_template("ui/error.html", status=status, title=title, detail=detail,
                           errors=errors or [], me=None, is_admin=False)
    return body, status


@bp.errorhandler(ApiProblem)
def _api_problem(exc: ApiProblem) -> Any:
    return _error(exc.status, exc.title, exc.detail, exc.errors, exc.headers, **exc.extra)


@bp.errorhandler(DomainError)
def _domain(exc: DomainError) -> Any:
    return _error(exc.status, exc.title, exc.detail, exc.errors, **exc.extra)


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response

