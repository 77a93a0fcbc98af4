"""Jobs asked for through the API (`POST /jobs/sync`), run by `casebridge worker`.

The API only records the request: a sync can take minutes and must not hold an HTTP request (or
die with it). A worker claims the request like an outbox item: a conditional UPDATE that only
one claimant wins (on PostgreSQL after `FOR UPDATE SKIP LOCKED`, so workers skip rows another
one is taking), a fencing token, and a lease it renews while the job runs. A worker that dies
mid-job leaves the lease to expire and another worker runs the job again (sync, evaluate and
dispatch are all safe to repeat), at most `MAX_ATTEMPTS` times.

At most one request per job waits and at most one runs (partial unique indexes): asking again
while one waits returns the waiting one, so it runs once; asking while one runs queues one more
run, which starts when the running one ends, never beside it.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import structlog
from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from service.clock import utcnow
from service.config import Settings
from service.models import JobRequest

log = structlog.get_logger(__name__)

JobName = Literal["sync", "evaluate", "dispatch"]
JOBS: tuple[str, ...] = get_args(JobName)
HOLDER = f"{socket.gethostname()}:{os.getpid()}"
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Requested:
    id: int
    joined: bool  # True: an earlier request was still waiting; this is that one


def request_job(engine: Engine, job: str, requested_by: str) -> Requested:
    """Record a request for `job`, or return the one already waiting."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}")
    for _ in range(5):  # a waiting request can start between our insert and our look-up
        try:
            with engine.begin() as conn:
                new_id = conn.execute(
                    insert(JobRequest)
                    .values(job=job, state="requested", requested_by=requested_by[:128],
                            requested_at=utcnow(), attempts=0)
                    .returning(JobRequest.id)
                ).scalar_one()  # fmt: skip
            log.info("job.requested", job=job, request=new_id)
            return Requested(int(new_id), False)
        except IntegrityError:
            with engine.connect() as conn:
                waiting = conn.execute(
                    select(JobRequest.id).where(
                        JobRequest.job == job, JobRequest.state == "requested"
                    )
                ).scalar()
            if waiting is not None:
                return Requested(int(waiting), True)
    raise RuntimeError(f"could not record a request for {job}")


@dataclass(frozen=True)
class Claim:
    id: int
    job: str
    token: str
    attempts: int


def claim_next(engine: Engine, holder: str = HOLDER, now: datetime | None = None) -> Claim | None:
    """Take the oldest waiting request, or one whose worker's lease ran out; None if none."""
    now = now or utcnow()
    claimable = or_(
        JobRequest.state == "requested",
        (JobRequest.state == "running") & (JobRequest.lease_until < now),
    )
    with engine.connect() as conn:
        candidates = conn.execute(
            select(JobRequest.id).where(claimable).order_by(JobRequest.id).limit(10)
        ).scalars().all()  # fmt: skip
    for candidate in candidates:
        token = str(uuid.uuid4())
        try:
            with engine.begin() as conn:
                pick = select(JobRequest.id).where(JobRequest.id == candidate, claimable)
                if conn.dialect.name == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                if conn.execute(pick).first() is None:
                    continue  # another worker has it
                row = conn.execute(
                    update(JobRequest)
                    .where(JobRequest.id == candidate, claimable)
                    .values(state="running", holder=holder, claim_token=token,
                            lease_until=now + LEASE, attempts=JobRequest.attempts + 1,
                            started_at=now)
                    .returning(JobRequest.job, JobRequest.attempts)
                ).first()  # fmt: skip
        except IntegrityError:
            continue  # the same job is running on another worker: this one waits its turn
        if row is None:
            continue
        if row.attempts > MAX_ATTEMPTS:
            finish(engine, Claim(candidate, row.job, token, row.attempts), "failed",
                   f"gave up after {MAX_ATTEMPTS} workers stopped during it", None)  # fmt: skip
            continue
        return Claim(candidate, row.job, token, row.attempts)
    return None


def renew(engine: Engine, claim: Claim) -> bool:
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(JobRequest)
                .where(JobRequest.id == claim.id, JobRequest.claim_token == claim.token)
                .values(lease_until=utcnow() + LEASE)
            ).rowcount
        )


