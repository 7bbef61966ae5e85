"""Who is looking at the console: sign-in with an API token, the session cookie, CSRF.

The console has no accounts of its own: an API token (`clm token create`) is the
credential, with the role it has in the API. Signing in exchanges it for a session
cookie `<token id>.<expiry>.<mac>` whose MAC is keyed with the token's stored hash, so
the server needs no secret of its own (every worker and host agrees), the cookie is not
the token, it expires, and revoking the token ends its sessions at once. The cookie is
HttpOnly and SameSite=Strict; every form carries a CSRF token derived from the session
(login: a double-submit cookie). A request with `Authorization: Bearer` is checked by
the API's own `app.api.security.authenticate_bearer` instead and needs no CSRF token (a
browser never adds that header by itself).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request
from werkzeug.wrappers import Response

from app.api.problems import ApiProblem, refuse_nul_bytes
from app.api.security import authenticate_bearer, check_role, lookup_token
from app.db import transaction
from app.models.registry import Role
from app.services.auth import TokenInfo, token_for_session

SESSION_COOKIE = "clm_session"
LOGIN_CSRF_COOKIE = "clm_login_csrf"
SESSION_SECONDS = 12 * 3600
COOKIE_PATH = "/ui"


def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(token: TokenInfo, token_hash: str, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    payload = f"{token.id}.{expires}"
    return f"{payload}.{_mac(token_hash, payload)}"


def _session_token(value: str) -> tuple[TokenInfo, str] | None:
    """The live token a session cookie stands for, with its hash (None when forged,
    expired or revoked)."""
    token_id, _, rest = value.partition(".")
    expires, _, mac = rest.partition(".")
    if not (token_id.isdigit() and expires.isdigit()) or len(token_id) > 18:
        return None
    if int(expires) < time.time():
        return None
    settings = current_app.config["CLM_SETTINGS"]
    with transaction(settings.database_url) as session:
        found = token_for_session(session, int(token_id))
    if found is None or not hmac.compare_digest(_mac(found[1], f"{token_id}.{expires}"), mac):
        return None
    return found


def sign_in(raw_token: str) -> tuple[TokenInfo, str] | None:
    """(identity, cookie value) for a valid API token, else None."""
    token = lookup_token(raw_token) if raw_token.strip() else None
    if token is None:
        return None
    settings = current_app.config["CLM_SETTINGS"]
    with transaction(settings.database_url) as session:
        found = token_for_session(session, token.id)
    if found is None:
        return None
    return found[0], session_value(found[0], found[1])


def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True,
                        samesite="Strict", secure=request.is_secure)


def _identify(needed: Role) -> TokenInfo:
    """The caller with at least role `needed`, or ApiProblem 401/403. Sets g.csrf."""
    settings = current_app.config["CLM_SETTINGS"]
    g.csrf = None
    if not settings.auth_enabled or request.headers.get("Authorization"):
        return authenticate_bearer(needed)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    found = _session_token(cookie) if cookie else None
    if found is None:
        raise ApiProblem(401, "Unauthorized", "sign in at /ui/login or send a bearer token",
                         headers={"WWW-Authenticate": "Bearer"})
    token, token_hash = found
    g.csrf = _mac(token_hash, "csrf." + cookie)[:40]
    return check_role(token, needed)


def check_csrf() -> None:
    """403 when a cookie-authenticated form post lacks the session's CSRF token."""
    if g.get("csrf") is None:  # bearer (or auth off): no ambient credential to abuse
        return
    sent = request.form.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), g.csrf.encode()):
        raise ApiProblem(403, "Forbidden", "missing or stale form token (CSRF); reload the "
                         "page and try again", errors=[{"field": "csrf", "message": "invalid"}])


def console_role(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like `app.api.security.require_role`, with the session cookie as a second way in;
    POSTs are CSRF-checked."""
    needed = Role(role)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.token = _identify(needed)
            if request.method == "POST":
                check_csrf()
            refuse_nul_bytes()
            return view(*args, **kwargs)

        wrapper.__clm_role__ = needed  # type: ignore[attr-defined]
        return wrapper

    return decorate


def login_csrf() -> str:
    """The login form's CSRF value: the double-submit cookie's, or a new one."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return current if len(current) == 43 else secrets.token_urlsafe(32)


def login_csrf_ok() -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = request.form.get("csrf", "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())
