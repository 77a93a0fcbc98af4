"""Scheduled entry points: thin wrappers around the service's units of work."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import Engine

from service.config import Settings
from service.pipeline import run_dispatch, run_evaluate, run_sync

log = structlog.get_logger(__name__)


def sync_job(engine: Engine, settings: Settings) -> None:
    reports = run_sync(engine, settings)
    log.info("job.sync", sources=len(reports), failed=sum(1 for r in reports if r.error))


def evaluate_job(engine: Engine, settings: Settings) -> None:
    report = run_evaluate(engine, settings)
    log.info("job.evaluate", opened=report.cases_opened, updated=report.cases_updated)


def resources_job(engine: Engine, settings: Settings) -> None:
    """Refresh the community-resource directory from its URL, when one is configured. A failed
    refresh keeps the last imported snapshot: families still get yesterday's resources."""
    directory = settings.resource_directory
    if directory is None or not directory.url:
        return
    from service.resources import import_directory

    try:
        report = import_directory(engine, settings)
    except Exception as exc:  # any failure to fetch or read: logged, never fatal to the night
        log.error("job.resources_failed", error=type(exc).__name__)
        return
    log.info("job.resources", inserted=report.inserted, updated=report.updated,
             retired=report.retired, quarantined=len(report.quarantined))  # fmt: skip


def nightly_job(engine: Engine, settings: Settings) -> None:
    """Sync then evaluate: evaluating on half-synced data would open spurious cases. The
    resource directory is refreshed here too unless it has its own `resources_cron`."""
    sync_job(engine, settings)
    if settings.schedules.resources_cron is None:
        resources_job(engine, settings)
    evaluate_job(engine, settings)


def follow_ups_job(engine: Engine, settings: Settings) -> None:
    """The case plan between evaluations: check-ins that came due, close suggestions."""
    from service.cases import follow_up_cases

    report = follow_up_cases(engine, settings)
    log.info("job.follow_ups", updated=report.cases_updated, tasks=report.tasks_enqueued)


def retention_job(engine: Engine, settings: Settings) -> None:
    """Purge what is past its retention period (`retention:`)."""
    from service.retention import run_retention

    run_retention(engine, settings)  # logs `retention.finished` with its counts


def dispatch_job(engine: Engine, settings: Settings) -> None:
    report = run_dispatch(engine, settings)
    if report.delivered or report.retried or report.dead:
        log.info(
            "job.dispatch", delivered=report.delivered, retried=report.retried, dead=report.dead
        )


def tool_poll_job(engine: Engine, settings: Settings) -> None:
    """Status people changed in staff tools that cannot call us (Sheets, Planner).

    The leading scheduler runs it every `schedules.tool_poll_interval_seconds`."""
    from service.tool_status import poll_tools

    outcomes = poll_tools(engine, settings)
    if outcomes:
        log.info("job.tool_poll", **dict(outcomes))


def digest_job(engine: Engine, settings: Settings, until: datetime) -> None:
    """Queue each case manager's daily digest for the slot `until` (sent by the dispatcher)."""
    from service.digest import queue_digests

    queued = queue_digests(engine, settings, until)
    log.info("job.digest", queued=queued)