def finish(
    engine: Engine, claim: Claim, state: str, outcome: str, result: dict[str, Any] | None
) -> bool:
    """Record the end, if this worker still holds the request (fenced by its token)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(JobRequest)
            .where(JobRequest.id == claim.id, JobRequest.claim_token == claim.token)
            .values(state=state, finished_at=utcnow(), outcome=outcome[:255], result=result,
                    lease_until=None)
        ).rowcount  # fmt: skip
    return bool(done)


# -- what each job does -------------------------------------------------------------------------


def _sync(engine: Engine, settings: Settings) -> tuple[str, str, dict[str, Any]]:
    from service.pipeline import run_sync

    reports = run_sync(engine, settings)
    failed = [r.source for r in reports if r.error]
    refused = [r.source for r in reports if not r.error and r.refused()]
    result = {
        r.source: {"read": r.total("read"), "inserted": r.total("inserted"),
                   "updated": r.total("updated"), "deactivated": r.total("deactivated"),
                   "quarantined": sum(r.quarantined().values()), "failed": bool(r.error),
                   "refused_streams": len(r.refused())}
        for r in reports
    }  # fmt: skip
    if failed:
        return "failed", f"sources failed: {', '.join(failed)} (see GET /sync/status)", result
    if refused:
        return (
            "succeeded",
            f"streams refused in: {', '.join(refused)} (see GET /sync/status)",
            (result),
        )
    return "succeeded", "ok", result


def _evaluate(engine: Engine, settings: Settings) -> tuple[str, str, dict[str, Any]]:
    from service.pipeline import run_evaluate

    r = run_evaluate(engine, settings)
    result = {
        "as_of": r.as_of.isoformat(), "students_evaluated": r.students_evaluated,
        "cases_opened": r.cases_opened, "cases_updated": r.cases_updated,
        "cases_reopened": r.cases_reopened, "cases_closed": r.cases_closed,
        "referrals_created": r.referrals_created, "tasks_enqueued": r.tasks_enqueued,
        "family_messages_enqueued": r.family_messages_enqueued,
        "flagged_by_rule": dict(r.flagged_by_rule),
    }  # fmt: skip
    return "succeeded", "ok", result


def _dispatch(engine: Engine, settings: Settings) -> tuple[str, str, dict[str, Any]]:
    from service.pipeline import run_dispatch

    r = run_dispatch(engine, settings)
    result = {
        "delivered": r.delivered, "retried": r.retried, "dead": r.dead,
        "needs_review": r.needs_review, "superseded": r.superseded,
        "suppressed": dict(r.suppressed), "deferred": dict(r.deferred),
    }  # fmt: skip
    return "succeeded", "ok", result


RUNNERS: dict[str, Callable[[Engine, Settings], tuple[str, str, dict[str, Any]]]] = {
    "sync": _sync,
    "evaluate": _evaluate,
    "dispatch": _dispatch,
}


def run_claimed(engine: Engine, settings: Settings, claim: Claim) -> str:
    """Run a claimed job, renewing its lease meanwhile; returns the state it ended in."""
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(LEASE.total_seconds() / 3):
            if not renew(engine, claim):
                return  # another worker took it over: its finish counts, not ours

    renewer = threading.Thread(target=keep_lease, name=f"job-{claim.id}-lease", daemon=True)
    renewer.start()
    try:
        state, outcome, result = RUNNERS[claim.job](engine, settings)
    except Exception as exc:  # recorded on the request; the worker goes on
        state, outcome, result = "failed", f"failed: {type(exc).__name__}", {}
        log.error("job.failed", job=claim.job, request=claim.id, error=type(exc).__name__)
    finally:
        stop.set()
        renewer.join()
    if not finish(engine, claim, state, outcome, result):
        log.warning("job.claim_lost", job=claim.job, request=claim.id)
    log.info("job.finished", job=claim.job, request=claim.id, state=state)
    return state


def run_requested_jobs(engine: Engine, settings: Settings, limit: int = 10) -> int:
    """Run the waiting requests (the worker calls this between outbox passes); how many ran."""
    ran = 0
    while ran < limit:
        claim = claim_next(engine)
        if claim is None:
            break
        run_claimed(engine, settings, claim)
        ran += 1
    return ran
