"""Market data feeds (issue 12): Binance public klines served by a local HTTP server in
Binance's documented format, drop folders, leased polls, the API, the CLI and metrics.

Real parts: a real HTTP server on 127.0.0.1 (threaded http.server), real SQLite and
PostgreSQL, the real market data store. Only Binance itself is stood in for.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from app.db import transaction
from app.flows import feeds as feed_flows
from app.ml.data.binance import BinanceClient
from app.ml.data.store import MarketDataStore
from app.services import feeds

HOUR_MS = 3_600_000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
# The poll's clock: half an hour into the 25th bar, so bars 0..23 are closed and bar 24
# (open 2024-01-02T00:00Z, close 00:59:59.999Z) is still open.
NOW = T0 + timedelta(hours=24, minutes=30)


def kline(i: int, *, bad: bool = False) -> list[Any]:
    """Bar i of a planted series in Binance's format (prices as strings)."""
    open_ms = T0_MS + i * HOUR_MS
    close = 100.0 + i
    high, low = close + 1.0, close - 1.0
    if bad:
        high, low = low, high  # high below low: the import refuses it
    return [open_ms, f"{close - 0.5:.8f}", f"{high:.8f}", f"{low:.8f}", f"{close:.8f}",
            "12.5", open_ms + HOUR_MS - 1, "1250.0", 42, "6.0", "600.0", "0"]


