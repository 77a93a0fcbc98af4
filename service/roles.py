"""The long-running roles as things that can be stopped cleanly: the outbox worker loop and the
scheduler, shared by `casebridge worker` and `casebridge all-in-one`.

A stop request (SIGTERM, SIGINT) lets the worker finish the item it is delivering, then gives the
rest of its claimed batch back at once, so another worker need not wait for the lease to run out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import structlog
from sqlalchemy import Engine, update

from jobs.scheduler import Scheduler
from service import logging as cb_logging
from service.config import Settings
from service.delivery import Deliverer
from service.models import OutboxItem
from service.outbox import RELEASE, WORKER, DispatchReport, dispatch

log = structlog.get_logger(__name__)

# Consecutive passes that fail outright (the database is gone, the schema changed under us)
# before the worker gives up and exits, so its supervisor restarts it and someone notices.
MAX_FAILED_PASSES = 5


class _StopRequested(Exception):
    """Raised between two items when a stop was requested: ends the pass."""


def release_claims(engine: Engine) -> int:
    """Give back every item this process still holds. Call only once this process's dispatcher
    has stopped: its fence (claim token) is cleared, so its marks would no longer apply."""
    with engine.begin() as conn:
        return conn.execute(
            update(OutboxItem)
            .where(OutboxItem.claimed_by == WORKER, OutboxItem.claim_token.is_not(None))
            .values(**RELEASE)
        ).rowcount


class WorkerLoop:
    """Deliver due outbox items, pause `interval` seconds, again, until `stop` is set."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        interval: float,
        stop: threading.Event,
        on_pass: Callable[[DispatchReport], None] | None = None,
        on_jobs: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.interval = interval
        self.stop = stop
        self.on_pass = on_pass
        self.on_jobs = on_jobs

    def one_pass(self) -> DispatchReport | None:
        """Every due item, or until a stop is requested (None then: the pass was cut short)."""

        def between_items() -> None:
            if self.stop.is_set():
                raise _StopRequested

        from service.job_requests import run_requested_jobs

        # Jobs asked for through the API (POST /jobs/...) first: each runs on one worker only.
        with cb_logging.run_context("requested_jobs"):
            ran = run_requested_jobs(self.engine, self.settings)
        if ran:
            log.info("worker.ran_requested_jobs", jobs=ran)
            if self.on_jobs:
                self.on_jobs(ran)
        from service.referrals import place_received

        with cb_logging.run_context("referrals"):
            place_received(self.engine, self.settings)  # their tasks go out in this pass
        try:
            with cb_logging.run_context("dispatch"):  # each pass is one run in the logs
                report = dispatch(
                    self.engine, Deliverer(self.engine, self.settings), self.settings.outbox,
                    between_items,
                )  # fmt: skip
        except _StopRequested:
            released = release_claims(self.engine)
            log.info("worker.stopped_mid_batch", released=released)
            return None
        if self.on_pass:
            self.on_pass(report)
        return report

    def run(self, once: bool = False) -> None:
        failed = 0
        while not self.stop.is_set():
            try:
                self.one_pass()
                failed = 0
            except Exception as exc:  # a whole pass failed: the database, not an item
                failed += 1
                log.error("worker.pass_failed", error=type(exc).__name__, in_a_row=failed)
                if failed >= MAX_FAILED_PASSES:
                    raise
            if once or self.stop.wait(self.interval):
                return


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (docker stop, systemd) and SIGINT (Ctrl-C) ask for a clean stop. Main thread only."""

    def handler(signum: int, _frame: object) -> None:
        log.info("stop.requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_scheduler(scheduler: Scheduler, thread: threading.Thread, deadline: float) -> None:
    """Stop a scheduler running `scheduler.run()` in `thread`, by `deadline` (monotonic).

    Its APScheduler may not have started yet when the stop comes, so shutting it down is
    retried until the thread ends. A job already running (a nightly sync) is not interrupted;
    the caller waits for it, or leaves it: a sync resumes from its last committed batch."""
    scheduler.stop.set()
    while thread.is_alive() and time.monotonic() < deadline:
        running = scheduler.sched
        if running is not None and running.running:
            try:
                running.shutdown(wait=False)
            except Exception as exc:  # it stopped between the check and the call
                log.debug("scheduler.shutdown_race", error=type(exc).__name__)
        thread.join(0.1)


def run_scheduler_role(engine: Engine, settings: Settings, shutdown_timeout: float = 20.0) -> bool:
    """`casebridge scheduler` until SIGTERM or SIGINT; False when the scheduler failed.

    The scheduler runs in a thread so the main thread is free to take the signal (a process
    that is PID 1 in a container ignores SIGTERM unless it handles it)."""
    stop = threading.Event()
    stop_on_signals(stop)
    scheduler = Scheduler(engine, settings)
    failed: list[BaseException] = []

    def lead_or_stand_by() -> None:
        try:
            scheduler.run()
        except BaseException as exc:
            failed.append(exc)
            log.exception("scheduler.failed", error=type(exc).__name__)
        finally:
            stop.set()

    thread = threading.Thread(target=lead_or_stand_by, name="casebridge-scheduler")
    thread.start()
    while not stop.wait(0.5):
        pass
    deadline = time.monotonic() + shutdown_timeout
    stop_scheduler(scheduler, thread, deadline)
    exit_unless_stopped_by(deadline, "casebridge scheduler")
    return not failed


def exit_unless_stopped_by(deadline: float, what: str) -> None:
    """Wait until `deadline` for this process's other non-daemon threads (requests in flight,
    a scheduled job still running); exit 1 at once if some are still going then, since the
    interpreter would otherwise wait for them however long they take."""
    current, main = threading.current_thread(), threading.main_thread()
    others = [t for t in threading.enumerate() if t not in (current, main) and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = sorted({t.name for t in others if t.is_alive()})
    if lingering:
        log.error("stop.timed_out", still_running=lingering)
        print(f"{what}: still running at the stop deadline: {', '.join(lingering)}",
              file=sys.stderr)  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
