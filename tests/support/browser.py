"""A real browser for the console tests: the app on a loopback HTTP server in a thread,
and Debian's headless Chromium driven by Playwright (never a downloaded browser).

`chromium_or_skip()` skips when the browser or the playwright package is missing, except
under CLM_REQUIRE_SERVICES=1 (CI installs both; see .ci/run), where it fails.
Screenshots go to `screenshot_dir()`: $CLM_UI_SCREENSHOTS, else var/test-artifacts/ui/
under the repository (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("CLM_UI_SCREENSHOTS") or ROOT / "var" / "test-artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _missing(what: str) -> None:
    if os.environ.get("CLM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (CLM_REQUIRE_SERVICES=1)")
    pytest.skip(f"{what} is not installed")


def chromium_or_skip() -> str:
    for path in CHROMIUM_PATHS:
        if Path(path).exists() or shutil.which(path):
            break
    else:
        _missing("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package")
    return path


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port, threaded); yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ui-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright `Browser`), closed afterwards."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()
