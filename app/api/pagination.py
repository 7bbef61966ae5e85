"""Cursor pagination shared by every list endpoint: opaque cursors over a monotonic id."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import Field

from app.api.problems import unprocessable
from app.api.schema import QueryModel

# Every cursor this API issues is the unpadded base64url of `{"k": <key>}`, so it starts
# with the encoding of `{"k": ` — said in the schema, so clients (and generated tests)
# know what a cursor looks like; an empty value means "first page".
CURSOR_PATTERN = r"^(eyJrIjog[A-Za-z0-9_-]{0,192})?$"


class PageQuery(QueryModel):
    limit: int = Field(50, ge=1, le=500, description="page size, 1–500")
    cursor: str | None = Field(
        None, max_length=200, pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page (opaque: base64url of the page key)")


def encode_cursor(last_key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": last_key}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    """The key after which the next page starts; 422 naming `cursor` if it was tampered with."""
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))["k"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise unprocessable("cursor", "not a cursor returned by this API") from None


def int_cursor(cursor: str | None) -> int | None:
    """A row-id cursor: a non-negative 64-bit int, else 422 naming `cursor` (a forged key
    out of the database's integer range must not reach a query)."""
    key = decode_cursor(cursor)
    if key is None:
        return None
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 2**63:
        raise unprocessable("cursor", "not a cursor returned by this API")
    return key


def page(items: list[dict[str, Any]], keys: list[Any], limit: int) -> dict[str, Any]:
    """Build the contract's list shape from `limit + 1` fetched rows."""
    has_more = len(items) > limit
    items = items[:limit]
    next_cursor = encode_cursor(keys[limit - 1]) if has_more else None
    return {"items": items, "next_cursor": next_cursor}
