"""What `/readyz` checks: the database, its schema, the scheduler's heartbeat, the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from service.clock import utcnow
from service.config import Settings
from service.db import SchemaNotCurrent, check_schema_current
from service.models import OutboxItem, SchedulerHeartbeat
from service.task_view import aware

# A leader beats every `heartbeat_seconds`; this many missed beats means it is gone.
MISSED_BEATS = 3


def readiness(engine: Engine, settings: Settings) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    try:
        check_schema_current(engine, str(engine.url.render_as_string(hide_password=False)))
        checks["database"] = "ok"
    except SchemaNotCurrent as exc:
        checks["database"] = f"not ready: {exc}"
        return False, checks
    ready = True
    try:
        with engine.connect() as conn:
            beat = conn.execute(
                select(SchedulerHeartbeat.holder, SchedulerHeartbeat.beat_at).where(
                    SchedulerHeartbeat.name == "leader"
                )
            ).first()
            oldest = conn.execute(
                select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.status == "pending")
            ).scalar()
            review = conn.execute(
                select(func.count()).where(OutboxItem.status == "needs_review")
            ).scalar_one()
    except SQLAlchemyError as exc:
        return False, {**checks, "database": f"not ready: {type(exc).__name__}"}
    now = utcnow()
    if beat is None:
        checks["scheduler"] = "no scheduler has led yet"
    else:
        age = (now - aware(beat.beat_at)).total_seconds()
        limit = MISSED_BEATS * settings.schedules.heartbeat_seconds
        fresh = age <= limit
        ready = ready and fresh
        checks["scheduler"] = {"leader": beat.holder, "heartbeat_age_seconds": round(age, 1),
                               "fresh": fresh}  # fmt: skip
    overdue = (now - aware(oldest)).total_seconds() if oldest is not None else 0.0
    checks["outbox"] = {
        "oldest_due_seconds": round(max(overdue, 0.0), 1),
        "needs_review": review,
    }
    checks["destinations"] = destination_circuits(engine, now)
    return ready, checks


def destination_circuits(engine: Engine, now: datetime) -> dict[str, Any]:
    """Destinations whose circuit breaker is open, as the workers last recorded it.

    Reported, but not a reason to be unready: readiness decides whether this API process gets
    traffic, and a paused staff tool is outside it. Taking the API out of rotation would stop
    referrals, webhooks and status reports from arriving and would not bring the tool back; the
    outbox keeps the tool's items and sends them when its circuit closes.
    """
    from service.target_health import circuits

    try:
        known = circuits(engine)
    except SQLAlchemyError as exc:
        return {"status": f"unknown: {type(exc).__name__}", "open": []}
    opened = [
        {
            "target": c.target,
            "failures": c.failures,
            "since": c.changed_at.isoformat(),
            "paused_until": c.open_until.isoformat() if c.open_until else None,
            # The pause is over and no delivery has tried it since: the next one is the trial.
            "trial_due": c.trial_due(now),
            "seen_by": c.holder,
        }
        for c in known
        if c.state == "open"
    ]
    return {"status": "degraded" if opened else "ok", "open": opened}
