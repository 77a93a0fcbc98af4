"""The staff task as a school official sees it, read from the case as it is at send time."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import rule_engine
from sqlalchemy import Connection, select

from service.case_plan import instructional_days_after, opened_on, plan_views
from service.config import Settings
from service.indicator_names import INDICATORS
from service.intents import case_subject
from service.models import Case, Referral, School, Student

REASON_FIELDS = ("rule_id", "rule_version", "reason", "severity", "evidence", "origin",
                 "rule_expression", "resource_categories")  # fmt: skip
# What each kind of evidence discloses, for the 34 CFR 99.32 record.
EVIDENCE_CATEGORIES = (
    ("absent", "attendance"),
    ("absence", "attendance"),
    ("attendance", "attendance"),
    ("enrolled", "attendance"),
    ("failures", "grades"),
    ("incidents", "discipline"),
    ("suspensions", "discipline"),
)
# Indicators that are read together as one sentence about attendance.
ABSENCE_GROUP = frozenset({"chronically_absent", "approaching_chronic_absence", "absence_rate",
                           "attendance_rate", "absent_days", "enrolled_days"})  # fmt: skip


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
    return school_names(conn, [school_id]).get(school_id)


def school_names(conn: Connection, school_ids: Iterable[str | None]) -> dict[str, str]:
    ids = sorted({s for s in school_ids if s})
    if not ids:
        return {}
    return dict(
        conn.execute(select(School.school_id, School.name).where(School.school_id.in_(ids))).all()
    )


def case_reasons(conn: Connection, case_id: int) -> list[dict[str, Any]]:
    return case_reasons_many(conn, [case_id]).get(case_id, [])


def case_reasons_many(conn: Connection, case_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each case's referrals, oldest first."""
    q = (
        select(Referral.case_id, *(getattr(Referral, f) for f in REASON_FIELDS),
               Referral.created_at)
        .where(Referral.case_id.in_(sorted(set(case_ids))))
        .order_by(Referral.id)
    )  # fmt: skip
    out: dict[int, list[dict[str, Any]]] = {}
    for row in conn.execute(q).mappings():
        reason = dict(row)
        reason["created_at"] = iso(reason["created_at"])
        out.setdefault(reason.pop("case_id"), []).append(reason)
    return out


