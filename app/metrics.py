"""Prometheus metrics for GET /metrics.

Two kinds:
- Fleet facts read from the database at scrape time (jobs by status and trigger, job and
  step duration histograms, promotions and rollbacks, drift scores) and queue depths from
  the broker: every API replica reports the same numbers, whichever worker did the work.
- Per-process HTTP request latency by endpoint, aggregated across gunicorn workers when
  PROMETHEUS_MULTIPROC_DIR is set (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.api.schema import documented
from app.config import Settings

log = logging.getLogger(__name__)

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_LATENCY = Histogram(
    "clm_http_request_duration_seconds",
    "HTTP request latency by endpoint, method and status",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Each provider yields metric families from the database; owners of other tables add theirs
# with `register_db_metrics` (jobs, drift, ...), so this module need not import them.
DbMetricsProvider = Callable[[Any, Settings], Iterator[Metric]]
_db_providers: list[DbMetricsProvider] = []


def register_db_metrics(provider: DbMetricsProvider) -> DbMetricsProvider:
    if provider not in _db_providers:
        _db_providers.append(provider)
    return provider


def histogram_family(
    name: str, doc: str, labels: list[str], rows: dict[tuple[str, ...], list[float]]
) -> HistogramMetricFamily:
    """Build a histogram family from raw observations grouped by label values."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, values in rows.items():
        buckets = []
        for bound in DURATION_BUCKETS:
            buckets.append((str(bound), float(sum(1 for v in values if v <= bound))))
        buckets.append(("+Inf", float(len(values))))
        family.add_metric(list(label_values), buckets, sum_value=float(sum(values)))
    return family


class FleetCollector(Collector):
    """Reads fleet-wide facts from the database and the broker at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        from app.broker import queue_depths
        from app.db import transaction

        depth = GaugeMetricFamily(
            "clm_queue_depth", "Messages waiting per work queue", labels=["queue"]
        )
        for queue, value in queue_depths(self.settings).items():
            if value is not None:
                depth.add_metric([queue], float(value))
        yield depth
        try:
            with transaction(self.settings.database_url) as session:
                yield from _registry_metrics(session, self.settings)
                for provider in _db_providers:
                    yield from provider(session, self.settings)
        except Exception as exc:  # a scrape must still answer while the database is down
            log.warning("metrics: database not readable: %s", exc)
            up = GaugeMetricFamily("clm_database_up", "1 when the database answered")
            up.add_metric([], 0.0)
            yield up
            return
        up = GaugeMetricFamily("clm_database_up", "1 when the database answered")
        up.add_metric([], 1.0)
        yield up


def _registry_metrics(session: Any, settings: Settings) -> Iterator[Metric]:
    from sqlalchemy import func, select

    from app.models.registry import AuditEntry, ModelVersion

    versions = GaugeMetricFamily(
        "clm_model_versions", "Model versions by status", labels=["status"]
    )
    for status, count in session.execute(
        select(ModelVersion.status, func.count()).group_by(ModelVersion.status)
    ):
        versions.add_metric([str(status.value if hasattr(status, "value") else status)], count)
    yield versions
    counts = dict(
        session.execute(select(AuditEntry.action, func.count()).group_by(AuditEntry.action)).all()
    )
    promotions = CounterMetricFamily("clm_promotions", "Promotions to production (audit log)")
    promotions.add_metric([], float(sum(n for a, n in counts.items() if "promot" in a)))
    yield promotions
    rollbacks = CounterMetricFamily("clm_rollbacks", "Rollbacks (audit log)")
    rollbacks.add_metric(
        [], float(sum(n for a, n in counts.items() if "rollback" in a or "rolled" in a))
    )
    yield rollbacks


def render(settings: Settings) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(HTTP_LATENCY)
    registry.register(FleetCollector(settings))
    return generate_latest(registry)


def init_app(app: Flask) -> None:
    """Time every request; expose GET /metrics (no token, per contract)."""

    @app.before_request
    def _start_timer() -> None:
        g.clm_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("clm_started", None)
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            HTTP_LATENCY.labels(endpoint, request.method, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response

    @documented("Prometheus metrics (text format)", tag="system")
    def metrics_view() -> Response:
        return Response(render(app.config["CLM_SETTINGS"]), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
