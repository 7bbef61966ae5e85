"""CLM — the Continuous Learning Manager. `create_app()` is the Flask factory."""

from __future__ import annotations

from typing import Any

from app.core.version import __version__

__all__ = ["__version__", "create_app"]


def create_app(settings: Any = None, *, check_schema: bool = True) -> Any:
    """Build the WSGI app. Refuses to start on a database that is not at migration head."""
    from app.api import build_app

    return build_app(settings, check_schema=check_schema)
