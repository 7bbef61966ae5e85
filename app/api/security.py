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
            settings = current_app.config["CLM_SETTINGS"]
            if not settings.auth_enabled:
                g.token = TokenInfo(id=0, name="auth-disabled", role=Role.ADMIN)
                refuse_nul_bytes()
                return view(*args, **kwargs)
            header = request.headers.get("Authorization", "")
            scheme, _, raw = header.partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                raise ApiProblem(
                    401,
                    "Unauthorized",
                    "missing bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            def lookup() -> TokenInfo | None:
                # autocommit: one round-trip for the read (PostgreSQL); the throttled
                # use-record write, when due, commits by itself.
                with transaction(settings.database_url, autocommit=True) as session:
                    return verify_token(session, raw.strip())

            # The throttled use-record makes this a read-then-write: on SQLite another
            # process's commit in between is a lock conflict, so the lookup runs again.
            token = retry_if_busy(lookup)
            if token is None:
                raise ApiProblem(
                    401,
                    "Unauthorized",
                    "unknown or revoked token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not token.allows(needed):
                raise ApiProblem(
                    403,
                    "Forbidden",
                    f"role {token.role.value} may not do this; needs {needed.value}",
                )
            g.token = token
            # Input is looked at only once the caller may make the request at all.
            refuse_nul_bytes()
            return view(*args, **kwargs)

        wrapper.__clm_role__ = needed  # type: ignore[attr-defined]
        return wrapper

    return decorate
