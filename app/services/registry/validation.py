"""Registry input checks: everything a caller hands the registry is validated here.

Owns: the contract's `Metrics` and `Artifact` models (the API's request models derive
from them), the limits on tags, notes, actors and reasons, the JSON clean-up of free-form
documents (params, lineage, evaluation), status parsing, and the rule that an id which
cannot exist is unknown (NotFound) before it reaches the database. Raises
`app.core.errors.InvalidInput` / `NotFound`; no database access.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
)

from app.core.domain import ModelStatus, is_model_id
from app.core.errors import InvalidInput, NotFound
from app.ml.scoring import promotion_score

# What a path segment naming a version may look like (anything else cannot exist).
_VERSION_TOKEN_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_TAGS = 50
_MAX_JSON_DEPTH = 32
_MAX_NOTES = 10_000
_MAX_ACTOR = 120  # audit_log.actor / created_by column width


def no_nul(value: str) -> str:
    """Refuse NUL characters: PostgreSQL text and JSONB cannot hold them (a DB error)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class Metrics(BaseModel):
    """The contract's metrics object. Strict: numbers must be JSON numbers, not strings.

    Every value may be null (unknown, e.g. Sharpe of a flat equity curve). Extra keys are
    allowed for other figures but must be finite numbers or null.
    """

    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, FiniteFloat | None] = Field(init=False)

    sharpe: FiniteFloat | None = None
    win_rate: FiniteFloat | None = Field(None, ge=0, le=1, description="0–1")
    profit_factor: FiniteFloat | None = Field(
        None, ge=0, description="null when there is no losing trade"
    )
    max_drawdown: FiniteFloat | None = Field(None, ge=0, le=1, description="0–1, positive")
    # Below 2**53: a JSON number every client (JavaScript included) reads exactly.
    trades: int | None = Field(None, ge=0, lt=2**53)
    total_return: FiniteFloat | None = None
    promotion_score: FiniteFloat | None = Field(
        None, ge=0, le=100, description="0–100; computed by the registry when absent"
    )


class Artifact(BaseModel):
    """Where a version's model file lives. Accepts dicts or objects (e.g. `ArtifactRef`)."""

    model_config = ConfigDict(extra="ignore", from_attributes=True, str_strip_whitespace=True)

    uri: Annotated[str, AfterValidator(no_nul)] = Field(min_length=1, max_length=400)
    sha256: Annotated[str, AfterValidator(str.lower)] = Field(pattern=r"^[0-9a-fA-F]{64}$")
    format: Annotated[str, AfterValidator(no_nul)] = Field(min_length=1, max_length=40)


def validated(model: type[BaseModel], value: Any, field: str) -> BaseModel:
    """Validate with a pydantic model; the first error becomes InvalidInput(field.path)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join([field, *(str(p) for p in err.get("loc", ()))])
        raise InvalidInput(path, err.get("msg", "invalid value")) from None


def validate_metrics(metrics: Any) -> dict[str, Any]:
    if isinstance(metrics, BaseModel):
        metrics = metrics.model_dump()
    if not isinstance(metrics, Mapping):
        raise InvalidInput("metrics", "must be an object")
    clean = validated(Metrics, {k: _plain(v) for k, v in metrics.items()}, "metrics")
    data = clean.model_dump()
    # The registry fills the score in so every version can be ranked the same way;
    # a version with no performance figures at all (training, failed) has none.
    if data["promotion_score"] is None and any(
        data[k] is not None for k in ("sharpe", "win_rate", "profit_factor")
    ):
        data["promotion_score"] = round(promotion_score(data), 6)
    return data


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars (the pipeline hands over backtest output as is)."""
    if not isinstance(value, str | bytes | bool | int | float | dict | list | tuple) and hasattr(
        value, "item"
    ):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _json_doc(value: Any, field: str, depth: int = 0) -> Any:
    """A JSON-storable copy of a free-form document (params, lineage, evaluation, tags).

    Non-finite floats become null (JSON has no NaN; PostgreSQL JSONB refuses it), tuples
    become lists; NUL characters, non-string keys and unknown types are refused.
    """
    if depth > _MAX_JSON_DEPTH:
        raise InvalidInput(field, f"nested deeper than {_MAX_JSON_DEPTH} levels")
    value = _plain(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(field, "must not contain NUL characters")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise InvalidInput(field, f"keys must be strings without NUL, got {key!r}")
            out[key] = _json_doc(item, f"{field}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_doc(item, f"{field}.{i}", depth + 1) for i, item in enumerate(value)]
    raise InvalidInput(field, f"not JSON data ({type(value).__name__})")


def json_object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(field, "must be an object")
    return _json_doc(value, field)


def check_tags(tags: Mapping[str, Any], field: str = "tags") -> dict[str, str]:
    if len(tags) > _MAX_TAGS:
        raise InvalidInput(field, f"at most {_MAX_TAGS} tags")
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64 or "\x00" in key:
            raise InvalidInput(field, f"tag names must be 1–64 characters, got {key!r}")
        if not isinstance(value, str) or len(value) > 500 or "\x00" in value:
            raise InvalidInput(f"{field}.{key}", "must be a string of at most 500 characters")
    return dict(tags)


def check_notes(notes: Any) -> str | None:
    if notes is None:
        return None
    if not isinstance(notes, str) or len(notes) > _MAX_NOTES or "\x00" in notes:
        raise InvalidInput("notes", f"must be a string of at most {_MAX_NOTES} characters")
    return notes


def check_actor(actor: Any, field: str = "actor") -> str:
    if not isinstance(actor, str) or not actor.strip() or "\x00" in actor:
        raise InvalidInput(field, "must be a non-empty string")
    actor = actor.strip()
    if len(actor) > _MAX_ACTOR:
        raise InvalidInput(field, f"at most {_MAX_ACTOR} characters")
    return actor


def check_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or "\x00" in reason or len(reason) > _MAX_NOTES:
        raise InvalidInput("reason", f"must be a string of at most {_MAX_NOTES} characters")
    return reason.strip() or None


def parse_status(value: Any, field: str = "status") -> ModelStatus:
    try:
        return ModelStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ModelStatus)
        raise InvalidInput(field, f"must be one of {allowed}") from None


def check_ids(model_id: Any, version: Any = None) -> None:
    # An id that cannot exist is unknown (404), and must never reach the database:
    # PostgreSQL rejects NUL bytes with an error rather than "no rows".
    if not is_model_id(model_id):
        raise NotFound(f"model {model_id!r} not found")
    if version is not None and (
        not isinstance(version, str) or not _VERSION_TOKEN_RE.fullmatch(version)
    ):
        raise NotFound(f"version {version!r} of {model_id} not found")