def _count(value: Any) -> int:
    return round(float(value or 0))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def used_indicators(expression: str | None) -> list[str]:
    """The indicator names a rule's expression reads, in vocabulary order."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression or ""))
    return [name for name in INDICATORS if name in words]


def evidence_lines(settings: Settings, used: list[str], values: dict[str, Any]) -> list[str]:
    """What a counselor reads: "missed 13 of 69 school days (19%)", not `absence_rate: 0.188`."""
    window = settings.indicators.discipline_window_days
    lines: list[str] = []
    if ABSENCE_GROUP & set(used):
        absent, enrolled = _count(values.get("absent_days")), _count(values.get("enrolled_days"))
        rate = f" ({round(100 * absent / enrolled)}%)" if enrolled else ""
        lines.append(f"missed {absent} of {enrolled} school days{rate}")
    if {"unexcused_absent_days", "unexcused_absence_rate"} & set(used):
        n, enrolled = (
            _count(values.get("unexcused_absent_days")),
            _count(values.get("enrolled_days")),
        )
        rate = f" ({round(100 * n / enrolled)}%)" if enrolled else ""
        lines.append(f"{_plural(n, 'unexcused absence')} in {enrolled} school days{rate}")
    texts = {
        "excused_absent_days": lambda n: f"{_plural(n, 'day')} with an excused absence",
        "suspension_absent_days": lambda n: f"{_plural(n, 'day')} absent while suspended",
        "course_failures": lambda n: f"failing {_plural(n, 'course')} this grading period",
        "core_course_failures": lambda n: (
            f"failing {_plural(n, 'core course')} "
            f"({', '.join(_subject_names(settings))}) this grading period"
        ),
        "discipline_incidents": lambda n: (
            f"{_plural(n, 'discipline incident')} in the last {window} days"
        ),
        "suspensions": lambda n: (
            f"{_plural(n, 'out-of-school suspension or expulsion')} in the last {window} days"
        ),
        "state_reportable_incidents": lambda n: (
            f"{_plural(n, 'state-reportable incident')} in the last {window} days"
        ),
    }
    for name in used:
        if name in texts:
            lines.append(texts[name](_count(values.get(name))))
    return lines


def _shown(name: str, value: Any) -> Any:
    """A yes/no indicator as a boolean, a count as an integer, a rate rounded."""
    if INDICATORS[name][0] == rule_engine.DataType.BOOLEAN:
        return bool(value)
    if isinstance(value, float):
        return round(value) if value.is_integer() else round(value, 3)
    return value


def _reason_view(settings: Settings, raw: dict[str, Any]) -> dict[str, Any]:
    """One reason with only the evidence its rule used, in human units."""
    evidence = raw.get("evidence") or {}
    values = evidence.get("indicators") or {}
    used = used_indicators(raw.get("rule_expression"))
    if ABSENCE_GROUP & set(used):  # the sentence needs both counts
        used = [*used, *(n for n in ("absent_days", "enrolled_days") if n not in used)]
    shown = {n: _shown(n, values[n]) for n in used if n in values and n != "grade_level"}
    view = {
        "rule_id": raw.get("rule_id"),
        "rule_version": raw.get("rule_version"),
        "reason": raw.get("reason"),
        "severity": raw.get("severity"),
        "origin": raw.get("origin"),
        "since": raw.get("created_at"),
        "evidence": {"as_of": evidence.get("as_of"), "indicators": shown} if shown else {},
        "evidence_summary": [{"text": t} for t in evidence_lines(settings, used, values)],
    }
    if raw.get("origin") == "person":
        about = evidence.get("referral") or {}
        if about:  # who referred, why and how urgently, in the task as in the API
            view["referral"] = about
            view["evidence_summary"] = [{"text": t} for t in referral_lines(about)]
        if evidence.get("note"):
            view["note"] = evidence["note"]
    return view


ROLE_LABELS = {"parent_guardian": "parent/guardian", "community_partner": "community partner"}


def referral_lines(about: dict[str, Any]) -> list[str]:
    """A person's referral for a counselor: who, their relationship, when, what, how urgent,
    and whether the family may be contacted about it."""
    referrer = about.get("referrer") or {}
    role = str(referrer.get("role") or "")
    who = f"referred by {referrer.get('name') or 'someone'} ({ROLE_LABELS.get(role, role)}"
    if referrer.get("relationship"):
        who += f"; {referrer['relationship']}"
    lines = [f"{who}) on {about.get('received_on')}"]
    concerns = [str(c).replace("_", " ") for c in about.get("concerns") or []]
    if concerns:
        lines.append("concerns: " + ", ".join(concerns))
    lines.append(f"urgency: {about.get('urgency')}")
    if about.get("family_contact_ok") is False:
        lines.append("the referrer did not agree to contacting the family")
    return lines


def suggested_resources(settings: Settings, reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configured resource in a reason's categories, once, with the reasons it is for."""
    out: dict[str, dict[str, Any]] = {}
    for reason in reasons:
        label = str(reason.get("reason") or "").replace("_", " ")
        # A person's referral suggests resources for its concerns even when the family is not
        # told about them (`resource_categories` are what the family hears).
        staff_only = (reason.get("evidence") or {}).get("resource_categories") or []
        for category in dict.fromkeys([*(reason.get("resource_categories") or []), *staff_only]):
            for r in settings.resources:
                if r.category != category:
                    continue
                entry = out.setdefault(r.id, {
                    "id": r.id, "name": r.name, "category": r.category, "phone": r.phone or None,
                    "url": r.url or None, "description": r.description.get("en"), "for": [],
                })  # fmt: skip
                if label not in entry["for"]:
                    entry["for"].append(label)
    for entry in out.values():
        entry["why"] = ", ".join(entry["for"])
    return list(out.values())


def school_days_after(
    conn: Connection, school_id: str | None, start: date, count: int
) -> date | None:
    """The `count`-th instructional day after `start` in the school's calendar (None: unknown)."""
    if not school_id:
        return None
    days = instructional_days_after(conn, {school_id: start})[school_id]
    return nth_day_after(days, start, count)


def nth_day_after(days: list[date], start: date, count: int) -> date | None:
    """The `count`-th of the sorted `days` after `start` (None: the calendar does not reach)."""
    after = bisect_right(days, start)
    return days[after + count - 1] if len(days) >= after + count else None


def weekdays_after(start: date, count: int) -> date:
    day = start
    while count:
        day += timedelta(days=1)
        count -= day.weekday() < 5
    return day


def _subject_names(settings: Settings) -> list[str]:
    """Each configured core subject by its first name (an entry may list names and codes)."""
    return [s if isinstance(s, str) else s[0] for s in settings.indicators.core_subjects if s]


def build_task(conn: Connection, settings: Settings, case_id: int) -> dict[str, Any] | None:
    """What a school official needs to act on the case, with the evidence for each reason."""
    return build_tasks(conn, settings, [case_id]).get(case_id)


