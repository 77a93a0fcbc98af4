"""The scheduler process. Exactly one may run per database: APScheduler 3 cannot share a job
store, so on PostgreSQL the process that holds an advisory lock schedules and others stand by."""

from __future__ import annotations

import time

import structlog
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Connection, Engine, text

from jobs.tasks import dispatch_job, nightly_job
from service.config import Settings
from service.pipeline import open_engine

log = structlog.get_logger(__name__)
LOCK_ID = 0x43415345  # "CASE"


def hold_leadership(engine: Engine) -> Connection | None:
    """On PostgreSQL, block until this process holds the scheduler lock; keep the connection."""
    if engine.dialect.name != "postgresql":
        return None  # SQLite deployments are single-process by design
    conn = engine.connect()
    while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_ID}).scalar():
        conn.rollback()
        log.info("scheduler.standby")
        time.sleep(30)
    return conn


def build_scheduler(engine: Engine, settings: Settings) -> BlockingScheduler:
    sched = BlockingScheduler(timezone=settings.district.timezone)
    sched.add_job(
        nightly_job,
        CronTrigger.from_crontab(settings.schedules.sync_cron, timezone=settings.district.timezone),
        args=(engine, settings),
        id="nightly",
        max_instances=1,
        coalesce=True,
    )
    sched.add_job(
        dispatch_job,
        "interval",
        seconds=settings.schedules.dispatch_interval_seconds,
        args=(engine, settings),
        id="dispatch",
        max_instances=1,
        coalesce=True,
    )
    return sched


def run_scheduler(settings: Settings) -> None:
    engine = open_engine(settings)
    lock = hold_leadership(engine)
    try:
        build_scheduler(engine, settings).start()
    finally:
        if lock is not None:
            lock.close()
