"""Liveness probes for CLM's processes: `python -m app.liveness PROCESS`, exit 0 when alive.

Used by compose.yaml's health checks (and any supervisor). Each probe asks the process
itself, not just whether its PID exists:

- `web [--url URL]`: GET /health answers 200 (database and broker reachable).
- `worker --name NAME` (or `--node NAME@HOST`): the Celery worker answers a remote-control
  ping over the broker; a worker whose main loop is stuck, or that lost the broker, does not.
- `beat [--name celerybeat]`: beat answers the same ping (Celery >= 5.7,
  beat_enable_remote_control) only while its scheduler keeps ticking.
- `events [--max-age S]`: the consumer's loop touched its heartbeat file lately.
- `flower [--url URL]`: Flower's /healthcheck answers.

Only the probe asked for is imported (web, events and flower need no Celery import).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def _http_ok(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def _node(name: str | None, node: str | None, default: str) -> str:
    if node:
        return node
    return f"{name or default}@{socket.gethostname()}"


def ping_node(node: str, timeout: float) -> tuple[bool, str]:
    """Remote-control ping of one Celery node (a worker, or beat) through the broker."""
    from app.bus.producer import producer_app

    try:
        replies = producer_app().control.ping(destination=[node], timeout=timeout)
    except Exception as exc:  # broker unreachable
        return False, f"{node}: broker error {type(exc).__name__}: {exc}"
    for reply in replies:
        if node in reply and reply[node].get("ok") == "pong":
            return True, f"{node}: pong"
    return False, f"{node}: no answer within {timeout:.0f}s"


def heartbeat_fresh(max_age: float) -> tuple[bool, str]:
    """The event consumer's heartbeat file is younger than `max_age` seconds."""
    from app.core.config import get_settings

    path = get_settings().var_dir / "events-consumer.alive"
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{path}: missing (consumer not started?)"
    return age <= max_age, f"{path}: {age:.0f}s old (limit {max_age:.0f}s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.liveness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("process", choices=["web", "worker", "beat", "events", "flower"])
    parser.add_argument("--url", help="web / flower: the URL to GET")
    parser.add_argument("--name", help="worker / beat: node name before '@' (this host)")
    parser.add_argument("--node", help="worker / beat: full node name NAME@HOST")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--max-age", type=float, default=60.0,
                        help="events: heartbeat age limit in seconds (default 60)")
    args = parser.parse_args(argv)
    if args.process == "web":
        ok, why = _http_ok(args.url or "http://127.0.0.1:8000/health", args.timeout)
    elif args.process == "flower":
        ok, why = _http_ok(args.url or "http://127.0.0.1:5555/healthcheck", args.timeout)
    elif args.process == "events":
        ok, why = heartbeat_fresh(args.max_age)
    elif args.process == "worker":
        if not (args.name or args.node):
            parser.error("worker: give --name (e.g. train) or --node NAME@HOST")
        ok, why = ping_node(_node(args.name, args.node, ""), args.timeout)
    else:
        ok, why = ping_node(_node(args.name, args.node, "celerybeat"), args.timeout)
    print(f"{args.process}: {'alive' if ok else 'NOT alive'} ({why})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
