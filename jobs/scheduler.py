"""The scheduler role: exactly one leader fires the schedules; others stand by.

APScheduler 3 cannot share a job store between processes, so on PostgreSQL the scheduler that
holds an advisory lock (on a connection it keeps for that alone) leads, and the others try again
every `standby_poll_seconds`. A dead leader's connection closes and its lock with it, so a standby
takes over within seconds. Before every run the leader checks that its lock connection is alive.

Each cron firing is recorded in `job_runs` under its *slot* (the scheduled time) with a unique key,
so no slot runs twice, whoever fires it; a new leader runs the latest slot the old one missed
(once: runs coalesce). SQLite deployments are one process by design: that process leads.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy import Connection, Engine, insert, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from jobs.tasks import (
    digest_job,
    dispatch_job,
    evaluate_job,
    follow_ups_job,
    nightly_job,
    resources_job,
    retention_job,
    tool_poll_job,
)
from service.clock import utcnow
from service.config import Settings, cron_trigger
from service.digest import digest_destinations
from service.logging import run_context
from service.models import JobRun, SchedulerHeartbeat
from service.pipeline import open_engine

log = structlog.get_logger(__name__)
LOCK_ID = 0x43415345  # "CASE"
HOLDER = f"{socket.gethostname()}:{os.getpid()}"
CATCH_UP = timedelta(hours=6)  # a slot missed longer ago than this is left missed


class Leadership:
    """The advisory lock on a dedicated connection (PostgreSQL), or nothing to win (SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        if self.conn is None:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        held = self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_ID})
        return bool(held.scalar())

    def alive(self) -> bool:
        """Still the leader: the lock's connection answers (the lock lives as long as it)."""
        if self.conn is None:
            return self.engine.dialect.name != "postgresql"
        try:
            self.conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def beat(engine: Engine, elected_at: datetime) -> None:
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(
            update(SchedulerHeartbeat)
            .where(SchedulerHeartbeat.name == "leader")
            .values(holder=HOLDER, elected_at=elected_at, beat_at=now)
        ).rowcount
        if not done:
            conn.execute(
                insert(SchedulerHeartbeat).values(
                    name="leader", holder=HOLDER, elected_at=elected_at, beat_at=now
                )
            )


def latest_slot(trigger: Any, now: datetime) -> datetime | None:
    """The last time at or before `now` the trigger fired, within the catch-up window."""
    for window in (timedelta(minutes=2), timedelta(hours=1), CATCH_UP):
        slot = None
        moment = trigger.get_next_fire_time(None, now - window)
        while moment is not None and moment <= now:
            slot = moment
            moment = trigger.get_next_fire_time(moment, moment + timedelta(microseconds=1))
        if slot is not None:
            return slot
    return None


