"""The staff task as a school official sees it, read from the case as it is at send time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from service.config import Settings
from service.intents import case_subject
from service.models import Case, Referral, School, Student

REASON_FIELDS = ("rule_id", "rule_version", "reason", "severity", "evidence", "origin",
                 "rule_expression")  # fmt: skip
# What each kind of evidence discloses, for the 34 CFR 99.32 record.
EVIDENCE_CATEGORIES = (
    ("absent", "attendance"),
    ("failures", "grades"),
    ("incidents", "discipline"),
    ("suspensions", "discipline"),
)


def iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 whether the database handed back an aware or a naive (SQLite) datetime."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def student_facts(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 5000):
        q = select(
            Student.student_id, Student.local_id, Student.first_name, Student.last_name,
            Student.grade_level, Student.school_id,
        ).where(Student.student_id.in_(ids[i : i + 5000]))  # fmt: skip
        for row in conn.execute(q).mappings():
            out[row["student_id"]] = dict(row)
    return out


def school_name(conn: Connection, school_id: str | None) -> str | None:
    if not school_id:
        return None
    return conn.execute(select(School.name).where(School.school_id == school_id)).scalar()


def case_reasons(conn: Connection, case_id: int) -> list[dict[str, Any]]:
    q = (
        select(*(getattr(Referral, f) for f in REASON_FIELDS), Referral.created_at)
        .where(Referral.case_id == case_id)
        .order_by(Referral.id)
    )
    out = []
    for row in conn.execute(q).mappings():
        reason = dict(row)
        reason["created_at"] = iso(reason["created_at"])
        out.append(reason)
    return out


def build_task(conn: Connection, settings: Settings, case_id: int) -> dict[str, Any] | None:
    """What a school official needs to act on the case, with the evidence for each reason."""
    case = conn.execute(select(Case.__table__).where(Case.id == case_id)).first()
    if case is None:
        return None
    student = student_facts(conn, [case.student_id]).get(case.student_id, {})
    school_id = student.get("school_id") or case.school_id or ""
    school = school_name(conn, school_id) or school_id
    manager = next((c for c in settings.caseloads if c.staff_id == case.assignee_id), None)
    name = f"{student.get('first_name', '')} {student.get('last_name', '')}".strip()
    return {
        "task_id": case_subject(case.id),
        "case_id": case.id,
        "revision": case.revision,
        "status": case.status,
        "title": f"Support case: {name} (grade {student.get('grade_level') or '?'}, {school})",
        "severity": case.severity,
        "student": {
            "student_id": case.student_id,
            "local_id": student.get("local_id"),
            "name": name,
            "grade_level": student.get("grade_level"),
            "school": school,
        },
        "assignee": (
            {"staff_id": manager.staff_id, "name": manager.name, "email": manager.email}
            if manager
            else None
        ),
        "reasons": case_reasons(conn, case.id),
        "first_meeting_due": (aware(case.opened_at) + timedelta(days=7)).date().isoformat(),
    }


def disclosed_categories(task: dict[str, Any]) -> list[str]:
    """Which kinds of education record the task carries."""
    categories = ["identity", "enrollment", "case"]
    text = repr([r.get("evidence") for r in task.get("reasons") or []])
    for word, category in EVIDENCE_CATEGORIES:
        if word in text and category not in categories:
            categories.append(category)
    return categories
