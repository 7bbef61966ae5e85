"""HTTP adapter for instruments: a symbol's trading calendar and per-side costs.

`GET /clm/instruments` (configured ones), `GET /clm/instruments/{symbol}` (the
instrument, or the defaults the symbol trades under with `"configured": false`: every
well-formed symbol has terms, so none is "unknown"; a malformed one is 404) and
`PUT /clm/instruments/{symbol}` (admin, as the contract says). Thin: parse, open the
unit of work, call app.services.instruments.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import Field

from app.api.pagination import PageQuery, decode_cursor, page
from app.api.problems import unprocessable
from app.api.schema import StrictModel, documented, parse_body, parse_query
from app.api.security import current_actor, require_role
from app.core.config import Settings
from app.db import transaction
from app.models.instruments import MAX_COST_BPS
from app.services import instruments

bp = Blueprint("instruments", __name__)
TAG = "instruments"


def _settings() -> Settings:
    settings: Settings = current_app.config["CLM_SETTINGS"]
    return settings


class InstrumentBody(StrictModel):
    calendar: str | None = Field(
        None, min_length=1, max_length=32,
        description="24/7 (default), fx (closed Fri 22:00-Sun 22:00 UTC) or an "
                    "exchange_calendars code such as XNYS; absent: unchanged")
    fee_bps: float | None = Field(None, ge=0, le=MAX_COST_BPS,
                                  description="fee per side, basis points; absent: unchanged")
    slippage_bps: float | None = Field(None, ge=0, le=MAX_COST_BPS,
                                       description="slippage per side, basis points; "
                                                   "absent: unchanged")


@bp.get("/clm/instruments")
@documented("Configured instruments (calendar, fee and slippage per side), by symbol",
            role="viewer", query=PageQuery, tag=TAG)
@require_role("viewer")
def list_instruments() -> Any:
    q = parse_query(PageQuery)
    after = decode_cursor(q.cursor)
    if after is not None and not isinstance(after, str):
        raise unprocessable("cursor", "not a cursor returned by this API")
    settings = _settings()
    with transaction(settings.database_url) as session:
        items = instruments.list_instruments(session, settings, after=after, limit=q.limit)
    return jsonify(page(items, [i["symbol"] for i in items], q.limit))


@bp.get("/clm/instruments/<symbol>")
@documented("A symbol's instrument, or the defaults it trades under (configured: false)",
            role="viewer", responses={200: "OK", 404: "Malformed symbol"}, tag=TAG)
@require_role("viewer")
def get_instrument(symbol: str) -> Any:
    settings = _settings()
    with transaction(settings.database_url) as session:
        return jsonify(instruments.get_instrument(session, settings, symbol))


@bp.put("/clm/instruments/<symbol>")
@documented("Set a symbol's calendar and costs (absent fields keep their value; a new "
            "instrument starts from the defaults)", role="admin", body=InstrumentBody,
            responses={200: "Set", 404: "Malformed symbol", 422: "Invalid body"}, tag=TAG)
@require_role("admin")
def put_instrument(symbol: str) -> Any:
    instruments.check_symbol(symbol)  # 404 before the body: the path names nothing
    body = parse_body(InstrumentBody)
    settings = _settings()
    with transaction(settings.database_url, immediate=True) as session:
        item = instruments.set_instrument(
            session, settings, symbol, calendar=body.calendar, fee_bps=body.fee_bps,
            slippage_bps=body.slippage_bps, actor=current_actor()[:120])
    return jsonify(item)
