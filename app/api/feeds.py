"""HTTP adapter for market data feeds: list them (last bar, lag, last error), add, remove.

Thin: parse (pydantic, 422 naming the field), open the unit of work, call
app.services.feeds. Polling is beat's work (app.flows.feeds); `clm data feed poll`
polls on demand. Viewers read, operators add and remove.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import Field

from app.api.pagination import PageQuery, int_cursor, page
from app.api.schema import StrictModel, documented, parse_body, parse_query
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.core.domain import Timeframe
from app.core.errors import NotFound
from app.core.timeutil import utcnow
from app.db import transaction
from app.services import feeds

bp = Blueprint("feeds", __name__)
TAG = "data"


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


class FeedBody(StrictModel):
    source: str = Field(min_length=1, max_length=1000,
                        description="`binance` or `dir:PATH` (a drop folder on the server)")
    symbol: str = Field(min_length=1, max_length=30, description="e.g. BTCUSDT")
    timeframe: Timeframe
    exchange_symbol: str | None = Field(
        None, min_length=1, max_length=30,
        description="binance only: the exchange's symbol (default: symbol)")
    interval_s: float | None = Field(
        None, ge=feeds.MIN_INTERVAL_S, le=feeds.MAX_INTERVAL_S,
        description="seconds between polls (default: one bar)")


def _feed_id(raw: str) -> int:
    # An id that cannot exist is unknown: 404, never a database error.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"feed {raw} not found")
    return int(raw)


@bp.get("/clm/data/feeds")
@documented("Market data feeds with their newest stored bar, lag and last error",
            role="viewer", query=PageQuery, tag=TAG)
@require_role("viewer")
def list_feeds() -> Any:
    q = parse_query(PageQuery)
    after = int_cursor(q.cursor)
    now = utcnow()
    with transaction(_settings().database_url) as session:
        rows = feeds.list_feeds(session, after_id=after, limit=q.limit + 1)
        items = [feeds.feed_view(f, now) for f in rows]
    return jsonify(page(items, [i["id"] for i in items], q.limit))


@bp.post("/clm/data/feeds")
@documented("Add a feed (Binance public klines or a drop folder) keeping a series current",
            role="operator", body=FeedBody,
            responses={201: "Added", 409: "The same source already feeds the series",
                       422: "Invalid body"}, tag=TAG)
@require_role("operator")
def add_feed() -> Any:
    body = parse_body(FeedBody)
    settings = _settings()
    with transaction(settings.database_url, immediate=True) as session:
        feed = feeds.add_feed(
            session, settings, source=body.source, symbol=body.symbol,
            timeframe=body.timeframe.value, exchange_symbol=body.exchange_symbol,
            interval_s=body.interval_s, created_by=current_actor()[:120],
            allowed_roots=list(settings.feed_drop_roots))
        out = feeds.feed_view(feed)
    response = jsonify(out)
    response.status_code = 201
    return response


@bp.get("/clm/data/feeds/<feed_id>")
@documented("One feed", role="viewer", responses={200: "The feed", 404: "Unknown feed"},
            tag=TAG)
@require_role("viewer")
def get_feed(feed_id: str) -> Any:
    with transaction(_settings().database_url) as session:
        return jsonify(feeds.feed_view(feeds.get_feed(session, _feed_id(feed_id))))


@bp.delete("/clm/data/feeds/<feed_id>")
@documented("Remove a feed (the stored bars stay)", role="operator",
            responses={200: "Removed", 404: "Unknown feed"}, tag=TAG)
@require_role("operator")
def remove_feed(feed_id: str) -> Any:
    with transaction(_settings().database_url, immediate=True) as session:
        feed = feeds.remove_feed(session, _feed_id(feed_id))
        out = {"id": feed.id, "removed": True}
    return jsonify(out)
