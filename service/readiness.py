"""What `/readyz` checks: the database, its schema, the scheduler's heartbeat, the outbox."""

from __future__ import annotations

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
    return ready, checks
