"""Bearer-token authentication and role checks for views."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request

from app.api.problems import ApiProblem, refuse_nul_bytes
from app.db import retry_if_busy, transaction
from app.models.registry import Role
from app.services.auth import TokenInfo, verify_token


def current_actor(default: str = "anonymous") -> str:
    token: TokenInfo | None = g.get("token")
    return token.actor if token else default


def require_role(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """401 without a valid bearer token, 403 when its role is below `role`."""
    needed = Role(role)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.token = authenticate_bearer(needed)
            # Input is looked at only once the caller may make the request at all.
            refuse_nul_bytes()
            return view(*args, **kwargs)

        wrapper.__clm_role__ = needed  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def lookup_token(raw: str) -> TokenInfo | None:
    """The token's identity (None when unknown or revoked), use recorded (throttled)."""
    settings = current_app.config["CLM_SETTINGS"]

    def lookup() -> TokenInfo | None:
        # autocommit: one round-trip for the read (PostgreSQL); the throttled
        # use-record write, when due, commits by itself.
        with transaction(settings.database_url, autocommit=True) as session:
            return verify_token(session, raw.strip())

    # The throttled use-record makes this a read-then-write: on SQLite another
    # process's commit in between is a lock conflict, so the lookup runs again.
    return retry_if_busy(lookup)


def check_role(token: TokenInfo, needed: Role) -> TokenInfo:
    """`token`, or 403 when its role is below `needed`."""
    if not token.allows(needed):
        raise ApiProblem(
            403,
            "Forbidden",
            f"role {token.role.value} may not do this; needs {needed.value}",
        )
    return token


def authenticate_bearer(needed: Role) -> TokenInfo:
    """The request's bearer token with at least role `needed`: 401 without a valid one,
    403 when its role is too low (the web console uses this for its Bearer callers)."""
    settings = current_app.config["CLM_SETTINGS"]
    if not settings.auth_enabled:
        return TokenInfo(id=0, name="auth-disabled", role=Role.ADMIN)
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise _unauthorized("missing bearer token")
    token = lookup_token(raw)
    if token is None:
        raise _unauthorized("unknown or revoked token")
    return check_role(token, needed)
