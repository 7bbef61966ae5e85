"""Binance public klines: fetch closed bars page by page, validated like `clm data import`.

Owns the HTTP side of a Binance feed (no database): `GET {base}/api/v3/klines?symbol=
&interval=&startTime=&limit=` in Binance's documented format (an array of
`[open_time_ms, "open", "high", "low", "close", "volume", close_time_ms, ...]`),
paginated by `startTime` from the bar after the last stored one. Only closed bars are
kept (a kline whose close time is not yet past is left for the next poll). HTTP 429/418
are honoured: the client sleeps `Retry-After` seconds (bounded), and 5xx answers and
connection errors are retried with exponential backoff (bounded); other 4xx answers are
errors at once (an unknown symbol, a bad interval). Each page is validated whole with
app.ml.data.importer.validate_bars; a page that fails is refused as a whole
(`FeedPageError`) and nothing of it is handed on. Uses urllib (the standard library):
`requests` is only a test dependency.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.core.domain import timeframe_seconds
from app.ml.data.formats import DataValidationError
from app.ml.data.importer import OHLCV_COLUMNS, validate_bars

__all__ = ["BinanceClient", "BinanceError", "FeedPageError", "Page", "closed_pages"]

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # Binance's largest page
_RETRYABLE_RATE = (418, 429)


class BinanceError(RuntimeError):
    """The klines endpoint could not be read (after the bounded retries)."""


class FeedPageError(ValueError):
    """A page was refused whole (malformed, or failing the import validation)."""


@dataclass(frozen=True)
class Page:
    """The closed bars of one page, validated, ready for MarketDataStore.merge."""

    frame: pd.DataFrame
    start_ms: int
    open_bar_left_out: bool  # the page ended with a bar still open


@dataclass
class BinanceClient:
    """A tiny klines client. `sleep` and `clock` are injectable for tests; every wait is
    at most `max_wait_s` and there are at most `max_retries` retries per request."""

    base_url: str
    timeout_s: float = 10.0
    max_retries: int = 5
    max_wait_s: float = 60.0
    backoff_s: float = 0.5
    page_limit: int = PAGE_LIMIT  # Binance allows up to 1000; tests page with fewer
    sleep: Callable[[float], None] = time.sleep
    requests_made: int = 0
    waited_s: float = 0.0

    def klines(self, market: str, interval: str, start_ms: int, limit: int | None = None
               ) -> list[Any]:
        limit = limit or self.page_limit
        query = urllib.parse.urlencode(
            {"symbol": market, "interval": interval, "startTime": start_ms, "limit": limit})
        url = f"{self.base_url.rstrip('/')}/api/v3/klines?{query}"
        attempt = 0
        while True:
            self.requests_made += 1
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                status = exc.code
                detail = _error_detail(exc)
                if attempt >= self.max_retries or not (
                        status in _RETRYABLE_RATE or status >= 500):
                    raise BinanceError(f"GET /api/v3/klines {market} {interval}: HTTP {status}"
                                       f"{': ' + detail if detail else ''}") from None
                if status in _RETRYABLE_RATE:
                    wait = _retry_after(exc.headers.get("Retry-After"), self._backoff(attempt))
                    log.warning("binance: HTTP %d, waiting %.1f s (Retry-After)", status, wait)
                else:
                    wait = self._backoff(attempt)
                    log.warning("binance: HTTP %d, retrying in %.1f s", status, wait)
                self._wait(wait)
                attempt += 1
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                if attempt >= self.max_retries:
                    raise BinanceError(f"GET /api/v3/klines {market} {interval}: {exc}") from None
                wait = self._backoff(attempt)
                log.warning("binance: %s, retrying in %.1f s", exc, wait)
                self._wait(wait)
                attempt += 1
                continue
            try:
                data = json.loads(body)
            except ValueError:
                raise FeedPageError("the klines answer is not JSON") from None
            if not isinstance(data, list):
                raise FeedPageError("the klines answer is not a JSON array")
            return data

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** attempt), self.max_wait_s)

    def _wait(self, seconds: float) -> None:
        seconds = max(0.0, min(seconds, self.max_wait_s))
        self.waited_s += seconds
        self.sleep(seconds)


def _retry_after(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return default


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(2000).decode("utf-8", "replace")
    except Exception:  # the body is only a courtesy
        return ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and "msg" in parsed:
            return str(parsed["msg"])
    except ValueError:
        pass
    return body.strip()[:200]


def parse_page(label: str, rows: list[Any], timeframe: str, now_ms: int
               ) -> tuple[pd.DataFrame | None, bool]:
    """Klines → the validated frame of the closed bars (None when none is closed) and
    whether an open bar was left out. Refuses the whole page (`FeedPageError`) on a
    malformed row or a bar the import would refuse."""
    bar_ms = timeframe_seconds(timeframe) * 1000
    ts: list[int] = []
    values: list[list[float]] = []
    open_left_out = False
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < 7:
            raise FeedPageError(f"{label}: kline {i + 1}: expected an array of at least 7 "
                                f"fields, got {str(row)[:80]}")
        try:
            open_ms = int(row[0])
            close_ms = int(row[6])
            ohlcv = [float(row[k]) for k in range(1, 6)]
        except (TypeError, ValueError):
            raise FeedPageError(f"{label}: kline {i + 1}: not a number in "
                                f"{str(row[:7])[:120]}") from None
        if close_ms >= now_ms or open_ms + bar_ms > now_ms:
            # Still open: Binance answers the bar in progress last. Never store it.
            open_left_out = True
            continue
        ts.append(open_ms)
        values.append(ohlcv)
    if not ts:
        return None, open_left_out
    arr = np.asarray(values, dtype=np.float64)
    ts_ns = np.asarray(ts, dtype=np.int64) * 1_000_000
    cols = {c: arr[:, k] for k, c in enumerate(OHLCV_COLUMNS)}
    try:
        frame = validate_bars(label, ts_ns, cols, timeframe)
    except DataValidationError as exc:
        raise FeedPageError(f"{label}: kline {exc.line}: {exc.reason}"
                            if exc.line is not None else f"{label}: {exc.reason}") from None
    return frame, open_left_out


def closed_pages(
    client: BinanceClient,
    market: str,
    timeframe: str,
    start_ms: int,
    *,
    now_ms: int,
    max_pages: int,
) -> Iterator[Page]:
    """Closed bars from `start_ms` on, one validated page at a time, until the feed is
    caught up (a short page, an open bar) or `max_pages` pages were read. Raises
    `FeedPageError`/`BinanceError` at the page that fails: the pages before it were
    already handed out (and may be stored); nothing of the failing one is."""
    bar_ms = timeframe_seconds(timeframe) * 1000
    start = int(start_ms)
    for _ in range(max_pages):
        if start + bar_ms > now_ms:  # the next bar has not closed yet
            return
        label = f"binance {market} {timeframe} page from {_iso_ms(start)}"
        rows = client.klines(market, timeframe, start, client.page_limit)
        frame, open_left_out = parse_page(label, rows, timeframe, now_ms)
        if frame is None:
            return
        if int(frame.index[0].value // 1_000_000) < start:
            raise FeedPageError(f"{label}: the first kline {frame.index[0].isoformat()} is "
                                "before the startTime asked for")
        yield Page(frame, start, open_left_out)
        if open_left_out or len(rows) < client.page_limit:
            return
        start = int(frame.index[-1].value // 1_000_000) + bar_ms


def _iso_ms(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")
