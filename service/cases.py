"""Evaluation: indicators -> rules -> referrals -> cases -> outbox, in one transaction.

One open case per student (the database enforces it). A new reason joins the open case. A case
whose reasons stopped firing closes after `cases.recovery_days`; a student who relapses within
`cases.cooldown_days` of a close gets the same case back instead of a new one, so a student
hovering at a threshold does not flap. Each change writes its outbox intents (bring the staff task
to the new revision; for new resource categories, tell each guardian) in the same transaction;
they are rendered and checked against policy when sent (`service/delivery.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from service.bulk import insert_many, table
from service.case_plan import CHECK_IN, CLOSE_SUGGESTED, close_suggestions, due_check_ins
from service.clock import district_today, utcnow
from service.config import CaseloadConfig, Settings, family_categories
from service.indicator_names import INDICATORS
from service.indicators import (
    IndicatorWindow,
    compute_indicators,
    core_subject_warnings,
    unknown_attendance,
)
from service.intents import family_notices, task_upserts
from service.models import Case, CaseEvent, Referral, School
from service.outbox import enqueue
from service.outreach import guardian_contacts
from service.rules import CompiledRule, compile_rules, unknown_counts
from service.task_view import student_facts

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
    # A person referred the student: the case waits for a person to close it (no recovery).
    held_by_person: bool = False


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


EVALUATE_ATTEMPTS = 3  # an evaluation that meets a case opened meanwhile runs again


def evaluate(engine: Engine, settings: Settings, as_of: date | None = None) -> EvaluationReport:
    day = as_of or settings.as_of or district_today(settings.district.timezone)
    rules = compile_rules(settings.rules)
    for attempt in range(1, EVALUATE_ATTEMPTS + 1):
        try:
            report = _evaluate_once(engine, settings, day, rules)
            break
        except IntegrityError:
            # A worker put a referral on a case this evaluation was about to open (the
            # one-open-case index): nothing was written; evaluate again, and join that case.
            if attempt == EVALUATE_ATTEMPTS:
                raise
            log.warning("evaluate.conflict_retried", attempt=attempt)
    log.info(
        "evaluate.finished",
        students=report.students_evaluated,
        opened=report.cases_opened,
        updated=report.cases_updated,
        closed=report.cases_closed,
    )
    return report


def _evaluate_once(
    engine: Engine, settings: Settings, day: date, rules: list[CompiledRule]
) -> EvaluationReport:
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
    return report


def _load_open_cases(
    conn: Connection, students: Collection[str] | None = None, lock: bool = False
) -> dict[str, OpenCase]:
    """Every open case, or those of `students` (locked with `lock`, on PostgreSQL)."""
    cases: dict[str, OpenCase] = {}
    q = select(
        Case.id, Case.student_id, Case.revision, Case.severity, Case.assignee_id,
        Case.recovered_since, Case.opened_at,
    ).where(Case.status == "open")  # fmt: skip
    q2 = (
        select(Referral.case_id, Referral.rule_id, Referral.resource_categories, Referral.origin)
        .join(Case, Case.id == Referral.case_id)
        .where(Case.status == "open")
    )
    if students is not None:
        q = q.where(Case.student_id.in_(list(students)))
        q2 = q2.where(Case.student_id.in_(list(students)))
    if lock:
        q = q.with_for_update()
    for cid, sid, rev, sev, assignee, rec, opened in conn.execute(q):
        cases[sid] = OpenCase(cid, sid, rev, sev, assignee, rec, opened, set(), set())
    by_id = {c.id: c for c in cases.values()}
    for case_id, rule_id, categories, origin in conn.execute(q2):
        case = by_id.get(case_id)
        if case is None:
            # Opened by another transaction that committed between the two reads (READ
            # COMMITTED): not one of ours. Opening a second would hit the one-open-case index,
            # and the caller retries.
            continue
        if rule_id:
            case.rules.add(rule_id)
        if origin == "person":
            case.held_by_person = True
        case.categories.update(categories or [])
    return cases


class CaseBook:
    """The case state machine for one evaluation: open, join, relapse, recover, close, reopen.

    Each step changes cases in bulk and notes what changed; `intents` then says what the outside
    must hear about it. Everything runs in the evaluation's one transaction.
    """

    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        as_of: date,
        report: EvaluationReport,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.as_of = as_of
        self.report = report
        self.now = utcnow()
        self.open = _load_open_cases(conn)
        self.load: Counter[str] = Counter(
            c.assignee_id for c in self.open.values() if c.assignee_id
        )
        self.events: list[dict[str, Any]] = []
        # student -> resource categories new to the case this run (empty: changed, none new)
        self.changed: dict[str, set[str]] = {}
        self.closing: list[OpenCase] = []

    def _event(self, case_id: int, kind: str, **detail: Any) -> None:
        self.events.append({"case_id": case_id, "kind": kind, "at": self.now, "detail": detail})

    def _load_open(self) -> dict[str, OpenCase]:
        """The open cases this book works on (re-read after it opens or reopens some)."""
        return _load_open_cases(self.conn)

    def reopen_recent(self, fired: dict[str, list[Fired]]) -> None:
        """Students who relapse soon after a close get that case back."""
        since = self.now - timedelta(days=self.settings.cases.cooldown_days)
        recent: dict[str, int] = {}
        candidates = [s for s in fired if s not in self.open]
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
            recent.update({sid: cid for sid, cid in self.conn.execute(q)})
        self._respect_closes_in_tools(fired, recent)
        if not recent:
            return
        ids = list(recent.values())
        self.conn.execute(
            update(Case)
            .where(Case.id.in_(ids))
            .values(
                status="open", closed_at=None, close_reason=None, recovered_since=None,
                reopen_count=Case.reopen_count + 1, updated_at=self.now,
            )
        )  # fmt: skip
        for case_id in ids:
            self._event(case_id, "reopened")
        for sid, case in self._load_open().items():
            if sid in recent:
                case.reopened = True
                self.open[sid] = case
                self.changed.setdefault(sid, set())
                self.report.cases_reopened += 1

    def _respect_closes_in_tools(
        self, fired: dict[str, list[Fired]], recent: dict[str, int]
    ) -> None:
        """A case a person closed (in a staff tool or through the API) stays closed through the
        cooldown unless a reason new to it fires; the same reasons neither reopen it nor open
        another case."""
        if not recent:
            return
        ids = list(recent.values())
        # Evaluation closes with "recovered" only; any other reason is a person's (a staff tool,
        # the API), and a person's close holds through the cooldown.
        by_person = set(
            self.conn.execute(
                select(Case.id).where(Case.id.in_(ids), Case.close_reason != "recovered")
            ).scalars()
        )
        if not by_person:
            return
        known: dict[int, set[str]] = {}
        for case_id, rule_id in self.conn.execute(
            select(Referral.case_id, Referral.rule_id).where(Referral.case_id.in_(by_person))
        ):
            if rule_id:  # person-based referrals have no rule
                known.setdefault(case_id, set()).add(rule_id)
        for sid, case_id in list(recent.items()):
            if case_id not in by_person:
                continue
            if {hit.rule.config.id for hit in fired[sid]} <= known.get(case_id, set()):
                del recent[sid]
                del fired[sid]  # nothing new since the person closed it

    def open_new(self, fired: dict[str, list[Fired]], students: dict[str, dict[str, Any]]) -> None:
        """A case for every flagged student without one, assigned least-loaded first."""
        school_numbers = {
            sid: ident
            for sid, ident in self.conn.execute(select(School.school_id, School.identifier))
        }
        rows = []
        for sid in fired:
            if sid in self.open:
                continue
            facts = students.get(sid, {})
            school = facts.get("school_id") or ""
            keys = {school, school_numbers.get(school) or school}
            manager = assign(self.settings.caseloads, self.load, keys, facts.get("grade_level"))
            if manager is None:
                self.report.unassigned += 1
            rows.append(
                {
                    "student_id": sid, "school_id": facts.get("school_id"), "status": "open",
                    "severity": "low", "assignee_id": manager.staff_id if manager else None,
                    "revision": 0, "opened_at": self.now, "updated_at": self.now,
                    "reopen_count": 0,
                }
            )  # fmt: skip
        if not rows:
            return
        self.conn.execute(Case.__table__.insert(), rows)  # type: ignore[attr-defined]
        created = {r["student_id"] for r in rows}
        for sid, case in self._load_open().items():
            if sid in created:
                self.open[sid] = case
                self._event(case.id, "opened")
        self.report.cases_opened += len(rows)

    def add_reasons(self, fired: dict[str, list[Fired]]) -> None:
        """A rule new to the case becomes a referral (with its evidence) and changes the case."""
        referrals: list[dict[str, Any]] = []
        touched: list[dict[str, Any]] = []
        for sid, hits in fired.items():
            case = self.open[sid]
            for hit in hits:
                rule = hit.rule.config
                if rule.id in case.rules:
                    touched.append({"c": case.id, "r": rule.id, "d": self.as_of})
                    continue
                case.rules.add(rule.id)
                offered = family_categories(self.settings, rule)
                referrals.append(
                    {
                        "case_id": case.id, "student_id": sid, "origin": "rule",
                        "rule_id": rule.id, "rule_version": rule.version,
                        "rule_expression": rule.when, "reason": rule.reason,
                        "severity": rule.severity, "resource_categories": offered,
                        "evidence": {"as_of": self.as_of.isoformat(), "indicators": hit.values},
                        "created_at": self.now, "last_fired_on": self.as_of,
                    }
                )  # fmt: skip
                self._event(case.id, "reason_added", rule_id=rule.id, reason=rule.reason)
                if SEVERITY_ORDER[rule.severity] > SEVERITY_ORDER.get(case.severity, 0):
                    case.severity = rule.severity
                new = {c for c in offered if c not in case.categories}
                case.categories.update(offered)
                self.changed.setdefault(sid, set()).update(new)
            if case.recovered_since is not None:
                case.recovered_since = None
                self.changed.setdefault(sid, set())
                self._event(case.id, "relapsed")
        if referrals:
            insert_many(self.conn, table("referrals"), referrals)
            self.report.referrals_created += len(referrals)
        if touched:
            self.conn.execute(
                text("UPDATE referrals SET last_fired_on = :d WHERE case_id = :c AND rule_id = :r"),
                touched,
            )

    def note_recovery(self, fired: dict[str, list[Fired]]) -> None:
        """Cases whose reasons stopped firing: note the recovery, close after recovery_days."""
        recovering: list[dict[str, Any]] = []
        for sid, case in self.open.items():
            if sid in fired or case.held_by_person:
                continue
            if case.recovered_since is None:
                case.recovered_since = self.as_of
                self.report.cases_recovering += 1
                recovering.append({"b_id": case.id})
                self._event(case.id, "indicators_recovered")
            elif (self.as_of - case.recovered_since).days >= self.settings.cases.recovery_days:
                self.closing.append(case)
        if recovering:
            self.conn.execute(
                update(Case)
                .where(Case.id == bindparam("b_id"))
                .values(recovered_since=self.as_of, updated_at=self.now),
                recovering,
            )

    def follow_plan(self) -> None:
        """The case plan: a check-in came due, or the indicators recovered long enough to
        suggest closing. Either re-sends the task (a new revision) so the tool shows it."""
        closing = {c.id for c in self.closing}
        live = {c.id: c for c in self.open.values() if c.id not in closing}
        opened = {cid: c.opened_at for cid, c in live.items()}
        for cid, number in due_check_ins(self.conn, self.settings, opened, self.as_of).items():
            self._event(cid, CHECK_IN, number=number)
            self.changed.setdefault(live[cid].student_id, set())
        recovered = {cid: c.recovered_since for cid, c in live.items() if c.recovered_since}
        for cid in close_suggestions(self.conn, self.settings, recovered, self.as_of):
            self._event(cid, CLOSE_SUGGESTED, recovered_since=recovered[cid].isoformat())
            self.changed.setdefault(live[cid].student_id, set())

    def save_revisions(self) -> None:
        """One statement for all changed cases, not one round trip each (19,000 on a first run)."""
        revisions: list[dict[str, Any]] = []
        for sid in self.changed:
            case = self.open[sid]
            case.revision += 1
            # A plan step (check-in, suggestion) keeps a recovery; a relapse already cleared it.
            revisions.append({"b_id": case.id, "b_rev": case.revision, "b_sev": case.severity,
                              "b_rec": case.recovered_since})  # fmt: skip
            if case.revision > 1 and not case.reopened:
                self.report.cases_updated += 1
        if revisions:
            self.conn.execute(
                update(Case)
                .where(Case.id == bindparam("b_id"))
                .values(
                    revision=bindparam("b_rev"), severity=bindparam("b_sev"),
                    recovered_since=bindparam("b_rec"), updated_at=self.now,
                ),
                revisions,
            )  # fmt: skip
        for case in self.closing:
            case.revision += 1
            self._event(case.id, "closed", reason="recovered")
            self.report.cases_closed += 1
        if self.closing:
            self.conn.execute(
                update(Case)
                .where(Case.id == bindparam("b_id"))
                .values(
                    status="closed", closed_at=self.now, close_reason="recovered",
                    revision=bindparam("b_rev"), updated_at=self.now,
                ),
                [{"b_id": c.id, "b_rev": c.revision} for c in self.closing],
            )  # fmt: skip
        if self.events:
            insert_many(self.conn, table("case_events"), self.events)

    def intents(self) -> None:
        """What the outside must hear: each changed or closed case's task, and new resources
        for the family. Rendered later, when sent."""
        destinations = [d.name for d in self.settings.destinations]
        tasks: list[dict[str, Any]] = []
        for case in [self.open[sid] for sid in self.changed] + self.closing:
            tasks += task_upserts(destinations, case.id, case.student_id, case.revision)
        notices: list[dict[str, Any]] = []
        with_new = {sid: cats for sid, cats in self.changed.items() if cats}
        if self.settings.channels and with_new:
            guardians = guardian_contacts(self.conn, with_new)
            for sid, categories in with_new.items():
                contacts = guardians.get(sid, [])
                if not contacts:
                    self.report.no_reachable_family += 1
                    continue
                case = self.open[sid]
                notices += family_notices(case.id, sid, case.revision, contacts, sorted(categories))
        self.report.tasks_enqueued += enqueue(self.conn, tasks)
        self.report.family_messages_enqueued += enqueue(self.conn, notices)


def _apply(
    conn: Connection,
    settings: Settings,
    window: IndicatorWindow,
    fired: dict[str, list[Fired]],
    report: EvaluationReport,
) -> None:
    book = CaseBook(conn, settings, window.as_of, report)
    book.reopen_recent(fired)
    book.open_new(fired, student_facts(conn, list(fired)))
    book.add_reasons(fired)
    book.note_recovery(fired)
    book.follow_plan()
    book.save_revisions()
    book.intents()
    # Referrers whose referral's case closed or reopened hear it in this transaction.
    from service.referrals import update_referrer_statuses

    touched = [book.open[sid].id for sid in book.changed] + [c.id for c in book.closing]
    update_referrer_statuses(conn, settings, touched)


def follow_up_cases(
    engine: Engine, settings: Settings, as_of: date | None = None
) -> EvaluationReport:
    """The case plan between evaluations (`schedules.follow_up_cron`, `casebridge follow-ups`):
    check-ins that came due and close suggestions, each a new task revision. No indicators are
    computed and no rule runs, so nothing opens, recovers or closes; each evaluation does the
    same steps, and a check-in or suggestion already recorded is never repeated."""
    day = as_of or settings.as_of or district_today(settings.district.timezone)
    report = EvaluationReport(day)
    with engine.begin() as conn:
        book = CaseBook(conn, settings, day, report)
        book.follow_plan()
        book.save_revisions()  # and the check-in and suggestion events
        book.intents()
    log.info("follow_ups.finished", updated=report.cases_updated, tasks=report.tasks_enqueued)
    return report


# -- person-based referrals (service/referrals.py) ----------------------------------------------

PERSON_REASON = "person_referral"


@dataclass(frozen=True)
class PersonReason:
    """A person's referral as a case reason: what the CaseBook needs to join or open a case."""

    student_id: str
    severity: str  # low | medium | high, from the referral's urgency
    # Resource categories for the concerns: suggested to staff; told to the family only when
    # `tell_family` (the referral's `resource_categories` are what the family hears, as for a
    # rule, so a later referral with consent still tells them).
    categories: list[str]
    tell_family: bool
    # Who referred, their role and relationship, the concerns, urgency, date and note.
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Placed:
    """Where a person's referral landed."""

    case_id: int
    referral_id: int  # the case reason (`referrals.id`)
    opened: bool  # a new case (or a reopened one), not a join
    assignee_id: str | None


