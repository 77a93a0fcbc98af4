"""Scheduled entry points: thin wrappers around the service's units of work."""

from __future__ import annotations

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


def nightly_job(engine: Engine, settings: Settings) -> None:
    """Sync then evaluate: evaluating on half-synced data would open spurious cases."""
    sync_job(engine, settings)
    evaluate_job(engine, settings)


def dispatch_job(engine: Engine, settings: Settings) -> None:
    report = run_dispatch(engine, settings)
    if report.delivered or report.retried or report.dead:
        log.info(
            "job.dispatch", delivered=report.delivered, retried=report.retried, dead=report.dead
        )


def tool_poll_job(engine: Engine, settings: Settings) -> None:
    """Status people changed in staff tools that cannot call us (Sheets, Planner).

    To be scheduled every `schedules.tool_poll_interval_seconds` next to the dispatch job (left
    to the merge: the scheduler is being rewritten on main)."""
    from service.tool_status import poll_tools

    outcomes = poll_tools(engine, settings)
    if outcomes:
        log.info("job.tool_poll", **dict(outcomes))