class FakeBinance:
    """GET /api/v3/klines like Binance: bars with open time >= startTime, at most `limit`,
    the bar in progress last. `script` answers the first requests with other statuses."""

    def __init__(self, bars: int = 25) -> None:
        self.bars = bars
        self.bad: set[int] = set()
        self.script: list[tuple[int, dict[str, str]]] = []
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake.lock:
                    fake.requests.append({"at": time.monotonic(), **q})
                    scripted = fake.script.pop(0) if fake.script else None
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if scripted is not None:
                    status, headers = scripted
                    body = json.dumps({"code": -1003, "msg": "Too many requests"}).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if url.path != "/api/v3/klines" or q.get("interval") != "1h":
                    self.send_response(400)
                    self.end_headers()
                    return
                start, limit = int(q["startTime"]), int(q.get("limit", 500))
                first = max(0, -(-(start - T0_MS) // HOUR_MS))
                rows = [kline(i, bad=i in fake.bad)
                        for i in range(first, min(fake.bars, first + limit))]
                body = json.dumps(rows).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def binance() -> Any:
    fake = FakeBinance()
    yield fake
    fake.close()


def _client(fake: FakeBinance) -> BinanceClient:
    return BinanceClient(fake.url, page_limit=5, backoff_s=0.05, max_wait_s=5.0)


def _seed(settings: Any, bars: int = 4) -> MarketDataStore:
    """The first bars, as an earlier `clm data import` would have stored them."""
    from app.ml.data.binance import parse_page

    store = MarketDataStore(settings.data_dir)
    frame, _ = parse_page("seed", [kline(i) for i in range(bars)], "1h",
                          int(NOW.timestamp() * 1000))
    store.merge("BTCUSDT", "1h", frame)
    return store


def _add(settings: Any, source: str = "binance", **kw: Any) -> int:
    with transaction(settings.database_url, immediate=True) as session:
        return feeds.add_feed(session, settings, source=source, symbol="BTCUSDT",
                              timeframe="1h", **kw).id


def _feed(settings: Any, feed_id: int) -> dict[str, Any]:
    with transaction(settings.database_url) as session:
        return feeds.feed_view(feeds.get_feed(session, feed_id), NOW)


@pytest.fixture
def lite(sqlite_url: str, make_settings: Any) -> Any:
    return make_settings(sqlite_url)


# -- Binance ----------------------------------------------------------------------------
def test_binance_pages_from_the_last_stored_bar_and_leaves_the_open_bar_out(lite, binance):
    store = _seed(lite, bars=2)
    feed_id = _add(lite, exchange_symbol="BTCUSDT")
    out = feed_flows.poll_feed(lite, feed_id, now=NOW, client=_client(binance))
    assert out["error"] is None and out["bars_added"] == 22
    # startTime walks from the bar after the stored one, one page (5 bars) at a time;
    # the last page ends with the open bar 24, which is left out.
    starts = [int(r["startTime"]) for r in binance.requests]
    assert starts == [T0_MS + i * HOUR_MS for i in (2, 7, 12, 17, 22)]
    assert {r["symbol"] for r in binance.requests} == {"BTCUSDT"}
    assert {r["limit"] for r in binance.requests} == {"5"}
    frame = store.read("BTCUSDT", "1h")
    assert len(frame) == 24 and frame.index[-1] == T0 + timedelta(hours=23)
    assert frame["close"].tolist() == [100.0 + i for i in range(24)]
    view = _feed(lite, feed_id)
    assert view["last_bar"] == "2024-01-01T23:00:00Z" and view["last_error"] is None
    assert view["lag_s"] == 30 * 60  # bar 23 closed at 00:00, now is 00:30

    # Polling again before bar 24 closes asks nothing; once it closed, it is stored.
    binance.requests.clear()
    again = feed_flows.poll_feed(lite, feed_id, now=NOW, client=_client(binance))
    assert again["bars_added"] == 0 and binance.requests == []
    later = feed_flows.poll_feed(lite, feed_id, now=NOW + timedelta(hours=1),
                                 client=_client(binance))
    assert later["bars_added"] == 1 and len(binance.requests) == 1
    assert store.read("BTCUSDT", "1h").index[-1] == T0 + timedelta(hours=24)


def test_a_429_with_retry_after_is_honoured(lite, binance):
    _seed(lite, bars=20)
    feed_id = _add(lite)
    binance.script = [(429, {"Retry-After": "1"}), (503, {})]
    client = _client(binance)
    t0 = time.monotonic()
    out = feed_flows.poll_feed(lite, feed_id, now=NOW, client=client)
    assert out["error"] is None and out["bars_added"] == 4
    first, second, third = binance.requests[:3]
    assert second["at"] - first["at"] >= 0.95  # waited Retry-After: 1 second
    assert third["at"] - second["at"] < 0.9  # 503: a short backoff (0.1 s), no Retry-After
    assert 1.0 <= client.waited_s < 1.5 and time.monotonic() - t0 < 5


def test_retries_are_bounded_and_the_error_is_recorded(lite, binance):
    _seed(lite, bars=20)
    feed_id = _add(lite)
    binance.script = [(500, {})] * 3
    client = BinanceClient(binance.url, page_limit=5, backoff_s=0.01, max_retries=2)
    out = feed_flows.poll_feed(lite, feed_id, now=NOW, client=client)
    assert len(binance.requests) == 3 and "HTTP 500" in out["error"]
    assert "HTTP 500" in _feed(lite, feed_id)["last_error"]


def test_a_bad_page_is_refused_whole_and_the_error_is_on_the_feed(lite, binance):
    store = _seed(lite)
    feed_id = _add(lite)
    binance.bad = {11}  # the 3rd bar of the second page (bars 9..13)
    out = feed_flows.poll_feed(lite, feed_id, now=NOW, client=_client(binance))
    # The first page (bars 4..8) was fine and is stored; nothing of the bad one is.
    frame = store.read("BTCUSDT", "1h")
    assert len(frame) == 9 and frame.index[-1] == T0 + timedelta(hours=8)
    assert out["bars_added"] == 5
    view = _feed(lite, feed_id)
    assert "kline 3" in view["last_error"] and "below low" in view["last_error"]
    assert view["last_bar"] == "2024-01-01T08:00:00Z"
    # Once Binance answers well again, the next poll resumes from bar 9.
    binance.bad = set()
    binance.requests.clear()
    feed_flows.poll_feed(lite, feed_id, now=NOW, client=_client(binance))
    assert int(binance.requests[0]["startTime"]) == T0_MS + 9 * HOUR_MS
    assert len(store.read("BTCUSDT", "1h")) == 24 and _feed(lite, feed_id)["last_error"] is None


def test_two_concurrent_polls_of_one_feed_fetch_once(settings, binance):
    _seed(settings, bars=20)
    feed_id = _add(settings)
    binance.delay_s = 0.3  # the poll holding the lease is still fetching
    barrier = threading.Barrier(2)
    results: list[dict[str, Any]] = []

    def poll() -> None:
        barrier.wait()
        results.append(feed_flows.poll_feed(settings, feed_id, now=NOW,
                                            client=_client(binance)))

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r["polled"] for r in results) == [False, True]
    assert len(binance.requests) == 1  # bars 20..24 in one page, fetched once
    assert len(MarketDataStore(settings.data_dir).read("BTCUSDT", "1h")) == 24
    view = _feed(settings, feed_id)
    assert view["polls"] == 1 and view["polling"] is False


# -- drop folder ------------------------------------------------------------------------
CSV_HEAD = "timestamp,open,high,low,close,volume\n"


def _csv(path: Path, rows: list[tuple[int, float, float, float, float]]) -> None:
    lines = [f"{(T0 + timedelta(hours=i)).isoformat()},{o},{h},{lo},{c},1\n"
             for i, o, h, lo, c in rows]
    path.write_text(CSV_HEAD + "".join(lines))


def test_a_drop_folder_imports_a_file_once_and_moves_a_bad_one_aside(lite, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    feed_id = _add(lite, source=f"dir:{drop}")
    _csv(drop / "a.csv", [(0, 10, 11, 9, 10.5), (1, 10.5, 12, 10, 11)])
    _csv(drop / "b.csv", [(2, 11, 12, 10, 11.5), (3, 11.5, 11, 12, 11)])  # line 3: high < low
    (drop / "c.csv.part").write_text(CSV_HEAD)  # still being written: left alone
    out = feed_flows.poll_feed(lite, feed_id)
    assert out["imported"] == ["a.csv"] and out["bars_added"] == 2
    assert (drop / "imported" / "a.csv").is_file() and not (drop / "a.csv").exists()
    assert (drop / "rejected" / "b.csv").is_file() and (drop / "c.csv.part").is_file()
    note = (drop / "rejected" / "b.csv.rejected").read_text()
    assert note.startswith("b.csv:3: high 11.0 is below low 12.0"), note
    store = MarketDataStore(lite.data_dir)
    assert len(store.read("BTCUSDT", "1h")) == 2  # nothing of b.csv
    view = _feed(lite, feed_id)
    assert view["last_bar"] == "2024-01-01T01:00:00Z" and "b.csv:3" in view["last_error"]

    # Imported once: the next poll finds nothing new; a new file continues the series.
    again = feed_flows.poll_feed(lite, feed_id)
    assert again["imported"] == [] and again["bars_added"] == 0 and again["error"] is None
    _csv(drop / "d.csv", [(1, 10.5, 12, 10, 11), (2, 11, 12, 10, 11.5)])
    third = feed_flows.poll_feed(lite, feed_id)
    assert third["imported"] == ["d.csv"] and third["bars_added"] == 1
    assert len(store.read("BTCUSDT", "1h")) == 3


def test_beat_polls_due_feeds_only(lite, tmp_path):
    from workers.schedule import beat_schedule

    drop = tmp_path / "drop"
    drop.mkdir()
    feed_id = _add(lite, source=f"dir:{drop}", interval_s=3600)
    _csv(drop / "a.csv", [(0, 10, 11, 9, 10.5)])
    first = feed_flows.poll_due(lite)
    assert first["polled"] == 1 and first["bars_added"] == 1
    assert feed_flows.poll_due(lite)["polled"] == 0  # next poll in an hour
    later = datetime.now(UTC) + timedelta(hours=1, seconds=1)
    assert feed_flows.poll_due(lite, now=later)["feeds"][0]["feed_id"] == feed_id
    entry = beat_schedule(lite)["clm-feeds-poll"]
    assert entry["task"] == "clm.feeds.poll" and entry["schedule"] == lite.feed_tick_s


# -- API, CLI, metrics ------------------------------------------------------------------
def test_api_lists_adds_and_removes_feeds(lite, tmp_path):
    from app import create_app
    from app.services.auth import create_token

    flask_app = create_app(lite.with_overrides(feed_drop_roots=(tmp_path / "drop",)))
    client = flask_app.test_client()
    with transaction(lite.database_url) as session:
        tok = {r: create_token(session, role=r, name=f"t-{r}") for r in ("viewer", "operator")}

    def h(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok[role]}"}

    drop = tmp_path / "drop"
    drop.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    body = {"source": f"dir:{drop}", "symbol": "ethusdt", "timeframe": "1h"}
    assert client.post("/clm/data/feeds", json=body, headers=h("viewer")).status_code == 403
    created = client.post("/clm/data/feeds", json=body, headers=h("operator"))
    assert created.status_code == 201, created.get_json()
    feed = created.get_json()
    assert feed["source"] == f"dir:{drop.resolve()}" and feed["symbol"] == "ETHUSDT"
    dup = client.post("/clm/data/feeds", json=body, headers=h("operator"))
    assert dup.status_code == 409 and dup.get_json()["feed_id"] == feed["id"]

    for bad, field in [
        ({**body, "source": "ftp://example.com"}, "source"),
        ({**body, "source": f"dir:{tmp_path / 'missing'}"}, "source"),
        ({**body, "source": f"dir:{other}"}, "source"),  # outside CLM_FEED_DROP_ROOTS
        ({**body, "source": "dir:/tmp/\u0000x"}, "source"),
        ({**body, "timeframe": "2h"}, "timeframe"),
        ({**body, "symbol": "BTC/USDT"}, "symbol"),
        ({**body, "interval_s": 0}, "interval_s"),
        ({**body, "kind": "folder"}, "kind"),
        ({"source": "binance", "symbol": "BTCUSDT", "timeframe": "1h",
          "exchange_symbol": "BTC-USDT"}, "exchange_symbol"),
    ]:
        r = client.post("/clm/data/feeds", json=bad, headers=h("operator"))
        assert r.status_code == 422, (bad, r.get_json())
        assert r.mimetype == "application/problem+json"
        assert field in [e["field"] for e in r.get_json()["errors"]], (bad, r.get_json())

    _csv(drop / "a.csv", [(0, 10, 11, 9, 10.5)])
    feed_flows.poll_feed(lite, feed["id"])
    listed = client.get("/clm/data/feeds", headers=h("viewer")).get_json()
    [item] = listed["items"]
    assert {"id", "source", "symbol", "timeframe", "last_bar", "lag_s", "last_error"} <= set(item)
    assert item["last_bar"] == "2024-01-01T00:00:00Z" and item["lag_s"] > 0
    assert client.get(f"/clm/data/feeds/{feed['id']}", headers=h("viewer")).status_code == 200

    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'clm_feed_lag_seconds{{feed_id="{feed["id"]}"' in metrics
    assert "clm_feed_error{" in metrics

    for raw in ("999", "x", "99999999999999999999"):
        assert client.delete(f"/clm/data/feeds/{raw}", headers=h("operator")).status_code == 404
    assert client.delete(f"/clm/data/feeds/{feed['id']}", headers=h("operator")).status_code == 200
    assert client.get("/clm/data/feeds", headers=h("viewer")).get_json()["items"] == []


def test_cli_adds_lists_polls_and_refuses_bad_input(lite, tmp_path):
    from app.cli import cli

    runner = CliRunner()
    drop = tmp_path / "drop"
    drop.mkdir()

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["data", "feed", *args])

    bad = run("add", "--source", "s3:bucket", "--symbol", "BTCUSDT", "--timeframe", "1h")
    assert bad.exit_code == 2 and "source" in bad.output and "unknown source" in bad.output
    missing = run("add", "--source", f"dir:{tmp_path / 'nope'}", "--symbol", "BTCUSDT",
                  "--timeframe", "1h")
    assert missing.exit_code == 2 and "no such directory" in missing.output
    assert run("add", "--source", "binance", "--symbol", "BTCUSDT",
               "--timeframe", "2h").exit_code == 2
    added = run("add", "--source", f"dir:{drop}", "--symbol", "BTCUSDT", "--timeframe", "1h",
                "--interval-s", "60")
    assert added.exit_code == 0, added.output
    feed_id = json.loads(added.output)["id"]
    _csv(drop / "a.csv", [(0, 10, 11, 9, 10.5)])
    polled = run("poll", str(feed_id))
    assert polled.exit_code == 0 and json.loads(polled.output)["bars_added"] == 1
    listed = json.loads(run("list", "--json").output)["items"]
    assert listed[0]["last_bar"] == "2024-01-01T00:00:00Z"
    assert "BTCUSDT" in run("list").output
    assert run("remove", "999").exit_code == 2
    assert run("poll", "999").exit_code == 2
    assert run("remove", str(feed_id)).exit_code == 0
