"""The case plan on the staff task: check-ins while the case is open, a progress line, and a
suggestion to close once the indicators have recovered long enough.

Read at send time like the rest of the task. `due_check_ins` and `close_suggestions` tell the
evaluation (`service/cases.py`) when a case should be re-sent for them, so the task in the tool
does not go stale between reasons.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from service.config import Settings
from service.indicators import ABSENT
from service.models import (
    AttendanceEvent,
    CalendarDay,
    Case,
    CaseEvent,
    Referral,
    StudentIndicators,
)

CHECK_IN = "check_in"
CLOSE_SUGGESTED = "close_suggested"


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def opened_on(settings: Settings, opened_at: Any, evidence: dict[str, Any] | None = None) -> date:
    """The evaluation day the case opened on (its first reason's `as_of`), which is the day the
    indicators at opening describe; the district's date of `opened_at` when unknown."""
    if evidence and evidence.get("as_of"):
        return date.fromisoformat(str(evidence["as_of"]))
    return aware(opened_at).astimezone(ZoneInfo(settings.district.timezone)).date()


def school_days(
    conn: Connection, school_ids: set[str], start: date, end: date
) -> dict[str, list[date]]:
    """Instructional days in (start, end] per school, sorted."""
    out: dict[str, list[date]] = {s: [] for s in school_ids}
    if not school_ids or end <= start:
        return out
    q = (
        select(CalendarDay.school_id, CalendarDay.day)
        .where(CalendarDay.school_id.in_(sorted(school_ids)), CalendarDay.instructional,
               CalendarDay.active, CalendarDay.day > start, CalendarDay.day <= end)
        .order_by(CalendarDay.day)
    )  # fmt: skip
    for school_id, day in conn.execute(q):
        out[school_id].append(day)
    return out


def check_ins_elapsed(settings: Settings, opened: date, today: date, days: list[date]) -> int:
    """How many check-ins have come due by `today` (`days`: the school's instructional days)."""
    every = settings.cases.check_in_every
    if not every or today <= opened:
        return 0
    if settings.cases.check_in_unit == "days":
        return (today - opened).days // every
    return sum(1 for d in days if opened < d <= today) // every


def next_check_in(
    settings: Settings, opened: date, today: date, days: list[date]
) -> tuple[date | None, str]:
    """The next check-in strictly after `today`, and how it was counted."""
    every = settings.cases.check_in_every
    if not every:
        return None, ""
    if settings.cases.check_in_unit == "days":
        n = check_ins_elapsed(settings, opened, today, days) + 1
        return opened + timedelta(days=n * every), f"every {every} days"
    after = [d for d in days if d > opened]
    n = check_ins_elapsed(settings, opened, today, days) + 1
    if len(after) >= n * every:
        return after[n * every - 1], f"every {every} school days"
    # The calendar does not reach that far yet: count weekdays instead.
    day, left = today, n * every - bisect_right(after, today)
    while left > 0:
        day += timedelta(days=1)
        left -= day.weekday() < 5
    return day, f"every {every} school days (weekdays: calendar ends)"


def instructional_days_after(conn: Connection, starts: dict[str, date]) -> dict[str, list[date]]:
    """Each school's instructional days after its start date, sorted: one query for them all
    (a claimed batch of tasks reads its schools' calendars once)."""
    out: dict[str, list[date]] = {s: [] for s in starts}
    if not starts:
        return out
    q = (
        select(CalendarDay.school_id, CalendarDay.day)
        .where(CalendarDay.school_id.in_(sorted(starts)), CalendarDay.instructional,
               CalendarDay.active, CalendarDay.day > min(starts.values()))
        .order_by(CalendarDay.day)
    )  # fmt: skip
    for school_id, day in conn.execute(q):
        if day > starts[school_id]:
            out[school_id].append(day)
    return out


def days_between(days: list[date], start: date, end: date) -> list[date]:
    """The days in (start, end] of a sorted list."""
    return days[bisect_right(days, start) : bisect_right(days, end)]


def _pct(absent: float, enrolled: float) -> str:
    return f"{round(100 * (enrolled - absent) / enrolled)}%"


def progress(
    settings: Settings,
    case: Any,
    evidence: dict[str, Any],
    current: Any,
    calendar: list[date],
    absences: set[date],
) -> dict[str, Any] | None:
    """Attendance since the case opened against attendance at opening, and failures cleared.

    `evidence` is the first referral's (its indicator snapshot), `current` the student's
    indicators now (as_of, course_failures), `calendar` the case school's instructional days
    since opening and `absences` the student's days absent. None when nothing can be said."""
    at_opening = evidence.get("indicators") or {}
    today, opened = current.as_of, opened_on(settings, case.opened_at, evidence)
    parts: list[str] = []
    categories: list[str] = []
    days = days_between(calendar, opened, today) if case.school_id else []
    if days:
        absent = sum(1 for d in days if d in absences)
        text = (f"attended {_pct(absent, len(days))} of school days since the case opened "
                f"(missed {absent} of {len(days)})")  # fmt: skip
        was_absent = float(at_opening.get("absent_days") or 0)
        was_enrolled = float(at_opening.get("enrolled_days") or 0)
        if was_enrolled:
            text += (f" vs {_pct(was_absent, was_enrolled)} at opening "
                     f"(missed {round(was_absent)} of {round(was_enrolled)})")  # fmt: skip
        parts.append(text)
        categories.append("attendance")
    before_failures = at_opening.get("course_failures")
    if before_failures and current.course_failures is not None:
        was, now = round(float(before_failures)), round(float(current.course_failures))
        courses = "course" if was == 1 else "courses"
        parts.append(f"failing {was} {courses} at opening, {now} now ({max(was - now, 0)} cleared)")
        categories.append("grades")
    if not parts:
        return None
    return {"as_of": today.isoformat(), "text": "; ".join(parts), "categories": categories}


def suggestion(settings: Settings, case: Any, today: date) -> str | None:
    after = settings.cases.suggest_close_after_days
    if after is None or case.status != "open" or case.recovered_since is None:
        return None
    held = (today - case.recovered_since).days
    if held < after:
        return None
    return (f"The indicators have recovered since {case.recovered_since.isoformat()} "
            f"({held} days): consider closing the case.")  # fmt: skip


def plan_view(
    conn: Connection, settings: Settings, case: Any, evidence: dict[str, Any]
) -> dict[str, Any]:
    """The plan fields added to the task (only those that say something); `evidence` is the
    first referral's."""
    return plan_views(conn, settings, [(case, evidence)])[case.id]


def plan_views(
    conn: Connection,
    settings: Settings,
    cases: list[tuple[Any, dict[str, Any]]],
    calendar: dict[str, list[date]] | None = None,
) -> dict[int, dict[str, Any]]:
    """`plan_view` for many cases (case row, first referral's evidence) with three queries
    however many there are. `calendar`: the schools' instructional days since the earliest
    opening, when the caller has read them already."""
    if not cases:
        return {}
    student_ids = sorted({case.student_id for case, _ in cases})
    current = {
        row.student_id: row
        for row in conn.execute(
            select(StudentIndicators.student_id, StudentIndicators.as_of,
                   StudentIndicators.course_failures)
            .where(StudentIndicators.student_id.in_(student_ids))
        )
    }  # fmt: skip
    opened = {case.id: opened_on(settings, case.opened_at, evidence) for case, evidence in cases}
    if calendar is None:
        starts: dict[str, date] = {}
        for case, _ in cases:
            if case.school_id:
                starts[case.school_id] = min(opened[case.id], starts.get(case.school_id, date.max))
        calendar = instructional_days_after(conn, starts)
    absences: dict[str, set[date]] = {}
    measured = [opened[case.id] for case, _ in cases if case.student_id in current]
    if measured:
        q = (
            select(AttendanceEvent.student_id, AttendanceEvent.day).distinct()
            .where(AttendanceEvent.student_id.in_(sorted(current)), AttendanceEvent.active,
                   AttendanceEvent.category.in_(ABSENT), AttendanceEvent.day > min(measured))
        )  # fmt: skip
        for student_id, day in conn.execute(q):
            absences.setdefault(student_id, set()).add(day)
    out: dict[int, dict[str, Any]] = {}
    for case, evidence in cases:
        out[case.id] = _plan_fields(
            settings, case, evidence, current.get(case.student_id),
            calendar.get(case.school_id or "", []), absences.get(case.student_id, set()),
        )  # fmt: skip
    return out


def _plan_fields(
    settings: Settings,
    case: Any,
    evidence: dict[str, Any],
    current: Any,
    calendar: list[date],
    absences: set[date],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    line = (
        progress(settings, case, evidence, current, calendar, absences)
        if current is not None
        else None
    )
    if line is not None:
        out["progress"] = line
    today = current.as_of if current is not None else opened_on(settings, case.opened_at, evidence)
    if case.status == "open" and settings.cases.check_in_every:
        opened = opened_on(settings, case.opened_at, evidence)
        horizon = today + timedelta(days=7 * settings.cases.check_in_every + 14)
        days = days_between(calendar, opened, horizon) if case.school_id else []
        due, basis = next_check_in(settings, opened, today, days)
        if due is not None:
            out["next_check_in_due"] = due.isoformat()
            out["check_in_basis"] = basis
    text = suggestion(settings, case, today)
    if text:
        out["suggestion"] = text
    return out


# -- for the evaluation: which open cases need their task re-sent for the plan -------------------


def due_check_ins(
    conn: Connection, settings: Settings, open_cases: dict[int, Any], as_of: date
) -> dict[int, int]:
    """Open cases (id -> opened_at) whose latest check-in came due and was not yet recorded:
    case id -> the check-in's number."""
    if not settings.cases.check_in_every or not open_cases:
        return {}
    ids = list(open_cases)
    schools = dict(conn.execute(select(Case.id, Case.school_id).where(Case.id.in_(ids))).all())
    first: dict[int, dict[str, Any]] = {}
    for cid, evidence in conn.execute(
        select(Referral.case_id, Referral.evidence)
        .where(Referral.case_id.in_(ids))
        .order_by(Referral.id)
    ):
        first.setdefault(cid, evidence or {})
    opened = {cid: opened_on(settings, at, first.get(cid)) for cid, at in open_cases.items()}
    days = school_days(conn, {s for s in schools.values() if s}, min(opened.values()), as_of)
    done: dict[int, int] = dict(
        conn.execute(
            select(CaseEvent.case_id, func.count())
            .where(CaseEvent.case_id.in_(ids), CaseEvent.kind == CHECK_IN)
            .group_by(CaseEvent.case_id)
        ).all()
    )
    due: dict[int, int] = {}
    for cid in ids:
        n = check_ins_elapsed(settings, opened[cid], as_of, days.get(schools.get(cid) or "", []))
        if n > done.get(cid, 0):
            due[cid] = n
    return due


def close_suggestions(
    conn: Connection, settings: Settings, recovered: dict[int, date], as_of: date
) -> list[int]:
    """Open cases (id -> recovered_since) recovered long enough whose task has not yet carried
    the suggestion for this recovery."""
    after = settings.cases.suggest_close_after_days
    if after is None or not recovered:
        return []
    ready = [cid for cid, since in recovered.items() if (as_of - since).days >= after]
    if not ready:
        return []
    told = {
        (cid, (detail or {}).get("recovered_since"))
        for cid, detail in conn.execute(
            select(CaseEvent.case_id, CaseEvent.detail)
            .where(CaseEvent.case_id.in_(ready), CaseEvent.kind == CLOSE_SUGGESTED)
        )
    }  # fmt: skip
    return [cid for cid in ready if (cid, recovered[cid].isoformat()) not in told]
