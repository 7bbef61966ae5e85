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
from collections.abc import Iterator
from datetime import UTC, timedelta
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
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
from sqlalchemy import func, select

from app.api.schema import documented
from app.api.worker_metrics import WorkerCollector
from app.bus.broker import queue_depths
from app.core.config import Settings
from app.core.timeutil import utcnow
from app.db import transaction
from app.models.continuous import DriftReport
from app.models.registry import AuditEntry, ModelVersion
from app.services import allocation, deployment, feeds, jobs, live_scores

log = logging.getLogger(__name__)

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_LATENCY = Histogram(
    "clm_http_request_duration_seconds",
    "HTTP request latency by endpoint, method and status",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

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
                yield from drift_metrics(session, self.settings)
                yield from job_metrics(session, self.settings)
                yield from live_metrics(session)
                yield from deployment_metrics(session, self.settings)
                yield from feed_metrics(session, self.settings)
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


def drift_metrics(session: Any, settings: Settings) -> Iterator[Metric]:
    """Drift scores of the latest check of each model (the drift_reports table).

    - clm_drift_feature_share: share of features whose PSI crossed the threshold (the
      score compared with CLM_DRIFT_FEATURE_SHARE); clm_drift_max_feature_psi: the worst
      feature; clm_drift_prediction_psi: the model's output distribution.
    - clm_drift_detected: 1 when that check called drift.
    - clm_drift_last_check_timestamp_seconds, and clm_drift_checks by outcome (all time).
    Models whose last check could not run (status error / insufficient_data) report the
    timestamp and outcome only.
    """
    labels = ["model_id", "version"]
    share = GaugeMetricFamily(
        "clm_drift_feature_share", "Share of features drifted (PSI), latest check", labels=labels
    )
    max_psi = GaugeMetricFamily(
        "clm_drift_max_feature_psi", "Largest feature PSI, latest check", labels=labels
    )
    prediction_psi = GaugeMetricFamily(
        "clm_drift_prediction_psi", "PSI of the model's predictions, latest check", labels=labels
    )
    detected = GaugeMetricFamily(
        "clm_drift_detected", "1 when the latest check detected drift", labels=labels
    )
    checked = GaugeMetricFamily(
        "clm_drift_last_check_timestamp_seconds", "When the latest drift check ran",
        labels=["model_id", "version", "status"],
    )
    latest_ids = select(func.max(DriftReport.id)).group_by(DriftReport.model_id)
    for report in session.scalars(
        select(DriftReport).where(DriftReport.id.in_(latest_ids.scalar_subquery()))
    ):
        key = [report.model_id, report.version]
        checked_at = report.checked_at
        if checked_at is not None:
            if checked_at.tzinfo is None:  # SQLite hands back naive UTC
                checked_at = checked_at.replace(tzinfo=UTC)
            checked.add_metric([*key, report.status], checked_at.timestamp())
        if report.status != "ok":
            continue
        share.add_metric(key, float(report.share_drifted or 0.0))
        feature_psis = [
            float(f["psi"]) for f in (report.features or {}).get("features", [])
            if isinstance(f, dict) and isinstance(f.get("psi"), int | float)
        ]
        if feature_psis:
            max_psi.add_metric(key, max(feature_psis))
        if report.prediction_psi is not None:
            prediction_psi.add_metric(key, float(report.prediction_psi))
        detected.add_metric(key, 1.0 if report.drifted else 0.0)
    yield from (share, max_psi, prediction_psi, detected, checked)
    outcomes = CounterMetricFamily(
        "clm_drift_checks", "Drift checks run, by outcome", labels=["status", "drifted"]
    )
    for status, drifted, count in session.execute(
        select(DriftReport.status, DriftReport.drifted, func.count())
        .group_by(DriftReport.status, DriftReport.drifted)
    ):
        outcomes.add_metric([str(status), "true" if drifted else "false"], float(count))
    yield outcomes


def live_metrics(session: Any) -> Iterator[Metric]:
    """Live records of every scored version (production, candidate, shadow): Sharpe and
    max drawdown of its paper trades on bars after its training, and bars scored."""
    labels = ["model_id", "version", "status"]
    sharpe = GaugeMetricFamily("clm_live_sharpe",
                               "Sharpe of the version's live record (bars after training)",
                               labels=labels)
    drawdown = GaugeMetricFamily("clm_live_max_drawdown",
                                 "Max drawdown (0-1) of the version's live record",
                                 labels=labels)
    bars = GaugeMetricFamily("clm_live_bars", "Bars scored in the version's live record",
                             labels=labels)
    for model_id, version, status, sh, dd, n in live_scores.live_metric_rows(session):
        key = [model_id, version, status]
        if sh is not None:
            sharpe.add_metric(key, float(sh))
        if dd is not None:
            drawdown.add_metric(key, float(dd))
        bars.add_metric(key, float(n))
    yield from (sharpe, drawdown, bars)


def deployment_metrics(session: Any, settings: Settings) -> Iterator[Metric]:
    """Guarded deployment: allocation weights per version, shadow exit progress, and the
    automatic decisions (audit entries by actor clm) by action."""
    weights = GaugeMetricFamily("clm_allocation_weight",
                                "Allocation weight of the version (sum 1 per model)",
                                labels=["model_id", "version", "mode"])
    for model_id, version, mode, w in allocation.allocation_metric_rows(session):
        weights.add_metric([model_id, version, mode], w)
    yield weights
    trades = GaugeMetricFamily("clm_shadow_trades",
                               "Live trades of a shadow version (exit rule: "
                               "CLM_SHADOW_MIN_TRADES)", labels=["model_id", "version"])
    progress = GaugeMetricFamily("clm_shadow_progress",
                                 "Share (0-1) of the shadow exit's trade count reached",
                                 labels=["model_id", "version"])
    for model_id, version, n, _days, share in deployment.shadow_progress_rows(session,
                                                                               settings):
        trades.add_metric([model_id, version], float(n))
        progress.add_metric([model_id, version], share)
    yield from (trades, progress)
    decisions = CounterMetricFamily("clm_automatic_decisions",
                                    "Automatic deployment decisions (audit, actor clm)",
                                    labels=["action"])
    for action, count in session.execute(
            select(AuditEntry.action, func.count()).where(AuditEntry.actor == "clm")
            .group_by(AuditEntry.action).order_by(AuditEntry.action)).all():
        decisions.add_metric([str(action)], float(count))
    yield decisions


_JOB_METRICS_WINDOW = timedelta(days=7)  # duration histograms cover recent jobs only


def job_metrics(session: Any, settings: Settings) -> Iterator[Metric]:
    """Training jobs (train kind; searches have their own figures): by status and trigger,
    lost leases, and job and step duration histograms over the last seven days."""
    by_status = GaugeMetricFamily("clm_training_jobs", "Training jobs by status and trigger",
                                  labels=["status", "trigger_reason"])
    for status, reason, count in jobs.train_jobs_by_status_and_trigger(session):
        by_status.add_metric([status, reason], count)
    yield by_status
    lost = CounterMetricFamily("clm_training_job_lost_leases",
                               "Stage leases that expired under a worker (retried attempts)")
    lost.add_metric([], float(jobs.lost_stage_leases(session)))
    yield lost
    since = utcnow() - _JOB_METRICS_WINDOW
    yield histogram_family("clm_training_job_duration_seconds",
                           "Finished training jobs: first claim to finish",
                           ["model_type", "status"], jobs.train_job_durations(session, since))
    yield histogram_family("clm_training_step_duration_seconds",
                           "Succeeded pipeline steps", ["step"],
                           jobs.train_step_durations(session, since))


def feed_metrics(session: Any, settings: Settings) -> Iterator[Metric]:
    """Market data feeds (app.services.feeds): clm_feed_lag_seconds (now minus the close of
    the newest stored bar; absent before the first bar), clm_feed_last_bar_timestamp_seconds
    and clm_feed_error (1 when the last poll recorded an error)."""
    labels = ["feed_id", "source", "symbol", "timeframe"]
    lag = GaugeMetricFamily(
        "clm_feed_lag_seconds", "Seconds since the newest stored bar of the feed closed",
        labels=labels)
    last = GaugeMetricFamily(
        "clm_feed_last_bar_timestamp_seconds", "Open time of the feed's newest stored bar",
        labels=labels)
    failing = GaugeMetricFamily(
        "clm_feed_error", "1 when the feed's last poll recorded an error", labels=labels)
    now = utcnow()
    for feed in feeds.list_feeds(session):
        key = [str(feed.id), feeds.source_text(feed)[:200], feed.symbol, feed.timeframe]
        seconds = feeds.lag_seconds(feed, now)
        if seconds is not None and feed.last_bar is not None:
            lag.add_metric(key, seconds)
            last.add_metric(key, feed.last_bar.timestamp())
        failing.add_metric(key, 1.0 if feed.last_error else 0.0)
    yield from (lag, last, failing)


def render(settings: Settings) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(HTTP_LATENCY)
    registry.register(FleetCollector(settings))
    registry.register(WorkerCollector(settings))  # clm_workers (issue 15's dashboard)
    return generate_latest(registry)


# What generate_latest writes (metric names are plain ASCII): the text exposition format
# 0.0.4, which every Prometheus reads (prometheus_client's CONTENT_TYPE_LATEST says 1.0.0
# in recent releases, which older servers refuse).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    @documented("Prometheus metrics (text exposition format 0.0.4)", tag="system",
                media_type="text/plain")
    def metrics_view() -> Response:
        response = Response(render(app.config["CLM_SETTINGS"]))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
