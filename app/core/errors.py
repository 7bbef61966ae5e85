"""Domain errors raised by app/ services; the HTTP layer maps them to problem+json.

Services never import Flask: they raise these, and `app.api.problems` answers
`NotFound` with 404, `Conflict` with 409 and `InvalidInput` with 422 naming the field.
Keyword arguments given as `extra` ride along in the problem body (e.g. the id of the
job that blocks a new one), so a client can act on a conflict without parsing text.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a service raises on purpose (never a bug)."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def errors(self) -> list[dict[str, str]] | None:
        return None


class NotFound(DomainError):
    """The thing named does not exist (or cannot exist, e.g. a malformed id)."""

    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request is valid but the current state forbids it (lifecycle rules, races)."""

    status = 409
    title = "Conflict"


class InvalidInput(DomainError):
    """A value is unusable; `field` is its dotted path (e.g. ``metrics.win_rate``)."""

    status = 422
    title = "Unprocessable request"

    def __init__(self, field: str, message: str, **extra: Any) -> None:
        super().__init__(f"{field}: {message}", **extra)
        self.field = field
        self.message = message

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"field": self.field, "message": self.message}]
