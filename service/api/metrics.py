"""Prometheus metrics at `api.metrics_path` (default `/metrics`; null turns it off).

What lives in the database (sync, outbox, deliveries, suppressions, rule hits, circuits) is read
at scrape time by a custom collector, so every gunicorn worker answers the same and the separate
worker and scheduler processes need no endpoint of their own. Request latency is measured in
this process; with several gunicorn workers set `PROMETHEUS_MULTIPROC_DIR` (an empty directory
per deployment, cleared at start) and each worker's histograms are summed at scrape time.

No token: the figures are counts by source, target, status, reason and rule, never a student.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import structlog
from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from service.clock import utcnow
from service.models import OutboxItem, PersonReferral, QuarantinedRecord, Referral
from service.target_health import aware, circuits

log = structlog.get_logger(__name__)

# Where an item waits to be taken: the outbox statuses whose age means a backlog.
DUE_STATUSES = ("pending", "sending")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DatabaseCollector(Collector):
    """Reads the figures kept in the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "casebridge_metrics_database_up", "1 when the database answered this scrape."
        )
        try:
            families = list(self._families())
        except SQLAlchemyError as exc:
            log.warning("metrics.database_unavailable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        from service.api.sync import last_good_finish, latest_runs, run_view

        now = utcnow()
        with self.engine.connect() as conn:
            runs = latest_runs(conn)
            good = last_good_finish(conn)
            held = conn.execute(
                select(QuarantinedRecord.source, func.count())
                .where(QuarantinedRecord.resolved_at.is_(None))
                .group_by(QuarantinedRecord.source)
            ).all()
            depth = conn.execute(
                select(OutboxItem.target, OutboxItem.status, func.count())
                .group_by(OutboxItem.target, OutboxItem.status)
            ).all()  # fmt: skip
            oldest = conn.execute(
                select(OutboxItem.target, OutboxItem.status, func.min(OutboxItem.next_attempt_at))
                .where(OutboxItem.status.in_(DUE_STATUSES), OutboxItem.next_attempt_at <= now)
                .group_by(OutboxItem.target, OutboxItem.status)
            ).all()  # fmt: skip
            suppressed = conn.execute(
                select(OutboxItem.reason, func.count())
                .where(OutboxItem.status == "suppressed")
                .group_by(OutboxItem.reason)
            ).all()  # fmt: skip
            hits = conn.execute(
                select(Referral.rule_id, func.count())
                .where(Referral.origin == "rule", Referral.rule_id.is_not(None))
                .group_by(Referral.rule_id)
            ).all()  # fmt: skip
        rows = GaugeMetricFamily(
            "casebridge_sync_rows", "Rows in each source's last sync run, by what happened.",
            labels=["source", "count"],
        )  # fmt: skip
        failed = GaugeMetricFamily(
            "casebridge_sync_last_run_failed", "1 when a source's last run failed outright.",
            labels=["source"],
        )  # fmt: skip
        for source, run in sorted(runs.items()):
            view = run_view(run)
            for name, value in view.rows.items():
                rows.add_metric([source, name], value)
            rows.add_metric([source, "quarantined"], view.quarantined)
            failed.add_metric([source], 1 if view.outcome == "failed" else 0)
        lag = GaugeMetricFamily(
            "casebridge_sync_lag_seconds",
            "Seconds since a source's last run that did not fail finished.", labels=["source"],
        )  # fmt: skip
        for source, finished in sorted(good.items()):
            lag.add_metric([source], (now - finished).total_seconds())
        quarantined = GaugeMetricFamily(
            "casebridge_sync_quarantined", "Quarantined records not resolved since, by source.",
            labels=["source"],
        )  # fmt: skip
        for source, n in sorted(held):
            quarantined.add_metric([source], n)
        yield from (rows, failed, lag, quarantined)

        items = GaugeMetricFamily(
            "casebridge_outbox_items", "Outbox items by target and status (the depth).",
            labels=["target", "status"],
        )  # fmt: skip
        delivered = CounterMetricFamily(
            "casebridge_deliveries", "Items delivered, by target.", labels=["target"]
        )
        dead = CounterMetricFamily(
            "casebridge_delivery_failures",
            "Items dead-lettered (failed for good or out of attempts), by target.",
            labels=["target"],
        )
        for target, status, n in sorted(depth):
            items.add_metric([target, status], n)
            if status == "delivered":
                delivered.add_metric([target], n)
            elif status == "dead":
                dead.add_metric([target], n)
        age = GaugeMetricFamily(
            "casebridge_outbox_oldest_due_age_seconds",
            "How long the oldest due item has waited, by target and status.",
            labels=["target", "status"],
        )
        for target, status, due in sorted(oldest):
            age.add_metric([target, status], max(0.0, (now - aware(due)).total_seconds()))
        suppressions = CounterMetricFamily(
            "casebridge_suppressions", "Family messages not sent, by the policy's reason.",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in sorted(suppressed, key=lambda r: r[0] or ""):
            suppressions.add_metric([reason or "unknown"], n)
        rule_hits = CounterMetricFamily(
            "casebridge_rule_hits", "Referrals made by each rule (a student counted once per "
            "case it joined).", labels=["rule"],
        )  # fmt: skip
        for rule, n in sorted(hits):
            rule_hits.add_metric([str(rule)], n)
        yield from (items, delivered, dead, age, suppressions, rule_hits)

        circuit = GaugeMetricFamily(
            "casebridge_destination_circuit_open",
            "1 while a destination's circuit breaker is open (as a worker last recorded it).",
            labels=["target"],
        )
        for c in circuits(self.engine):
            circuit.add_metric([c.target], 1 if c.state == "open" else 0)
        yield circuit

        referrals = GaugeMetricFamily(
            "casebridge_person_referrals",
            "Referrals people sent that wait: for a worker to put them on their case "
            "(waiting_for_worker; it should drain every pass) or for staff to name the student "
            "(unmatched).",
            labels=["state"],
        )
        P = PersonReferral
        with self.engine.connect() as conn:
            waiting = conn.execute(
                select(func.count()).where(
                    P.state == "matched", P.case_id.is_(None), P.student_id.is_not(None)
                )
            ).scalar_one()
            unmatched = conn.execute(
                select(func.count()).where(P.state == "unmatched")
            ).scalar_one()
        referrals.add_metric(["waiting_for_worker"], waiting)
        referrals.add_metric(["unmatched"], unmatched)
        yield referrals


def install(app: Flask, engine: Engine, path: str) -> None:
    """The request-latency histogram on every request, and the scrape endpoint at `path`."""
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    registry = CollectorRegistry()
    if multiprocess:
        # Each gunicorn worker writes its samples to the directory; a scrape sums them.
        MultiProcessCollector(registry)
    latency = Histogram(
        "casebridge_http_request_duration_seconds",
        "API request latency by route template, method and status.",
        ["route", "method", "status"],
        buckets=LATENCY_BUCKETS,
        registry=None if multiprocess else registry,
    )
    registry.register(DatabaseCollector(engine))

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            # The route template, never the path: /cases/<int:case_id>, not /cases/12.
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            latency.labels(route, request.method, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response

    text_plain: Any = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    @app.get(
        path, summary="Prometheus metrics", operation_id="getMetrics", responses={200: text_plain}
    )
    def metrics() -> Response:
        """Prometheus text format. No token: counts only, never a student."""
        return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
