"""Celery beat schedule as data: a small fixed set of periodic tasks (not one per model).

Each entry's task decides in the database what is due, so a second beat started by
mistake does no harm.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries are added by the owners of the periodic tasks (reaper, tick, checks, relay)."""
    return {}
