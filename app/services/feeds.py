"""Market data feeds' records: add, list, remove, claim a poll under a lease, record it.

Owns the `market_feeds` table (app/models/feeds.py). The source spec is the contract's:
`binance` (with an exchange symbol, by default the symbol) or `dir:PATH` (a drop
folder). A poll is claimed with one conditional UPDATE (free or expired lease, and due
unless forced), so two beats or workers never poll one feed at once; the result is
recorded only by the lease holder. Takes a session, flushes, never commits; no network
or file I/O here (app/flows/feeds.py does that between transactions).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.domain import normalize_symbol, timeframe_seconds
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.timeutil import isoformat, utcnow
from app.models.feeds import Feed, FeedKind

__all__ = ["FeedSpec", "add_feed", "claim", "due_ids", "feed_view", "get_feed", "lag_seconds",
           "list_feeds", "new_owner", "parse_source", "record_poll", "remove_feed", "renew",
           "source_text"]

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86_400.0


@dataclass(frozen=True)
class FeedSpec:
    kind: FeedKind
    config: str


def parse_source(source: str, exchange_symbol: str | None, symbol: str, *,
                 allowed_roots: list[Path] | None = None) -> FeedSpec:
    """`binance` → the exchange symbol (default: the symbol); `dir:PATH` → the existing
    directory's absolute path, which must lie under one of `allowed_roots` when given (a
    drop folder's files are moved: the HTTP API must not point it at any directory).
    Anything else is InvalidInput naming `source`."""
    text = (source or "").strip()
    if text.lower() == FeedKind.BINANCE.value:
        market = (exchange_symbol or symbol).strip().upper()
        if not market or not (market.isascii() and market.isalnum()) or len(market) > 30:
            raise InvalidInput("exchange_symbol",
                               f"{market!r} is not a Binance symbol (letters and digits)")
        return FeedSpec(FeedKind.BINANCE, market)
    if text.startswith("dir:"):
        if exchange_symbol:
            raise InvalidInput("exchange_symbol", "only a binance feed has an exchange symbol")
        raw = text[4:].strip()
        if not raw:
            raise InvalidInput("source", "dir:PATH needs a directory path")
        try:
            path = Path(raw).expanduser().resolve()
            is_dir = path.is_dir()
        except (OSError, ValueError, RuntimeError) as exc:
            raise InvalidInput("source", f"not a usable directory path: {exc}") from None
        if not is_dir:
            raise InvalidInput("source", f"{raw}: no such directory")
        if allowed_roots is not None and not any(
                path == root.resolve() or path.is_relative_to(root.resolve())
                for root in allowed_roots):
            roots = ", ".join(str(r) for r in allowed_roots) or "none"
            raise InvalidInput("source", f"{raw}: not under an allowed drop-folder root "
                                         f"(CLM_FEED_DROP_ROOTS: {roots})")
        return FeedSpec(FeedKind.FOLDER, str(path))
    raise InvalidInput("source", f"unknown source {text!r}: give 'binance' or 'dir:PATH'")


def source_text(feed: Feed) -> str:
    return "binance" if feed.kind == FeedKind.BINANCE else f"dir:{feed.config}"


def add_feed(session: Session, settings: Settings, *, source: str, symbol: str,
             timeframe: str, exchange_symbol: str | None = None,
             interval_s: float | None = None, created_by: str | None = None,
             allowed_roots: list[Path] | None = None, now: datetime | None = None) -> Feed:
    """Create a feed (due at once). 409 when the same source already feeds the series.
    `allowed_roots`: see `parse_source` (the API passes CLM_FEED_DROP_ROOTS)."""
    try:
        sym = normalize_symbol(symbol)
    except ValueError as exc:
        raise InvalidInput("symbol", str(exc)) from None
    try:
        bar = timeframe_seconds(timeframe)
    except ValueError as exc:
        raise InvalidInput("timeframe", str(exc)) from None
    spec = parse_source(source, exchange_symbol, sym, allowed_roots=allowed_roots)
    interval = float(interval_s) if interval_s is not None else float(bar)
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise InvalidInput("interval_s", f"must be between {MIN_INTERVAL_S:g} and "
                                         f"{MAX_INTERVAL_S:g} seconds")
    existing = session.scalar(select(Feed).where(
        Feed.kind == spec.kind, Feed.config == spec.config, Feed.symbol == sym,
        Feed.timeframe == timeframe))
    if existing is not None:
        raise Conflict(f"feed {existing.id} already feeds {sym} {timeframe} from "
                       f"{source_text(existing)}", feed_id=existing.id)
    now = now or utcnow()
    feed = Feed(kind=spec.kind, config=spec.config, symbol=sym, timeframe=timeframe,
                interval_s=interval, enabled=True, next_poll_at=now, polls=0, bars_added=0,
                created_by=created_by, created_at=now)
    session.add(feed)
    session.flush()
    return feed


def get_feed(session: Session, feed_id: int) -> Feed:
    feed = session.get(Feed, feed_id) if 0 < feed_id < 2**63 else None
    if feed is None:
        raise NotFound(f"feed {feed_id} not found")
    return feed


def list_feeds(session: Session, *, after_id: int | None = None, limit: int | None = None
               ) -> list[Feed]:
    query = select(Feed).order_by(Feed.id)
    if after_id is not None:
        query = query.where(Feed.id > after_id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def remove_feed(session: Session, feed_id: int) -> Feed:
    feed = get_feed(session, feed_id)
    session.delete(feed)
    session.flush()
    return feed


def lag_seconds(feed: Feed, now: datetime) -> float | None:
    """Seconds between now and the close of the newest stored bar (None without one): a
    feed that is current lags by less than one bar."""
    if feed.last_bar is None:
        return None
    closed_at = feed.last_bar + timedelta(seconds=timeframe_seconds(feed.timeframe))
    return max(0.0, (now - closed_at).total_seconds())


def feed_view(feed: Feed, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    lag = lag_seconds(feed, now)
    return {
        "id": feed.id,
        "source": source_text(feed),
        "symbol": feed.symbol,
        "timeframe": feed.timeframe,
        "last_bar": isoformat(feed.last_bar),
        "lag_s": round(lag, 3) if lag is not None else None,
        "last_error": feed.last_error,
        "kind": feed.kind.value,
        "exchange_symbol": feed.config if feed.kind == FeedKind.BINANCE else None,
        "path": feed.config if feed.kind == FeedKind.FOLDER else None,
        "interval_s": feed.interval_s,
        "enabled": feed.enabled,
        "last_poll_at": isoformat(feed.last_poll_at),
        "next_poll_at": isoformat(feed.next_poll_at),
        "polling": feed.lease_owner is not None and feed.lease_expires_at is not None
        and feed.lease_expires_at > now,
        "polls": feed.polls,
        "bars_added": feed.bars_added,
        "created_at": isoformat(feed.created_at),
    }


# --------------------------------------------------------------------------- polls


def new_owner(worker: str = "clm") -> str:
    """A lease owner token unique per poll."""
    return f"{worker}/{uuid.uuid4().hex[:12]}"


def due_ids(session: Session, now: datetime) -> list[int]:
    """Enabled feeds whose next poll is due and that nobody is polling now."""
    return list(session.scalars(
        select(Feed.id).where(Feed.enabled.is_(True), Feed.next_poll_at <= now,
                              _lease_free(now)).order_by(Feed.next_poll_at, Feed.id)))


def _lease_free(now: datetime) -> Any:
    return or_(Feed.lease_owner.is_(None), Feed.lease_expires_at < now)


def claim(session: Session, settings: Settings, feed_id: int, owner: str, *,
          now: datetime | None = None, force: bool = False) -> Feed | None:
    """Take the feed's poll lease (None: someone holds it, or it is not due/enabled).
    `force` (a person asked: `clm data feed poll`) skips the due time, never the lease."""
    now = now or utcnow()
    cond = [Feed.id == feed_id, _lease_free(now)]
    if not force:
        cond += [Feed.enabled.is_(True), Feed.next_poll_at <= now]
    result = session.execute(
        update(Feed).where(and_(*cond))
        .values(lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=settings.feed_lease_s))
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    return session.get(Feed, feed_id)


def renew(session: Session, settings: Settings, feed_id: int, owner: str,
          now: datetime | None = None) -> bool:
    """Extend the lease if `owner` still holds it (between pages of a long backfill)."""
    now = now or utcnow()
    result = session.execute(
        update(Feed).where(Feed.id == feed_id, Feed.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=settings.feed_lease_s))
        .execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_poll(session: Session, feed_id: int, owner: str, *, last_bar: datetime | None,
                bars_added: int, error: str | None, now: datetime | None = None) -> bool:
    """Record a poll's outcome and release the lease (the holder only; False otherwise).
    `last_bar` None keeps the stored value; `error` None clears the last error."""
    now = now or utcnow()
    feed = session.get(Feed, feed_id)
    if feed is None or feed.lease_owner != owner:
        return False
    if last_bar is not None:
        feed.last_bar = last_bar
    feed.last_error = error[:4000] if error else None
    feed.last_poll_at = now
    feed.next_poll_at = now + timedelta(seconds=feed.interval_s)
    feed.polls = (feed.polls or 0) + 1
    feed.bars_added = (feed.bars_added or 0) + bars_added
    feed.lease_owner = None
    feed.lease_expires_at = None
    session.flush()
    return True