class PersonCaseBook(CaseBook):
    """The CaseBook for referrals people make: the same reopen, open (least-loaded assignment),
    revision and intent steps as an evaluation, for the few students named, their open cases
    locked (PostgreSQL) so two referrals about one student bump the revision one after the
    other. A person's referral is always a new reason, so a case closed in a staff tool
    reopens for it within the cooldown."""

    def __init__(self, conn: Connection, settings: Settings, as_of: date, students: set[str]):
        # Not the parent's: it reads every open case for a whole evaluation.
        self.conn = conn
        self.settings = settings
        self.as_of = as_of
        self.report = EvaluationReport(as_of)
        self.now = utcnow()
        self.students = students
        self.open = self._load_open()
        self.load = Counter()
        self.events = []
        self.changed = {}
        self.closing = []

    def _load_open(self) -> dict[str, OpenCase]:
        return _load_open_cases(self.conn, self.students, lock=True)

    def _respect_closes_in_tools(
        self, fired: dict[str, list[Fired]], recent: dict[str, int]
    ) -> None:
        """A person's concern is new information: it reopens a case closed in a tool too."""

    def _loads(self) -> Counter[str]:
        """Open cases per case manager, for least-loaded assignment (only the managers who could
        take these students: one grouped count instead of every open case)."""
        staff = [c.staff_id for c in self.settings.caseloads]
        if not staff:
            return Counter()
        q = (
            select(Case.assignee_id, func.count())
            .where(Case.status == "open", Case.assignee_id.in_(staff))
            .group_by(Case.assignee_id)
        )
        return Counter({str(assignee): int(n) for assignee, n in self.conn.execute(q)})

    def place(self, reasons: list[PersonReason]) -> list[Placed]:
        """Join each student's open case, reopen a recent one, or open one; then the revision,
        the events and the outbox intents, all in the caller's transaction. One `Placed` per
        reason, in order (a student may have several)."""
        fired: dict[str, list[Fired]] = {r.student_id: [] for r in reasons}
        before = set(self.open)
        self.reopen_recent(fired)
        missing = [sid for sid in fired if sid not in self.open]
        if missing:
            self.load = self._loads()
            self.open_new(fired, student_facts(self.conn, missing))
        referral_ids = [self._add(r) for r in reasons]
        self.save_revisions()
        self.intents()
        return [
            Placed(self.open[r.student_id].id, rid, r.student_id not in before,
                   self.open[r.student_id].assignee_id)
            for r, rid in zip(reasons, referral_ids, strict=True)
        ]  # fmt: skip

    def _add(self, reason: PersonReason) -> int:
        sid = reason.student_id
        case = self.open[sid]
        told = reason.categories if reason.tell_family else []
        referral_id = self.conn.execute(
            insert(Referral)
            .values(
                case_id=case.id, student_id=sid, origin="person", reason=PERSON_REASON,
                severity=reason.severity, resource_categories=told,
                evidence={**reason.evidence, "resource_categories": reason.categories},
                created_at=self.now, last_fired_on=self.as_of,
            )
            .returning(Referral.id)
        ).scalar_one()  # fmt: skip
        about = reason.evidence.get("referral") or {}
        self._event(case.id, "reason_added", origin="person", reason=PERSON_REASON,
                    referral=about.get("id"), concerns=about.get("concerns"),
                    urgency=about.get("urgency"))  # fmt: skip
        if SEVERITY_ORDER[reason.severity] > SEVERITY_ORDER.get(case.severity, 0):
            case.severity = reason.severity
        self.changed.setdefault(sid, set()).update(c for c in told if c not in case.categories)
        case.categories.update(told)
        case.held_by_person = True
        case.recovered_since = None  # a new concern: the case is not recovering any more
        return int(referral_id)


