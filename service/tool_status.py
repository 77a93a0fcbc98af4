"""Status coming back from a staff tool: a task completed, reopened or reassigned there.

A report changes the case the way a person would (close, reopen, reassign), records who did it
and in which tool in `case_events` (`actor`, `via`), and queues the task at the new revision for
every destination so the other tools follow. Reports arrive through the signed endpoint
(`service/tool_webhooks.py`) or from polling a tool that has no webhooks (Google Sheets).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, insert, select, update

from connectors.status import ACTIONS, StatusReport
from service.clock import utcnow
from service.config import Settings
from service.errors import PermanentError, TransientError
from service.intents import task_upserts
from service.models import Case, CaseEvent, DeliveryLink
from service.outbox import enqueue

__all__ = ["ACTIONS", "Outcome", "StatusReport", "apply_report", "case_id_of", "poll_tools"]

log = structlog.get_logger(__name__)

Outcome = Literal[
    "closed", "reopened", "reassigned", "unchanged", "unknown_case", "conflict", "unknown_assignee"
]


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
    from service.referrals import update_referrer_statuses  # referrers hear close and reopen

    update_referrer_statuses(conn, settings, [case.id])
    log.info("tool_status.applied", case_id=case.id, outcome=outcome, via=report.via)
    return outcome


def poll_tools(
    engine: Engine, settings: Settings, destinations: Mapping[str, Any] | None = None
) -> Counter[str]:
    """Ask every destination that can be polled (`poll_status`) what people changed there.

    Each report is applied in its own transaction; a tool that fails to answer is logged and
    counted, and the others are still polled.
    """
    if destinations is None:
        from service.delivery import build_targets  # the delivery core builds connectors

        destinations = build_targets(settings)[0]
    outcomes: Counter[str] = Counter()
    for name, destination in destinations.items():
        poll = getattr(destination, "poll_status", None)
        if poll is None:
            continue
        try:
            reports = poll()
        except (TransientError, PermanentError) as exc:
            log.warning("tool_status.poll_failed", destination=name, error=type(exc).__name__)
            outcomes["poll_failed"] += 1
            continue
        for report in reports:
            with engine.begin() as conn:
                if _update_pending(conn, name, report.subject):
                    # The tool shows an older revision than the case: what it says may be ours,
                    # not a person's. The next delivery writes the current state back.
                    outcomes["waiting_for_update"] += 1
                    continue
                outcome = apply_report(conn, settings, report)
            if outcome != "unchanged":  # tools report every task; only changes are news
                outcomes[outcome] += 1
    return outcomes


def _update_pending(conn: Connection, target: str, subject: str) -> bool:
    case_id = case_id_of(subject)
    revision = conn.execute(select(Case.revision).where(Case.id == case_id)).scalar()
    delivered = conn.execute(
        select(DeliveryLink.last_revision).where(
            DeliveryLink.target == target, DeliveryLink.subject == subject
        )
    ).scalar()
    return revision is not None and delivered is not None and delivered < revision
