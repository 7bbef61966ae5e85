"""Polling market data feeds: claim under a lease, fetch and merge, record — the use case.

Owns the transactions of a poll (app.services.feeds holds the records; the sources are
app.ml.data.binance and app.ml.data.dropfolder, which never touch the database):
1. a short transaction claims the feed's lease (one conditional UPDATE: a second beat,
   worker or `clm data feed poll` finds it held and skips);
2. outside any transaction, the source is read and each validated page or file is
   merged into the market data store (Binance: from the bar after the newest stored
   one; the lease is renewed between pages of a long backfill);
3. a short transaction records the outcome (newest stored bar, bars added, the error
   or none) and releases the lease.
`poll_due` is what beat runs (workers/tasks_feeds.py); `poll_feed` polls one feed now.
One feed's failure is recorded on it and never stops the others.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime
from typing import Any

import pandas as pd

from app.core.config import Settings
from app.core.domain import timeframe_seconds
from app.core.timeutil import utcnow
from app.db import transaction
from app.ml.data.binance import BinanceClient, BinanceError, FeedPageError, closed_pages
from app.ml.data.dropfolder import poll_folder
from app.ml.data.store import MarketDataStore, SeriesMismatch
from app.models.feeds import FeedKind
from app.services import feeds

__all__ = ["binance_client", "poll_all", "poll_due", "poll_feed"]

log = logging.getLogger(__name__)


def binance_client(settings: Settings) -> BinanceClient:
    return BinanceClient(settings.binance_base_url, timeout_s=settings.binance_timeout_s,
                         max_retries=settings.binance_max_retries,
                         max_wait_s=settings.binance_max_wait_s)


def _worker() -> str:
    return socket.gethostname()[:60] or "clm"


def poll_feed(settings: Settings, feed_id: int, *, force: bool = True,
              now: datetime | None = None, client: BinanceClient | None = None
              ) -> dict[str, Any]:
    """Poll one feed now (`force`: even if not due; never while another poll holds it).
    Returns `{"feed_id", "polled", "bars_added", "last_bar", "error", ...}`."""
    now = now or utcnow()
    owner = feeds.new_owner(_worker())
    with transaction(settings.database_url, immediate=True) as session:
        feed = feeds.claim(session, settings, feed_id, owner, now=now, force=force)
        if feed is None:
            feeds.get_feed(session, feed_id)  # NotFound for an unknown id
            return {"feed_id": feed_id, "polled": False, "reason": "busy or not due"}
        kind, config = feed.kind, feed.config
        symbol, timeframe = feed.symbol, feed.timeframe
    store = MarketDataStore.from_settings(settings)
    added = 0
    error: str | None = None
    extra: dict[str, Any] = {}
    try:
        if kind == FeedKind.BINANCE:
            added, error, extra = _poll_binance(settings, store, feed_id, owner, config, symbol,
                                                timeframe, now, client)
        else:
            result = poll_folder(config, store, symbol, timeframe)
            added, error = result.bars_added, result.error
            extra = {"imported": result.imported, "rejected": result.rejected}
    except Exception as exc:  # recorded on the feed; the lease is released below
        log.exception("feed %s: poll failed", feed_id)
        error = f"{type(exc).__name__}: {exc}"
    coverage = store.coverage(symbol, timeframe)
    last_bar = coverage.last.to_pydatetime() if coverage is not None else None
    with transaction(settings.database_url, immediate=True) as session:
        recorded = feeds.record_poll(session, feed_id, owner, last_bar=last_bar,
                                     bars_added=added, error=error)
    if error:
        log.warning("feed %s (%s %s): %s", feed_id, symbol, timeframe, error)
    return {"feed_id": feed_id, "polled": True, "recorded": recorded, "bars_added": added,
            "last_bar": _iso(last_bar), "error": error, **extra}


def _poll_binance(settings: Settings, store: MarketDataStore, feed_id: int, owner: str,
                  market: str, symbol: str, timeframe: str, now: datetime,
                  client: BinanceClient | None) -> tuple[int, str | None, dict[str, Any]]:
    client = client or binance_client(settings)
    bar_ms = timeframe_seconds(timeframe) * 1000
    now_ms = int(now.timestamp() * 1000)
    coverage = store.coverage(symbol, timeframe)
    if coverage is not None:
        start_ms = int(coverage.last.value // 1_000_000) + bar_ms
    else:  # a new series: the latest page of closed bars
        start_ms = (now_ms // bar_ms - client.page_limit) * bar_ms
    added = pages = 0
    error: str | None = None
    try:
        for page in closed_pages(client, market, timeframe, start_ms, now_ms=now_ms,
                                 max_pages=settings.feed_max_pages):
            try:
                report = store.merge(symbol, timeframe, page.frame)
            except SeriesMismatch as exc:
                error = f"binance {market} {timeframe} page from {_iso(page.start_ms)}: " \
                        f"kline {exc.row + 1}: {exc.reason}"
                break
            added += report.added
            pages += 1
            with transaction(settings.database_url) as session:
                if not feeds.renew(session, settings, feed_id, owner):
                    error = "lease lost during the poll (another poll took the feed over)"
                    break
    except (FeedPageError, BinanceError) as exc:
        error = str(exc)
    return added, error, {"pages": pages, "requests": client.requests_made,
                          "waited_s": round(client.waited_s, 3)}


def poll_due(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Poll every enabled feed that is due (beat's task). Each poll claims its own lease,
    so feeds another beat or worker is polling are skipped."""
    now = now or utcnow()
    with transaction(settings.database_url) as session:
        ids = feeds.due_ids(session, now)
    results = [poll_feed(settings, feed_id, force=False, now=now) for feed_id in ids]
    return _summary(results)


def poll_all(settings: Settings, feed_id: int | None = None) -> dict[str, Any]:
    """Poll now (`clm data feed poll [ID]`): one feed, or every enabled one."""
    if feed_id is not None:
        return _summary([poll_feed(settings, feed_id)])
    with transaction(settings.database_url) as session:
        ids = [f.id for f in feeds.list_feeds(session) if f.enabled]
    return _summary([poll_feed(settings, i) for i in ids])


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "polled": sum(1 for r in results if r.get("polled")),
        "skipped": sum(1 for r in results if not r.get("polled")),
        "bars_added": sum(int(r.get("bars_added") or 0) for r in results),
        "errors": sum(1 for r in results if r.get("error")),
        "feeds": results,
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    ts = pd.Timestamp(value, unit="ms", tz="UTC") if isinstance(value, int) \
        else pd.Timestamp(value)
    return ts.isoformat().replace("+00:00", "Z")