def build_tasks(
    conn: Connection, settings: Settings, case_ids: list[int]
) -> dict[int, dict[str, Any]]:
    """`build_task` for many cases with one query per table, however many cases (a claimed
    batch of task deliveries is read at once). A case that no longer exists is left out."""
    ids = sorted(set(case_ids))
    if not ids:
        return {}
    cases = {c.id: c for c in conn.execute(select(Case.__table__).where(Case.id.in_(ids)))}
    students = student_facts(conn, sorted({c.student_id for c in cases.values()}))
    zone = ZoneInfo(settings.district.timezone)
    reasons = case_reasons_many(conn, list(cases))
    opened = {cid: aware(c.opened_at).astimezone(zone).date() for cid, c in cases.items()}
    school_of = {
        cid: students.get(c.student_id, {}).get("school_id") or c.school_id or ""
        for cid, c in cases.items()
    }
    schools = {
        row.school_id: row
        for row in conn.execute(
            select(School.school_id, School.name, School.identifier)
            .where(School.school_id.in_(sorted(set(school_of.values()))))
        )
    }  # fmt: skip
    # One calendar read for the first meeting (the student's school, from the opening day) and
    # the case plan (the case's school, from the day its first reason was evaluated).
    evidence = {cid: (reasons[cid][0].get("evidence") or {}) if reasons.get(cid) else {}
                for cid in cases}  # fmt: skip
    starts: dict[str, date] = {}
    for cid, case in cases.items():
        first_meeting = (school_of[cid], opened[cid])
        plan = (case.school_id, opened_on(settings, case.opened_at, evidence[cid]))
        for school, day in (first_meeting, plan):
            if school:
                starts[school] = min(day, starts.get(school, date.max))
    calendar = instructional_days_after(conn, starts)
    plans = plan_views(conn, settings, [(c, evidence[cid]) for cid, c in cases.items()], calendar)
    return {
        cid: _task(settings, case, students.get(case.student_id, {}), school_of[cid],
                   schools.get(school_of[cid]), reasons.get(cid, []), opened[cid],
                   calendar.get(school_of[cid], []), plans[cid])
        for cid, case in cases.items()
    }  # fmt: skip


def _task(
    settings: Settings,
    case: Any,
    student: dict[str, Any],
    school_id: str,
    school_row: Any,
    raw_reasons: list[dict[str, Any]],
    opened: date,
    calendar: list[date],
    plan: dict[str, Any],
) -> dict[str, Any]:
    school = (school_row.name if school_row else None) or school_id
    manager = next((c for c in settings.caseloads if c.staff_id == case.assignee_id), None)
    name = f"{student.get('first_name', '')} {student.get('last_name', '')}".strip()
    days = settings.cases.first_meeting_school_days
    due = nth_day_after(calendar, opened, days) if school_id else None
    task = {
        "task_id": case_subject(case.id),
        "case_id": case.id,
        "revision": case.revision,
        "status": case.status,
        "title": f"Support case: {name} (grade {student.get('grade_level') or '?'}, {school})",
        "severity": case.severity,
        "opened_on": opened.isoformat(),
        "student": {
            "student_id": case.student_id,
            "local_id": student.get("local_id"),
            "name": name,
            "grade_level": student.get("grade_level"),
            "school": school,
            "school_id": school_id or None,
            "school_number": school_row.identifier if school_row else None,
        },
        "assignee": (
            {"staff_id": manager.staff_id, "name": manager.name, "email": manager.email}
            if manager
            else None
        ),
        "reasons": [_reason_view(settings, r) for r in raw_reasons],
        "resources": suggested_resources(settings, raw_reasons),
        "first_meeting_due": (due or weekdays_after(opened, days)).isoformat(),
        "first_meeting_due_basis": (
            f"{days} school days after opening" + ("" if due else " (weekdays: no calendar)")
        ),
    }
    if settings.cases.link_template:
        task["case_url"] = settings.cases.link_template.format(case_id=case.id)
    if case.status == "closed":
        task["close_reason"] = case.close_reason
    # The case plan: progress since opening, the next check-in, a suggestion to close.
    task.update(plan)
    return task


def disclosed_categories(task: dict[str, Any]) -> list[str]:
    """Which kinds of education record the task carries, read from the payload itself."""
    categories = ["identity", "enrollment", "case"]
    shown = [n for r in task.get("reasons") or [] for n in (r.get("evidence") or {})
             .get("indicators", {})]  # fmt: skip
    for word, category in EVIDENCE_CATEGORIES:
        if any(word in name for name in shown) and category not in categories:
            categories.append(category)
    for category in (task.get("progress") or {}).get("categories") or []:
        if category not in categories:
            categories.append(category)
    if any(r.get("referral") for r in task.get("reasons") or []):
        categories.append("referral")  # who referred, the concerns, the urgency
    if any(r.get("note") for r in task.get("reasons") or []):
        categories.append("referral_note")
    if task.get("resources"):
        categories.append("support_offered")
    return categories
