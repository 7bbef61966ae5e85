"""`clm_workers` for GET /metrics: how many Celery nodes (workers, and beat, which answers
pings too) are up, per node-name prefix ("train", "eval", "celerybeat", …).

Counted by one broadcast remote-control ping through the broker (what app.liveness does
for one node), with a short timeout and cached for `CACHE_S`, so a scrape every 15 s
costs at most one ping; a broker that cannot broadcast or answer yields no sample rather
than a wrong zero. The Grafana dashboard's worker-count panel reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.config import Settings

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 0.5
CACHE_S = 10.0


# Per broker URL: (when counted, the counts). Module-level because /metrics builds a
# fresh registry (and collector) for every scrape.
_cache: dict[str, tuple[float, Counter[str] | None]] = {}
_lock = threading.Lock()


class WorkerCollector(Collector):
    """Celery nodes answering a ping, by the part of their name before "@"."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _count(self) -> Counter[str] | None:
        from app.bus.producer import producer_app  # lazy: Celery only when scraped

        try:
            replies = producer_app(self.settings).control.ping(timeout=PING_TIMEOUT_S)
        except Exception as exc:  # a broker down, or one without broadcast
            log.warning("metrics: worker ping failed: %s", exc)
            return None
        return Counter(node.split("@", 1)[0] for reply in replies for node in reply)

    def collect(self) -> Iterator[Metric]:
        key = self.settings.broker_url
        with _lock:
            at, counts = _cache.get(key, (-CACHE_S - 1.0, None))
            if time.monotonic() - at > CACHE_S:
                counts = self._count()
                _cache[key] = (time.monotonic(), counts)
        if counts is None:
            return
        family = GaugeMetricFamily("clm_workers", "Celery nodes answering a ping, by name "
                                   "prefix (workers, and beat)", labels=["name"])
        for name, n in sorted(counts.items()):
            family.add_metric([name], float(n))
        family.add_metric(["all"], float(sum(counts.values())))
        yield family