# -- changes a person makes to one case (the API) -----------------------------------------------
#
# Evaluation changes cases in bulk; a person changes one at a time. Both follow the same rules:
# the revision goes up, each destination's task is queued at the new revision in the same
# transaction, and a case event says what changed, who did it (`actor`) and where (`via`).

# Why a person may close a case; "recovered" is evaluation's own and "closed_in_tool" a tool's.
PersonCloseReason = Literal[
    "resolved", "family_declined", "moved", "referred_elsewhere", "duplicate", "other"
]
NOTE = "note"


class CaseNotFound(LookupError):
    pass


class CaseConflict(Exception):
    """The change cannot be made as asked (e.g. reopening while the student has another case)."""


@dataclass(frozen=True)
class CaseChange:
    status: str | None = None  # "open" reopens, "closed" closes
    close_reason: str | None = None
    change_assignee: bool = False  # set with `assignee_id` (None unassigns)
    assignee_id: str | None = None
    note: str | None = None  # kept on the event that records the change


class CaseEditor:
    """One person's changes to single cases, in the caller's transaction."""

    def __init__(self, conn: Connection, settings: Settings, actor: str, via: str) -> None:
        self.conn = conn
        self.settings = settings
        self.actor = actor
        self.via = via

    def change(self, case_id: int, change: CaseChange) -> list[str]:
        """Apply `change`; returns the kinds of the events written (empty: nothing changed)."""
        case = self.conn.execute(
            select(Case.id, Case.student_id, Case.status, Case.assignee_id, Case.revision)
            .where(Case.id == case_id)
            .with_for_update()
        ).first()
        if case is None:
            raise CaseNotFound(case_id)
        now = utcnow()
        values: dict[str, Any] = {}
        events: list[tuple[str, dict[str, Any]]] = []
        if change.status == "closed" and case.status != "closed":
            reason = change.close_reason or "other"
            values.update(status="closed", closed_at=now, close_reason=reason)
            events.append(("closed", {"reason": reason}))
        elif change.status == "open" and case.status != "open":
            other = self.conn.execute(
                select(Case.id).where(Case.student_id == case.student_id, Case.status == "open")
            ).first()
            if other is not None:  # the database allows one open case per student
                # Not its id: that case may be at a school the caller may not see.
                raise CaseConflict("the student has another open case")
            values.update(status="open", closed_at=None, close_reason=None,
                          recovered_since=None, reopen_count=Case.reopen_count + 1)  # fmt: skip
            events.append(("reopened", {}))
        if change.change_assignee and change.assignee_id != case.assignee_id:
            values["assignee_id"] = change.assignee_id
            events.append(("reassigned", {"from": case.assignee_id, "to": change.assignee_id}))
        if not events:
            return []
        revision = case.revision + 1
        self.conn.execute(
            update(Case).where(Case.id == case.id).values(revision=revision, updated_at=now,
                                                          **values)
        )  # fmt: skip
        if change.note:
            events[0][1]["note"] = change.note
        self.conn.execute(
            insert(CaseEvent),
            [{"case_id": case.id, "kind": kind, "at": now, "detail": detail,
              "actor": self.actor, "via": self.via} for kind, detail in events],
        )  # fmt: skip
        destinations = [d.name for d in self.settings.destinations]
        enqueue(self.conn, task_upserts(destinations, case.id, case.student_id, revision))
        from service.referrals import update_referrer_statuses  # referrers hear close, reassign

        update_referrer_statuses(self.conn, self.settings, [case.id])
        log.info("case.changed", case_id=case.id, changes=[k for k, _ in events], via=self.via)
        return [kind for kind, _ in events]

    def note(self, case_id: int, text_: str) -> int:
        """A note on the case's timeline. It does not change the case: no new revision, and the
        staff task does not carry notes (free text stays here instead of being disclosed to
        every configured tool; the tools keep their own comments)."""
        exists = self.conn.execute(select(Case.id).where(Case.id == case_id)).first()
        if exists is None:
            raise CaseNotFound(case_id)
        event_id = self.conn.execute(
            insert(CaseEvent)
            .values(case_id=case_id, kind=NOTE, at=utcnow(), detail={"text": text_},
                    actor=self.actor, via=self.via)
            .returning(CaseEvent.id)
        ).scalar_one()  # fmt: skip
        log.info("case.noted", case=case_id, via=self.via)
        return int(event_id)
