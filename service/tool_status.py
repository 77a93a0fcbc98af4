"""Status coming back from a staff tool: a task completed, reopened or reassigned there.

A report changes the case the way a person would (close, reopen, reassign), records who did it
and in which tool in `case_events` (`actor`, `via`), and queues the task at the new revision for
every destination so the other tools follow. Reports arrive through the signed endpoint
(`service/tool_webhooks.py`) or from polling a tool that has no webhooks (Google Sheets).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, insert, select, update

from service.clock import utcnow
from service.config import Settings
from service.intents import task_upserts
from service.models import Case, CaseEvent
from service.outbox import enqueue

log = structlog.get_logger(__name__)

Action = Literal["completed", "reopened", "reassigned"]
ACTIONS: tuple[str, ...] = ("completed", "reopened", "reassigned")
Outcome = Literal[
    "closed", "reopened", "reassigned", "unchanged", "unknown_case", "conflict", "unknown_assignee"
]


@dataclass(frozen=True)
class StatusReport:
    """What a person did to our task in a tool."""

    subject: str  # "case-12"
    action: Action
    via: str  # the destination's name
    actor: str | None = None  # the tool's user (an email or a display name)
    assignee: str | None = None  # reassigned: the case manager's email or staff id
    at: datetime | None = None


def case_id_of(subject: str) -> int | None:
    prefix, _, number = subject.partition("-")
    return int(number) if prefix == "case" and number.isdigit() else None


def apply_report(conn: Connection, settings: Settings, report: StatusReport) -> Outcome:
    """Change the case as the report says, in the caller's transaction."""
    case_id = case_id_of(report.subject)
    case = None
    if case_id is not None:
        case = conn.execute(
            select(Case.id, Case.student_id, Case.status, Case.assignee_id, Case.revision)
            .where(Case.id == case_id)
            .with_for_update()
        ).first()
    if case is None:
        return "unknown_case"
    now = utcnow()
    changes: dict[str, Any]
    outcome: Outcome
    detail: dict[str, Any] = {}
    if report.action == "completed":
        if case.status == "closed":
            return "unchanged"
        changes = {"status": "closed", "closed_at": now, "close_reason": "closed_in_tool"}
        outcome = "closed"
        detail["reason"] = "closed_in_tool"
    elif report.action == "reopened":
        if case.status == "open":
            return "unchanged"
        other = conn.execute(
            select(Case.id).where(Case.student_id == case.student_id, Case.status == "open")
        ).first()
        if other is not None:  # one open case per student: the newer case carries on
            return "conflict"
        changes = {"status": "open", "closed_at": None, "close_reason": None,
                   "recovered_since": None, "reopen_count": Case.reopen_count + 1}  # fmt: skip
        outcome = "reopened"
    else:
        wanted = (report.assignee or "").strip().lower()
        manager = next(
            (c for c in settings.caseloads if wanted in (c.email.lower(), c.staff_id.lower())),
            None,
        )
        if manager is None:
            return "unknown_assignee"
        if manager.staff_id == case.assignee_id:
            return "unchanged"
        changes = {"assignee_id": manager.staff_id}
        outcome = "reassigned"
        detail.update({"from": case.assignee_id, "to": manager.staff_id})
    revision = case.revision + 1
    conn.execute(
        update(Case).where(Case.id == case.id).values(revision=revision, updated_at=now, **changes)
    )
    if report.at is not None:
        detail["reported_at"] = report.at.isoformat()
    conn.execute(
        insert(CaseEvent).values(
            case_id=case.id, kind=outcome, at=now, detail=detail, actor=report.actor, via=report.via
        )
    )
    destinations = [d.name for d in settings.destinations]
    enqueue(conn, task_upserts(destinations, case.id, case.student_id, revision))
    log.info("tool_status.applied", case=case.id, outcome=outcome, via=report.via)
    return outcome
