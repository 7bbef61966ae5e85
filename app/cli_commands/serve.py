"""`clm serve`: the HTTP API under gunicorn (or Flask's server with `--dev`).

The schema is checked once, in the parent, before any worker starts: a database that
is not at migration head is refused with a message saying to run `clm db upgrade`
(migrating on boot would race between workers and surprise operators).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import get_settings


def _check_schema() -> None:
    from app.migrate import DatabaseNotAtHead, assert_at_head

    try:
        assert_at_head(get_settings().database_url)
    except DatabaseNotAtHead as exc:
        raise click.ClickException(f"refusing to serve: {exc}") from exc
    except SQLAlchemyError as exc:
        raise click.ClickException(f"refusing to serve: database unreachable: {exc}") from exc


def problem_json_server_errors() -> None:
    """Make gunicorn's own error answers problem+json.

    gunicorn answers a request it cannot parse (a malformed request line, too many or too
    large header fields, a bad HTTP version) itself, before the app sees it, with an HTML
    page; every 4xx of CLM is problem+json (docs/API.md), whoever answers it. gunicorn's
    workers call `gunicorn.util.write_error` for these, so that writer is replaced (in the
    master, before the workers fork). The status, reason and message stay gunicorn's.
    """
    import json

    from gunicorn import util

    if getattr(util.write_error, "clm_problem_json", False):
        return

    def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        body = json.dumps({"type": "about:blank", "title": reason, "status": int(status_int),
                           "detail": mesg}).encode()
        head = (f"HTTP/1.1 {int(status_int)} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/problem+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        util.write_nonblock(sock, head + body)

    write_error.clm_problem_json = True  # type: ignore[attr-defined]
    util.write_error = write_error


def _gunicorn(options: dict[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    problem_json_server_errors()

    class ClmApplication(BaseApplication):  # type: ignore[misc]
        """gunicorn without its own argv parsing: options come from `clm serve`."""

        def load_config(self) -> None:
            for key, value in options.items():
                # Skip settings an older gunicorn (>= 22 is allowed) does not know.
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            # Built in each worker (no preload): engines and pools are never shared
            # across the fork.
            from app import create_app
            from app.core.logs import configure_logging

            settings = get_settings()
            configure_logging(settings.log_level, settings.log_json)
            return create_app(check_schema=False)

    return ClmApplication()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64),
              help="threads per worker")
@click.option("--timeout", default=60, show_default=True, type=click.IntRange(1),
              help="seconds before a silent worker is restarted")
@click.option("--dev", is_flag=True, help="Flask's development server (single process)")
def serve(host: str, port: int, workers: int, threads: int, timeout: int, dev: bool) -> None:
    """Run the HTTP API (CLM_DATABASE_URL must be at migration head)."""
    _check_schema()
    if dev:
        from app import create_app

        create_app(check_schema=False).run(host=host, port=port, use_reloader=False)
        return
    settings = get_settings()
    _share_http_metrics(settings.var_dir / "prometheus" / f"web-{port}")
    _gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "timeout": timeout,
            "graceful_timeout": 30,
            "accesslog": "-",
            "errorlog": "-",
            "proc_name": "clm-api",
            # Recent gunicorn opens a control socket at one fixed path per user; two
            # servers on a host would fight over it, and CLM does not use it.
            "control_socket_disable": True,
            # The app answers a too-long request line with problem+json 414
            # (app.api.problems.MAX_REQUEST_LINE); gunicorn's check would send HTML.
            "limit_request_line": 0,
            "child_exit": _mark_metrics_dead,
            # gunicorn's own lines (start-up, access log) in the same JSON shape as CLM's.
            **({"logconfig_dict": _json_logconfig(settings.log_level)} if settings.log_json
               else {}),
        }
    ).run()


def _share_http_metrics(folder: Path) -> None:
    """HTTP latency is counted in each gunicorn worker: prometheus_client's multiprocess
    mode (files under `folder`, emptied at start) makes GET /metrics report all of them,
    whichever worker answers the scrape. An operator's PROMETHEUS_MULTIPROC_DIR wins."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _mark_metrics_dead(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _json_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's loggers through app.core.logs.JsonFormatter, on stderr (access on stdout)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.core.logs.JsonFormatter"}},
        "handlers": {
            "error": {"class": "logging.StreamHandler", "formatter": "json",
                      "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "json",
                       "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["error"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
        "root": {"level": level, "handlers": ["error"]},
    }
