"""Evaluation: indicators -> rules -> referrals -> cases -> outbox, in one transaction.

One open case per student (the database enforces it). A new reason joins the open case. A case
whose reasons stopped firing closes after `cases.recovery_days`; a student who relapses within
`cases.cooldown_days` of a close gets the same case back instead of a new one, so a student
hovering at a threshold does not flap. Each change writes the staff task (and, for new resources,
the family notice) to the outbox in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, bindparam, select, text, update

from service.bulk import insert_many, table
from service.clock import utcnow
from service.config import CaseloadConfig, Settings
from service.indicator_names import INDICATORS
from service.indicators import (
    IndicatorWindow,
    compute_indicators,
    core_subject_warnings,
    unknown_attendance,
)
from service.models import Case, CaseEvent, Referral, School, Student
from service.outbox import enqueue
from service.outreach import pick_resources, reachable_contacts, render_notice
from service.rules import CompiledRule, compile_rules, unknown_counts

log = structlog.get_logger(__name__)

SEVERITY_ORDER = {"low": 0, "medium": 1, "high": 2}
INDICATOR_COLUMNS = list(INDICATORS)


@dataclass
class EvaluationReport:
    as_of: date
    students_evaluated: int = 0
    flagged_by_rule: Counter[str] = field(default_factory=Counter)
    cases_opened: int = 0
    cases_updated: int = 0
    cases_reopened: int = 0
    cases_closed: int = 0
    cases_recovering: int = 0
    referrals_created: int = 0
    tasks_enqueued: int = 0
    family_messages_enqueued: int = 0
    unassigned: int = 0
    no_reachable_family: int = 0
    grading_period: str | None = None
    # Data-trust findings (service/indicators.py, service/rules.py): students whose attendance
    # is unknown by (school, why), students each rule could not judge, configuration warnings.
    unknown_attendance: dict[tuple[str, str], int] = field(default_factory=dict)
    unknown_by_rule: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Fired:
    rule: CompiledRule
    values: dict[str, Any]


@dataclass
class OpenCase:
    id: int
    student_id: str
    revision: int
    severity: str
    assignee_id: str | None
    recovered_since: date | None
    opened_at: datetime
    rules: set[str]
    categories: set[str]
    reopened: bool = False


def fire_rules(conn: Connection, rules: list[CompiledRule]) -> dict[str, list[Fired]]:
    """Every (student, rule) that fires; SQL rules run set-based, others via rule-engine."""
    fired: dict[str, list[Fired]] = {}
    sql_rules = [(i, r) for i, r in enumerate(rules) if r.sql]
    py_rules = [r for r in rules if not r.sql]
    cols = ", ".join(f"si.{c}" for c in INDICATOR_COLUMNS)
    if sql_rules:
        flags = ", ".join(f"CASE WHEN {r.sql} THEN 1 ELSE 0 END AS r{i}" for i, r in sql_rules)
        where = " OR ".join(f"({r.sql})" for _, r in sql_rules)
        q = f"SELECT si.student_id, {cols}, {flags} FROM student_indicators si WHERE {where}"
        for row in conn.execute(text(q)).mappings():
            values = {c: _plain(row[c]) for c in INDICATOR_COLUMNS}
            for i, r in sql_rules:
                if row[f"r{i}"]:
                    fired.setdefault(row["student_id"], []).append(Fired(r, values))
    if py_rules:
        q = f"SELECT si.student_id, {cols} FROM student_indicators si"
        for row in conn.execute(text(q)).mappings():
            values = {c: _plain(row[c]) for c in INDICATOR_COLUMNS}
            for r in py_rules:
                if r.matches(values):
                    fired.setdefault(row["student_id"], []).append(Fired(r, values))
    return fired


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def assign(
    caseloads: list[CaseloadConfig],
    load: Counter[str],
    school_keys: set[str],
    grade: str | None,
) -> CaseloadConfig | None:
    """The least-loaded case manager covering the student's school (and grade, if they say).

    `school_keys` holds the school's sourcedId and its number: districts write either.
    """
    candidates = [
        c
        for c in caseloads
        if school_keys & set(c.schools) and (not c.grades or (grade or "") in c.grades)
    ]
    if not candidates:
        return None
    chosen = min(candidates, key=lambda c: (load[c.staff_id], c.staff_id))
    load[chosen.staff_id] += 1
    return chosen


def evaluate(engine: Engine, settings: Settings, as_of: date | None = None) -> EvaluationReport:
    day = as_of or settings.as_of or date.today()
    rules = compile_rules(settings.rules)
    with engine.begin() as conn:
        window = compute_indicators(conn, settings.indicators, day)
        report = EvaluationReport(day, grading_period=window.grading_period_id)
        report.students_evaluated = conn.execute(
            text("SELECT COUNT(*) FROM student_indicators")
        ).scalar_one()
        report.unknown_attendance = unknown_attendance(conn)
        report.unknown_by_rule = unknown_counts(conn, rules)
        report.warnings = core_subject_warnings(conn, settings.indicators)
        fired = fire_rules(conn, rules)
        for hits in fired.values():
            for hit in hits:
                report.flagged_by_rule[hit.rule.config.id] += 1
        _apply(conn, settings, window, fired, report)
    log.info(
        "evaluate.finished",
        students=report.students_evaluated,
        opened=report.cases_opened,
        updated=report.cases_updated,
        closed=report.cases_closed,
    )
    return report


def _load_open_cases(conn: Connection) -> dict[str, OpenCase]:
    cases: dict[str, OpenCase] = {}
    q = select(
        Case.id, Case.student_id, Case.revision, Case.severity, Case.assignee_id,
        Case.recovered_since, Case.opened_at,
    ).where(Case.status == "open")  # fmt: skip
    for cid, sid, rev, sev, assignee, rec, opened in conn.execute(q):
        cases[sid] = OpenCase(cid, sid, rev, sev, assignee, rec, opened, set(), set())
    by_id = {c.id: c for c in cases.values()}
    q2 = (
        select(Referral.case_id, Referral.rule_id, Referral.resource_categories)
        .join(Case, Case.id == Referral.case_id)
        .where(Case.status == "open")
    )
    for case_id, rule_id, categories in conn.execute(q2):
        if rule_id:
            by_id[case_id].rules.add(rule_id)
        by_id[case_id].categories.update(categories or [])
    return cases


def _apply(
    conn: Connection,
    settings: Settings,
    window: IndicatorWindow,
    fired: dict[str, list[Fired]],
    report: EvaluationReport,
) -> None:
    now = utcnow()
    as_of = window.as_of
    open_cases = _load_open_cases(conn)
    load: Counter[str] = Counter(c.assignee_id for c in open_cases.values() if c.assignee_id)

    # Students who relapse soon after a close get that case back.
    since = now - timedelta(days=settings.cases.cooldown_days)
    recent: dict[str, int] = {}
    candidates = [s for s in fired if s not in open_cases]
    for i in range(0, len(candidates), 5000):
        q = (
            select(Case.student_id, Case.id)
            .where(
                Case.status == "closed",
                Case.closed_at >= since,
                Case.student_id.in_(candidates[i : i + 5000]),
            )
            .order_by(Case.closed_at)
        )
        recent.update({sid: cid for sid, cid in conn.execute(q)})
    if recent:
        reopened = _reopen(conn, recent, now)
        for sid, case in reopened.items():
            open_cases[sid] = case
            report.cases_reopened += 1

    # New cases for the rest, assigned least-loaded first.
    students = _student_facts(conn, list(fired))
    school_numbers = {
        sid: ident for sid, ident in conn.execute(select(School.school_id, School.identifier))
    }
    new_rows = []
    for sid in fired:
        if sid in open_cases:
            continue
        facts = students.get(sid, {})
        school = facts.get("school_id") or ""
        keys = {school, school_numbers.get(school) or school}
        manager = assign(settings.caseloads, load, keys, facts.get("grade_level"))
        if manager is None:
            report.unassigned += 1
        new_rows.append(
            {
                "student_id": sid,
                "school_id": facts.get("school_id"),
                "status": "open",
                "severity": "low",
                "assignee_id": manager.staff_id if manager else None,
                "revision": 0,
                "opened_at": now,
                "updated_at": now,
                "reopen_count": 0,
            }
        )
    if new_rows:
        conn.execute(Case.__table__.insert(), new_rows)  # type: ignore[attr-defined]
        created = {r["student_id"] for r in new_rows}
        for sid, case in _load_open_cases(conn).items():
            if sid in created:
                open_cases[sid] = case
        report.cases_opened += len(new_rows)

    referrals: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    changed: dict[str, set[str]] = {}  # student -> categories new to the case this run
    touched: list[dict[str, Any]] = []
    for sid, hits in fired.items():
        case = open_cases[sid]
        new_categories: set[str] = set()
        for hit in hits:
            rule = hit.rule.config
            if rule.id in case.rules:
                touched.append({"c": case.id, "r": rule.id, "d": as_of})
                continue
            case.rules.add(rule.id)
            referrals.append(
                {
                    "case_id": case.id,
                    "student_id": sid,
                    "origin": "rule",
                    "rule_id": rule.id,
                    "rule_version": rule.version,
                    "rule_expression": rule.when,
                    "reason": rule.reason,
                    "severity": rule.severity,
                    "resource_categories": list(rule.resources),
                    "evidence": {"as_of": as_of.isoformat(), "indicators": hit.values},
                    "created_at": now,
                    "last_fired_on": as_of,
                }
            )
            events.append(
                {"case_id": case.id, "kind": "reason_added", "at": now,
                 "detail": {"rule_id": rule.id, "reason": rule.reason}}
            )  # fmt: skip
            if SEVERITY_ORDER[rule.severity] > SEVERITY_ORDER.get(case.severity, 0):
                case.severity = rule.severity
            new_categories.update(c for c in rule.resources if c not in case.categories)
            case.categories.update(rule.resources)
            changed.setdefault(sid, set())
        if sid in changed:
            changed[sid] |= new_categories
        if case.recovered_since is not None:
            case.recovered_since = None
            changed.setdefault(sid, set())
            events.append({"case_id": case.id, "kind": "relapsed", "at": now, "detail": {}})
        if case.reopened:
            changed.setdefault(sid, set())
    if referrals:
        insert_many(conn, table("referrals"), referrals)
        report.referrals_created += len(referrals)
    if touched:
        conn.execute(
            text("UPDATE referrals SET last_fired_on = :d WHERE case_id = :c AND rule_id = :r"),
            touched,
        )

    # Cases whose reasons stopped firing: note the recovery, close after recovery_days.
    closing: list[OpenCase] = []
    recovering: list[dict[str, Any]] = []
    for sid, case in open_cases.items():
        if sid in fired:
            continue
        if case.recovered_since is None:
            case.recovered_since = as_of
            report.cases_recovering += 1
            recovering.append({"b_id": case.id})
            events.append(
                {"case_id": case.id, "kind": "indicators_recovered", "at": now, "detail": {}}
            )
        elif (as_of - case.recovered_since).days >= settings.cases.recovery_days:
            closing.append(case)
    if recovering:
        conn.execute(
            update(Case)
            .where(Case.id == bindparam("b_id"))
            .values(recovered_since=as_of, updated_at=now),
            recovering,
        )

    tasks: list[dict[str, Any]] = []
    facts_all = {**students, **_student_facts(conn, [c.student_id for c in closing])}
    school_names = _school_names(conn)
    # A new case's reasons are the referrals written just now; only older cases read theirs.
    fresh = {c.id for c in open_cases.values() if c.revision == 0}
    full_referrals: dict[int, list[dict[str, Any]]] = {}
    for r in referrals:
        if r["case_id"] in fresh:
            full_referrals.setdefault(r["case_id"], []).append(_reason_of(r))
    older = [open_cases[s].id for s in changed if open_cases[s].id not in fresh]
    full_referrals.update(_referrals_for(conn, older + [c.id for c in closing]))
    revisions: list[dict[str, Any]] = []
    for sid in changed:
        case = open_cases[sid]
        case.revision += 1
        opening = case.revision == 1
        revisions.append({"b_id": case.id, "b_rev": case.revision, "b_sev": case.severity})
        if opening:
            events.append({"case_id": case.id, "kind": "opened", "at": now, "detail": {}})
        else:
            report.cases_updated += 0 if case.reopened else 1
        tasks += _task_items(settings, case, "open", facts_all.get(sid, {}), school_names,
                             full_referrals.get(case.id, []))  # fmt: skip
    # One statement for all changed cases, not one round trip each (19,000 on a first run).
    if revisions:
        conn.execute(
            update(Case)
            .where(Case.id == bindparam("b_id"))
            .values(
                revision=bindparam("b_rev"),
                severity=bindparam("b_sev"),
                recovered_since=None,
                updated_at=now,
            ),
            revisions,
        )
    for case in closing:
        case.revision += 1
        events.append({"case_id": case.id, "kind": "closed", "at": now,
                       "detail": {"reason": "recovered"}})  # fmt: skip
        report.cases_closed += 1
        tasks += _task_items(settings, case, "closed", facts_all.get(case.student_id, {}),
                             school_names, full_referrals.get(case.id, []))  # fmt: skip
    if closing:
        conn.execute(
            update(Case)
            .where(Case.id == bindparam("b_id"))
            .values(
                status="closed",
                closed_at=now,
                close_reason="recovered",
                revision=bindparam("b_rev"),
                updated_at=now,
            ),
            [{"b_id": c.id, "b_rev": c.revision} for c in closing],
        )
    notices = _family_items(
        conn, settings, {sid: cats for sid, cats in changed.items() if cats}, open_cases,
        facts_all, school_names, report,
    )  # fmt: skip
    if events:
        insert_many(conn, table("case_events"), events)
    report.tasks_enqueued += enqueue(conn, tasks)
    report.family_messages_enqueued += enqueue(conn, notices)


def _reopen(conn: Connection, recent: dict[str, int], now: datetime) -> dict[str, OpenCase]:
    ids = list(recent.values())
    conn.execute(
        update(Case)
        .where(Case.id.in_(ids))
        .values(
            status="open",
            closed_at=None,
            close_reason=None,
            recovered_since=None,
            reopen_count=Case.reopen_count + 1,
            updated_at=now,
        )
    )
    conn.execute(
        CaseEvent.__table__.insert(),  # type: ignore[attr-defined]
        [{"case_id": i, "kind": "reopened", "at": now, "detail": {}} for i in ids],
    )
    reopened = {sid: c for sid, c in _load_open_cases(conn).items() if sid in recent}
    for case in reopened.values():
        case.reopened = True
    return reopened


def _student_facts(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 5000):
        q = select(
            Student.student_id, Student.local_id, Student.first_name, Student.last_name,
            Student.grade_level, Student.school_id,
        ).where(Student.student_id.in_(ids[i : i + 5000]))  # fmt: skip
        for row in conn.execute(q).mappings():
            out[row["student_id"]] = dict(row)
    return out


def _school_names(conn: Connection) -> dict[str, str]:
    return {sid: name for sid, name in conn.execute(select(School.school_id, School.name))}


REASON_FIELDS = ("rule_id", "rule_version", "reason", "severity", "evidence", "origin",
                 "rule_expression")  # fmt: skip


def _reason_of(referral: dict[str, Any]) -> dict[str, Any]:
    """What the staff task shows of one referral."""
    out = {k: referral.get(k) for k in REASON_FIELDS}
    out["created_at"] = _iso(referral.get("created_at"))
    return out


def _iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 whether the database handed back an aware or a naive (SQLite) datetime."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _referrals_for(conn: Connection, case_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for i in range(0, len(case_ids), 5000):
        q = (
            select(
                Referral.case_id, Referral.rule_id, Referral.rule_version, Referral.reason,
                Referral.severity, Referral.evidence, Referral.created_at, Referral.origin,
                Referral.rule_expression,
            )
            .where(Referral.case_id.in_(case_ids[i : i + 5000]))
            .order_by(Referral.id)
        )  # fmt: skip
        for row in conn.execute(q).mappings():
            r = dict(row)
            r["created_at"] = _iso(r["created_at"])
            out.setdefault(r.pop("case_id"), []).append(r)
    return out


def _task_items(
    settings: Settings,
    case: OpenCase,
    status: str,
    student: dict[str, Any],
    schools: dict[str, str],
    reasons: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The staff task: what a school official needs to act, with the evidence for each reason."""
    manager = next((c for c in settings.caseloads if c.staff_id == case.assignee_id), None)
    school = schools.get(student.get("school_id") or "", student.get("school_id") or "")
    name = f"{student.get('first_name', '')} {student.get('last_name', '')}".strip()
    task = {
        "task_id": f"case-{case.id}",
        "case_id": case.id,
        "revision": case.revision,
        "status": status,
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
        "reasons": reasons,
        "first_meeting_due": (case.opened_at + timedelta(days=7)).date().isoformat(),
    }
    return [
        {
            "idempotency_key": f"task:{d.name}:case-{case.id}:rev-{case.revision}",
            "kind": "task",
            "target": d.name,
            "case_id": case.id,
            "student_id": case.student_id,
            "payload": task,
        }
        for d in settings.destinations
    ]