def fire_once(engine: Engine, job: str, slot: datetime, run: Callable[[], None]) -> bool:
    """Run `job` for `slot` unless some scheduler already did; False when it was taken."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(JobRun).values(job=job, slot=slot, holder=HOLDER, started_at=utcnow())
            )
    except IntegrityError:
        log.info("scheduler.slot_taken", job=job, slot=slot.isoformat())
        return False
    outcome = "ok"
    with run_context(job, slot=slot.isoformat()):  # every line of this run: one run_id
        try:
            run()
        except Exception as exc:  # recorded on the run; the schedule goes on
            outcome = f"failed: {type(exc).__name__}"
            log.error("scheduler.job_failed", job=job, error=type(exc).__name__)
        with engine.begin() as conn:
            conn.execute(
                update(JobRun)
                .where(JobRun.job == job, JobRun.slot == slot)
                .values(finished_at=utcnow(), outcome=outcome)
            )
    return True


class Scheduler:
    def __init__(self, engine: Engine, settings: Settings, *, dispatch: bool = True) -> None:
        self.engine = engine
        self.settings = settings
        # False where a worker loop in the same process delivers the outbox (all-in-one).
        self.dispatch = dispatch
        self.leadership = Leadership(engine)
        self.stop = threading.Event()
        zone = settings.district.timezone
        self.nightly = cron_trigger(settings.schedules.sync_cron, zone)
        self.digest = cron_trigger(settings.schedules.digest_cron, zone)
        # The other cron schedules, each fired once per slot like the nightly run.
        cfg = settings.schedules
        extra: dict[str, tuple[str | None, Callable[[Engine, Settings], None]]] = {
            "evaluate": (cfg.evaluate_cron, evaluate_job),
            "follow-ups": (cfg.follow_up_cron, follow_ups_job),
            "resources": (cfg.resources_cron, resources_job),
            "retention": (cfg.retention_cron, retention_job),
        }
        self.crons: dict[str, tuple[Any, Callable[[Engine, Settings], None]]] = {
            name: (cron_trigger(expr, zone), job)
            for name, (expr, job) in extra.items()
            if expr is not None
        }
        self.sched: BlockingScheduler | None = None

    def _fire(self, name: str, trigger: Any, run: Callable[[datetime], None]) -> None:
        """Run `name` for its latest slot, unless this process no longer leads or some
        scheduler already ran that slot."""
        if not self._still_leading():
            return
        slot = latest_slot(trigger, utcnow().astimezone(trigger.timezone))
        if slot is not None:
            fire_once(self.engine, name, slot, lambda: run(slot))

    def _run_nightly(self) -> None:
        self._fire("nightly", self.nightly, lambda _slot: nightly_job(self.engine, self.settings))

    def _run_digest(self) -> None:
        self._fire("digest", self.digest,
                   lambda slot: digest_job(self.engine, self.settings, slot))  # fmt: skip

    def _run_cron(self, name: str) -> None:
        trigger, job = self.crons[name]
        self._fire(name, trigger, lambda _slot: job(self.engine, self.settings))

    def _run_dispatch(self) -> None:
        if self._still_leading():
            with run_context("dispatch"):
                dispatch_job(self.engine, self.settings)

    def _run_tool_poll(self) -> None:
        if self._still_leading():
            with run_context("tool_poll"):
                tool_poll_job(self.engine, self.settings)

    def _still_leading(self) -> bool:
        if self.leadership.alive():
            return True
        # The lock's connection died: another scheduler may lead now. Stand down; `run`
        # goes back to standby.
        log.error("scheduler.lost_leadership")
        if self.sched is not None:
            self.sched.shutdown(wait=False)
        return False

    def run(self) -> None:
        """Lead when possible, stand by otherwise, until stopped."""
        while not self.stop.is_set():
            self.lead()
            self.leadership.release()

    def lead(self) -> None:
        """Block until this process leads, then run the schedules until stopped or deposed."""
        poll = self.settings.schedules.standby_poll_seconds
        while not self.leadership.try_acquire():
            log.info("scheduler.standby")
            if self.stop.wait(poll):
                return
        elected = utcnow()
        log.info("scheduler.leading", holder=HOLDER)
        beat(self.engine, elected)
        self._run_nightly()  # the slot a dead leader may have missed (recorded: never twice)
        if digest_destinations(self.settings):
            self._run_digest()  # likewise this morning's digests
        for name in self.crons:
            self._run_cron(name)  # and the other schedules' latest slots
        zone = self.settings.district.timezone
        self.sched = BlockingScheduler(timezone=zone)
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 300}
        self.sched.add_job(self._run_nightly, self.nightly, id="nightly", **common)
        for name, (trigger, _) in self.crons.items():
            self.sched.add_job(self._run_cron, trigger, args=[name], id=name, **common)
        if digest_destinations(self.settings):
            self.sched.add_job(self._run_digest, self.digest, id="digest", **common)
        if self.dispatch:
            self.sched.add_job(
                self._run_dispatch, "interval",
                seconds=self.settings.schedules.dispatch_interval_seconds, id="dispatch",
                **common,
            )  # fmt: skip
        self.sched.add_job(
            self._run_tool_poll, "interval",
            seconds=self.settings.schedules.tool_poll_interval_seconds, id="tool-poll", **common,
        )  # fmt: skip
        self.sched.add_job(
            lambda: beat(self.engine, elected), "interval",
            seconds=self.settings.schedules.heartbeat_seconds, id="heartbeat", **common,
        )  # fmt: skip
        self.sched.start()


def run_scheduler(settings: Settings) -> None:
    Scheduler(open_engine(settings), settings).run()
