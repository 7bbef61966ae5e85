"""Celery task of market data feeds: a thin adapter over app.flows.feeds.

`clm.feeds.poll` (beat, every CLM_FEED_TICK_S): poll every due feed; each poll claims
the feed's lease first, so a second beat or a concurrent `clm data feed poll` never
fetches the same feed at the same time.
"""

from __future__ import annotations

from typing import Any

from app.core.config import get_settings
from app.flows import feeds
from workers.celery_app import app
from workers.tasks_continuous import RETRY


@app.task(name="clm.feeds.poll", **RETRY)
def poll_feeds() -> dict[str, Any]:
    """Poll the due feeds (app.flows.feeds.poll_due)."""
    return feeds.poll_due(get_settings())