def _family_items(
    conn: Connection,
    settings: Settings,
    new_categories: dict[str, set[str]],
    cases: dict[str, OpenCase],
    students: dict[str, dict[str, Any]],
    schools: dict[str, str],
    report: EvaluationReport,
) -> list[dict[str, Any]]:
    """One notice per reachable guardian, on their first channel we have, for new resources."""
    if not settings.channels or not new_categories:
        return []
    contacts = reachable_contacts(conn, new_categories)
    items: list[dict[str, Any]] = []
    for sid, categories in new_categories.items():
        resources = pick_resources(settings, sorted(categories))
        if not resources:
            continue
        case = cases[sid]
        facts = students.get(sid, {})
        school = schools.get(facts.get("school_id") or "", "your school")
        reached = False
        for contact in contacts.get(sid, []):
            for channel in settings.channels:
                medium = getattr(channel, "medium", "sms")
                address = contact.sms_phone if medium == "sms" else contact.email
                if not address:
                    continue
                message = render_notice(
                    settings, contact.language, medium, resources,
                    facts.get("first_name", ""), school,
                )  # fmt: skip
                message.update({"to": address, "resource_ids": [r.id for r in resources]})
                items.append(
                    {
                        "idempotency_key": (
                            f"notice:{channel.name}:case-{case.id}:rev-{case.revision}"
                            f":contact-{contact.contact_id}"
                        ),
                        "kind": "family_message",
                        "target": channel.name,
                        "case_id": case.id,
                        "student_id": sid,
                        "contact_id": contact.contact_id,
                        "payload": message,
                    }
                )
                reached = True
                break  # one channel per guardian: the first one we can use
        if not reached:
            report.no_reachable_family += 1
    return items
