"""Person-based referrals: a teacher, counselor, parent, student or community partner reports a
concern about a student (`POST /referrals`, `service/api/referrals.py`).

A referral is recorded as sent, then matched to a student: by local id (student number or
sourcedId), or by first and last name, school and birth date (case- and accent-insensitive,
exact otherwise), exactly one match or none. The POST only records it (a few statements, so a
burst of posts stays fast). The worker, before each delivery pass, makes each matched referral
a case reason through the CaseBook (`place_received`, `service/cases.PersonCaseBook`): it joins
the student's open case or opens one, the revision goes up and the staff task and family notice
are queued in the same transaction, as for a rule. An unmatched one waits in a queue until staff
name the student (placed at once) or reject it.

Privacy: the caller who posts learns nothing about the student. The answer is the same whether
a student matched; a school-limited token matches only students of its schools; the referrer's
status says only received, assigned or closed, and "assigned" not before
`referrals.assigned_status_delay_hours` after the referral arrived, so it does not tell a match
at once from a queue staff worked through. The status token is shown once; only its SHA-256 is
kept. No name, note or birth date is logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog
from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from service.cases import PersonCaseBook, PersonReason
from service.clock import district_today, utcnow
from service.config import Settings
from service.intents import REFERRER_STATUS, referrer_status
from service.models import (
    Case,
    ClaimedItem,
    Disclosure,
    PersonReferral,
    Referral,
    ReferralStatusToken,
    School,
    Student,
    StudentDemographics,
)
from service.outbox import enqueue

if TYPE_CHECKING:
    from service.delivery import Deliverer, Plan

log = structlog.get_logger(__name__)

ROLES = ("teacher", "counselor", "parent_guardian", "student", "community_partner", "other")
URGENCIES = ("routine", "soon", "urgent")
# Urgency is the case's severity: "urgent" opens or raises a case as high, which is what the
# staff tools treat as urgent (a Teams card, Planner priority 1).
SEVERITY_OF_URGENCY = {"routine": "low", "soon": "medium", "urgent": "high"}
REJECTIONS = ("duplicate", "not_our_student", "not_enough_information", "not_a_concern", "other")
Status = Literal["received", "assigned", "closed"]
ID_PREFIX = "ref_"
RULE_PREFIX = "rule-"
STATUS_TOKEN_PREFIX = "rst_"
# Why a referral is unmatched, for staff (never for the caller who posted it).
NOT_IDENTIFIED = "not_identified"  # neither a local id nor name, school and birth date
NO_MATCH = "no_match"
AMBIGUOUS = "ambiguous"
NAME_MISMATCH = "name_mismatch"  # the local id's student has another last name
STATUS_BASIS = "status of a referral, to the person who made it (no education record content)"


# -- what a referral says -------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentNamed:
    """The student as the referrer named them; any part may be missing."""

    local_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    school: str | None = None  # the school's name, number or sourcedId
    birth_date: date | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "local_id": self.local_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "school": self.school,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
        }


@dataclass(frozen=True)
class Submission:
    """A referral as the form sent it."""

    referrer_name: str
    referrer_role: str
    relationship: str
    concerns: list[str]
    note: str
    urgency: str
    family_contact_ok: bool
    student: StudentNamed
    referrer_email: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who is calling the API: their token and the schools it is limited to (None: all)."""

    token_id: int | None
    name: str
    schools: frozenset[str] | None = None

    def sees(self, school_id: str | None) -> bool:
        return self.schools is None or (school_id is not None and school_id in self.schools)


PLACE_BATCH = 200  # referrals placed in one transaction
# `match` of a found student's referral that could not be put on a case: staff resolve it.
PLACEMENT_FAILED = "placement_failed"


class IdempotencyKeyReused(Exception):
    """An `Idempotency-Key` already used for a different referral (not a retry of it)."""


@dataclass(frozen=True)
class Receipt:
    """What the caller who posted gets back: the same shape whether the student matched."""

    referral_id: str
    status_token: str
    replayed: bool = False


# -- matching -------------------------------------------------------------------------------------


def fold(text: str | None) -> str:
    """A name compared case- and accent-insensitively, exact otherwise: "Lucía  GÓMEZ" and
    "lucia gomez" are one name; "Ana" and "Anna", or "O'Brien" and "OBrien", are not."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(bare.casefold().split())


@dataclass(frozen=True)
class Match:
    student_id: str | None
    school_id: str | None  # the student's school, or the named school when unmatched
    how: str  # local_id | name_school_birth_date | staff, or why not (no_match, ambiguous...)


def allowed_schools(conn: Connection, schools: Collection[str] | None) -> frozenset[str] | None:
    """A token's schools as sourcedIds (tokens may list school numbers)."""
    if schools is None:
        return None
    wanted = list(schools)
    found = conn.execute(
        select(School.school_id).where(
            or_(School.school_id.in_(wanted), School.identifier.in_(wanted))
        )
    ).scalars()
    return frozenset(found) | frozenset(wanted)


def find_school(conn: Connection, named: str | None) -> str | None:
    """The active school a referrer named: by sourcedId, number, or name (folded)."""
    text = (named or "").strip()
    if not text:
        return None
    exact = conn.execute(
        select(School.school_id).where(
            School.active.is_(True), or_(School.school_id == text, School.identifier == text)
        )
    ).scalars().all()  # fmt: skip
    if len(exact) == 1:
        return exact[0]
    wanted = fold(text)
    by_name = [
        sid
        for sid, name in conn.execute(
            select(School.school_id, School.name).where(School.active.is_(True))
        )
        if fold(name) == wanted
    ]
    return by_name[0] if len(by_name) == 1 else None


def match_student(conn: Connection, named: StudentNamed, schools: frozenset[str] | None) -> Match:
    """Exactly one active student, among the caller's schools, or none.

    A local id is tried first; if the referrer also gave a last name, it must agree (a typo in a
    student number must not put a note on another child's case). Otherwise first and last name,
    school and birth date must all agree.
    """
    named_school = find_school(conn, named.school)
    if named.local_id:
        q = select(Student.student_id, Student.school_id, Student.last_name).where(
            Student.active.is_(True),
            or_(Student.local_id == named.local_id, Student.student_id == named.local_id),
        )
        rows = [r for r in conn.execute(q) if schools is None or r.school_id in schools]
        if len(rows) == 1:
            row = rows[0]
            if named.last_name and fold(named.last_name) != fold(row.last_name):
                return Match(None, named_school, NAME_MISMATCH)
            return Match(row.student_id, row.school_id, "local_id")
        if len(rows) > 1:
            return Match(None, named_school, AMBIGUOUS)
    if not (named.first_name and named.last_name and named.birth_date and named_school):
        return Match(None, named_school, NO_MATCH if named.local_id else NOT_IDENTIFIED)
    if schools is not None and named_school not in schools:
        return Match(None, named_school, NO_MATCH)
    q2 = (
        select(Student.student_id, Student.first_name, Student.last_name)
        .join(StudentDemographics, StudentDemographics.student_id == Student.student_id)
        .where(
            StudentDemographics.birth_date == named.birth_date,
            StudentDemographics.active.is_(True),
            Student.school_id == named_school,
            Student.active.is_(True),
        )
    )
    first, last = fold(named.first_name), fold(named.last_name)
    found = [
        r.student_id
        for r in conn.execute(q2)
        if fold(r.first_name) == first and fold(r.last_name) == last
    ]
    if len(found) == 1:
        return Match(found[0], named_school, "name_school_birth_date")
    return Match(None, named_school, AMBIGUOUS if found else NO_MATCH)


# -- what the case and the family get ------------------------------------------------------------


def known_categories(settings: Settings) -> set[str]:
    categories = {r.category for r in settings.resources}
    if settings.resource_directory is not None:
        categories |= set(settings.resource_directory.categories.values())
    return categories


def concern_categories(settings: Settings, concerns: Iterable[str]) -> list[str]:
    """The resource categories for these concerns that the district has resources in."""
    cfg = settings.referrals
    known = known_categories(settings)
    wanted = [c for concern in concerns for c in cfg.concerns.get(concern, [])]
    if cfg.mix_general_support:
        wanted += settings.policy.general_support
    return [c for c in dict.fromkeys(wanted) if c in known]


def person_reason(settings: Settings, row: Any, student_id: str, today: date) -> PersonReason:
    """A stored referral (a `person_referrals` row) as a case reason."""
    concerns = list(row.concerns or [])
    tell = bool(row.family_contact_ok) and not (
        set(concerns) & set(settings.referrals.no_family_notice)
    )
    evidence = {
        "as_of": today.isoformat(),
        "referral": {
            "id": row.public_id,
            "referrer": {
                "name": row.referrer_name,
                "role": row.referrer_role,
                "relationship": row.relationship,
            },
            "concerns": concerns,
            "urgency": row.urgency,
            "received_on": row.received_on.isoformat(),
            "family_contact_ok": bool(row.family_contact_ok),
        },
        "note": row.note,
    }
    return PersonReason(
        student_id=student_id,
        severity=SEVERITY_OF_URGENCY.get(row.urgency, "medium"),
        categories=concern_categories(settings, concerns),
        tell_family=tell,
        evidence=evidence,
    )


# -- receiving a referral ------------------------------------------------------------------------


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def fingerprint(caller: Caller, form: Submission, match: Match, day: date) -> str:
    """The same referrer, student, concerns, note, urgency and consent on the same day through
    the same token: one referral (a double submit). A changed note or urgency is new
    information, so it is a new referral."""
    student = (
        ["student", match.student_id]
        if match.student_id
        else ["named", *(fold(str(v or "")) for v in form.student.as_json().values())]
    )
    parts = [
        caller.token_id, fold(form.referrer_name), form.referrer_role,
        fold(form.referrer_email), student, sorted(set(form.concerns)), day.isoformat(),
        " ".join(form.note.split()), form.urgency, form.family_contact_ok,
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _issue_token(conn: Connection, referral_pk: int, now: datetime) -> str:
    token = STATUS_TOKEN_PREFIX + secrets.token_urlsafe(24)
    conn.execute(
        insert(ReferralStatusToken).values(
            token_sha256=digest(token), person_referral_id=referral_pk, created_at=now
        )
    )
    return token


def receive(
    engine: Engine,
    settings: Settings,
    caller: Caller,
    form: Submission,
    idempotency_key: str | None = None,
) -> Receipt:
    """Record a referral, matched to its student or not, in one transaction (the worker puts a
    matched one on its case: `place_received`).

    A repeat (the caller's `Idempotency-Key`, or the same referrer, student, concerns and day)
    answers with the first referral and a new status token for it.
    """
    today = district_today(settings.district.timezone)
    for _attempt in range(5):
        try:
            with engine.begin() as conn:  # one connection and one transaction per post
                schools = allowed_schools(conn, caller.schools)
                match = match_student(conn, form.student, schools)
                seen_as = fingerprint(caller, form, match, today)
                earlier = _earlier(conn, caller, idempotency_key, seen_as)
                if earlier is not None and earlier[2] != seen_as:
                    raise IdempotencyKeyReused(idempotency_key)
                if earlier is not None:
                    token = _issue_token(conn, earlier[0], utcnow())
                    return Receipt(earlier[1], token, replayed=True)
                return _record(conn, settings, caller, form, idempotency_key, match, seen_as, today)
        except IntegrityError:
            # A concurrent post of the same referral, or of another that opened this student's
            # case first: look again (the first is then found, or the case is joined).
            continue
    raise RuntimeError("the referral could not be recorded after repeated conflicts")


def _earlier(
    conn: Connection, caller: Caller, key: str | None, seen_as: str
) -> tuple[int, str, str] | None:
    """The referral this post repeats (its key, or the same referral): id, public id and
    fingerprint; the referral with the same fingerprint first."""
    where = PersonReferral.fingerprint == seen_as
    if key:
        where = or_(
            where, (PersonReferral.token_id == caller.token_id)
            & (PersonReferral.idempotency_key == key),
        )  # fmt: skip
    row = conn.execute(
        select(PersonReferral.id, PersonReferral.public_id, PersonReferral.fingerprint)
        .where(where)
        .order_by((PersonReferral.fingerprint == seen_as).desc())
        .limit(1)
    ).first()
    return (row.id, row.public_id, row.fingerprint) if row else None


def _record(
    conn: Connection,
    settings: Settings,
    caller: Caller,
    form: Submission,
    key: str | None,
    match: Match,
    seen_as: str,
    today: date,
) -> Receipt:
    now = utcnow()
    public_id = ID_PREFIX + secrets.token_urlsafe(12)
    # The first statement writes: on SQLite it takes the write lock before the case is read.
    pk = conn.execute(
        insert(PersonReferral)
        .values(
            public_id=public_id, received_at=now, received_on=today, token_id=caller.token_id,
            idempotency_key=key, fingerprint=seen_as, referrer_name=form.referrer_name,
            referrer_role=form.referrer_role, referrer_email=form.referrer_email,
            relationship=form.relationship, concerns=list(dict.fromkeys(form.concerns)),
            note=form.note, urgency=form.urgency, family_contact_ok=form.family_contact_ok,
            identification=form.student.as_json(), school_id=match.school_id, match=match.how,
            # A found student's referral waits for `place_received` (the worker, before each
            # delivery pass): the request only records it, so a burst of posts stays fast.
            state="unmatched" if match.student_id is None else "matched",
            student_id=match.student_id, referrer_status="received",
        )
        .returning(PersonReferral.id)
    ).scalar_one()  # fmt: skip
    token = _issue_token(conn, pk, now)
    _tell_referrer(conn, settings, public_id, form.referrer_email, "received", now, now)
    log.info("referral.received", referral=public_id, matched=match.student_id is not None)
    return Receipt(public_id, token)


class _PlacedElsewhere(Exception):
    """Another placer put one of the batch's referrals on its case first."""


def place_received(engine: Engine, settings: Settings, batch: int = PLACE_BATCH) -> int:
    """Put every referral whose student was found, and that is not on a case yet, on its
    student's case: the same join / reopen / open steps, revision, tasks and family notice as
    an evaluation, one transaction per batch. The worker runs it before each delivery pass
    (`casebridge dispatch` and the scheduler's dispatch too), so the task goes out in the same
    pass. Returns how many were placed.

    A batch that meets another transaction opening the same student's case (an evaluation, a
    second worker) rolls back and is tried again: nothing is placed twice or lost. A referral
    that cannot be placed for any other reason goes to the unmatched queue, where a person
    sees it, instead of holding up the others."""
    placed = 0
    while True:
        try:
            done = _with_retries(engine, lambda conn: _place_batch(conn, settings, batch))
        except Exception as exc:  # outside the taxonomy: find the one that fails, one by one
            log.error("referrals.placement_failed", error=type(exc).__name__)
            return placed + _place_one_by_one(engine, settings, batch)
        if done is None:  # three conflicts in a row: one of them, one by one
            log.warning("referrals.placement_conflicts", placed=placed)
            return placed + _place_one_by_one(engine, settings, batch)
        placed += done
        if done < batch:
            if placed:
                log.info("referrals.placed", placed=placed)
            return placed


def _with_retries(engine: Engine, step: Callable[[Connection], int]) -> int | None:
    """`step` in a transaction, again after a conflict with a concurrent change (None: three
    conflicts in a row; the next pass tries again)."""
    for _attempt in range(3):
        try:
            with engine.begin() as conn:
                return step(conn)
        except (IntegrityError, OperationalError, _PlacedElsewhere):
            # A unique-index conflict, a deadlock or a serialization failure with a concurrent
            # change to the same student's case (an evaluation, another worker).
            continue
    return None


def _place_one_by_one(engine: Engine, settings: Settings, batch: int) -> int:
    with engine.connect() as conn:
        ids = list(
            conn.execute(select(PersonReferral.id).where(*_waiting()).limit(batch)).scalars()
        )
    placed = 0
    for pk in ids:
        try:
            done = _with_retries(engine, functools.partial(_place_one, settings, pk))
            error = None if done is not None else "conflicts"
        except Exception as exc:
            done, error = None, type(exc).__name__
        if done is not None:
            placed += done
        else:
            log.error("referrals.unplaceable", referral=pk, error=error)
            with engine.begin() as conn:
                conn.execute(
                    update(PersonReferral)
                    .where(PersonReferral.id == pk, PersonReferral.case_id.is_(None))
                    .values(state="unmatched", match=PLACEMENT_FAILED)
                )
    return placed


def _place_one(settings: Settings, pk: int, conn: Connection) -> int:
    return _place_batch(conn, settings, 1, pk)


def _waiting() -> list[Any]:
    P = PersonReferral
    return [P.state == "matched", P.case_id.is_(None), P.student_id.is_not(None)]


def _place_batch(conn: Connection, settings: Settings, batch: int, only: int | None = None) -> int:
    P = PersonReferral
    waiting = _waiting() + ([P.id == only] if only is not None else [])
    if conn.dialect.name == "sqlite":
        # The first statement writes, so the write lock is held before the rows are read.
        conn.execute(update(P).where(*waiting).values(state=P.state))
    rows = conn.execute(
        select(P.__table__).where(*waiting).order_by(P.id).limit(batch)
        .with_for_update(skip_locked=True)
    ).all()  # fmt: skip
    if not rows:
        return 0
    today = district_today(settings.district.timezone)
    book = PersonCaseBook(conn, settings, today, {r.student_id for r in rows})
    placed = book.place([person_reason(settings, r, r.student_id, today) for r in rows])
    cases = {p.case_id for p in placed}
    schools: dict[int, str | None] = {
        row.id: row.school_id
        for row in conn.execute(select(Case.id, Case.school_id).where(Case.id.in_(cases)))
    }
    now = utcnow()
    for row, where in zip(rows, placed, strict=True):
        # The case is open (new, reopened or joined): the status follows from its assignee.
        status = status_of("matched", "open", where.assignee_id)
        done = conn.execute(
            update(P)
            .where(P.id == row.id, P.case_id.is_(None))
            .values(case_id=where.case_id, referral_id=where.referral_id,
                    school_id=schools.get(where.case_id) or row.school_id,
                    referrer_status=status)
        ).rowcount  # fmt: skip
        if done != 1:
            raise _PlacedElsewhere(row.id)
        if status != "received":
            _tell_referrer(conn, settings, row.public_id, row.referrer_email, status,
                           row.received_at, now, row.student_id, where.case_id)  # fmt: skip
    # A reopened case changes what its earlier referrers hear; joining an open case does not.
    update_referrer_statuses(conn, settings, {p.case_id for p in placed if p.opened})
    return len(rows)


# -- what the referrer hears ---------------------------------------------------------------------


def email_channel(settings: Settings) -> str | None:
    """The channel that emails referrers: configured, or the first email channel."""
    if settings.referrals.email_channel:
        return settings.referrals.email_channel
    for channel in settings.channels:
        medium = getattr(channel, "medium", None) or ("email" if "email" in channel.kind else None)
        if medium == "email":
            return channel.name
    return None


def status_of(state: str, case_status: str | None, assignee: str | None) -> Status:
    """What a referral's state and its case say to the referrer, and nothing more."""
    if state == "rejected" or case_status == "closed":
        return "closed"
    if state == "matched" and case_status == "open" and assignee:
        return "assigned"
    return "received"


def visible_status(stored: str, received_at: datetime, now: datetime, settings: Settings) -> str:
    """ "assigned" shows only after the delay: a found student and a queued one look alike."""
    delay = timedelta(hours=settings.referrals.assigned_status_delay_hours)
    if stored == "assigned" and now < _aware(received_at) + delay:
        return "received"
    return stored


def _tell_referrer(
    conn: Connection,
    settings: Settings,
    public_id: str,
    email: str | None,
    state: str,
    received_at: datetime,
    now: datetime,
    student_id: str | None = None,
    case_id: int | None = None,
) -> None:
    """Queue the status email (when the referrer gave an address and a channel can email)."""
    channel = email_channel(settings)
    if not email or channel is None:
        return
    intent = referrer_status(channel, public_id, state, student_id, case_id)
    if state == "assigned":
        # Not before the delay: a found student and a queued one look alike to the referrer.
        delay = timedelta(hours=settings.referrals.assigned_status_delay_hours)
        intent["not_before"] = max(_aware(received_at) + delay, now)
    enqueue(conn, [intent])


def update_referrer_statuses(conn: Connection, settings: Settings, case_ids: Iterable[int]) -> int:
    """Bring the status of every person's referral on these cases up to date, in the caller's
    transaction, and queue the email for each change. Call it wherever a case opens, closes,
    reopens or changes hands (evaluation, staff tools, the cases API). Returns changes made."""
    ids = sorted(set(case_ids))
    now = utcnow()
    changed = 0
    for i in range(0, len(ids), 5000):
        q = (
            select(
                PersonReferral.id, PersonReferral.public_id, PersonReferral.state,
                PersonReferral.referrer_status, PersonReferral.referrer_email,
                PersonReferral.received_at, PersonReferral.student_id, PersonReferral.case_id,
                Case.status, Case.assignee_id,
            )
            .join(Case, Case.id == PersonReferral.case_id)
            .where(PersonReferral.case_id.in_(ids[i : i + 5000]))
        )  # fmt: skip
        for row in conn.execute(q).all():
            new = status_of(row.state, row.status, row.assignee_id)
            if new == row.referrer_status:
                continue
            conn.execute(
                update(PersonReferral)
                .where(PersonReferral.id == row.id)
                .values(referrer_status=new)
            )
            _tell_referrer(conn, settings, row.public_id, row.referrer_email, new,
                           row.received_at, now, row.student_id, row.case_id)  # fmt: skip
            changed += 1
    return changed


def status_for(
    engine: Engine, settings: Settings, public_id: str, token: str | None
) -> dict[str, Any] | None:
    """What `GET /referrals/{id}/status` shows the holder of the status token; None when the id
    is unknown or the token is not this referral's (one answer for both)."""
    if not token or not public_id.startswith(ID_PREFIX):
        return None
    with engine.connect() as conn:
        row = conn.execute(
            select(
                PersonReferral.public_id, PersonReferral.referrer_status,
                PersonReferral.received_at, PersonReferral.received_on,
                ReferralStatusToken.token_sha256,
            )
            .join(ReferralStatusToken,
                  ReferralStatusToken.person_referral_id == PersonReferral.id)
            .where(ReferralStatusToken.token_sha256 == digest(token))
        ).first()  # fmt: skip
    if row is None or not hmac.compare_digest(row.public_id.encode(), public_id.encode()):
        return None
    return {
        "id": row.public_id,
        "status": visible_status(row.referrer_status, row.received_at, utcnow(), settings),
        "received_on": row.received_on,
    }


STATUS_TEXT = {
    "received": (
        "{district}: referral received",
        "Thank you. {district} received your referral {id} on {day}. The student support team "
        "will review it.\n\nTo protect students' privacy we do not share details about a "
        "student. We will tell you when a staff member has it and when it is closed.\n\n"
        "This mailbox is not watched around the clock: if a student is in immediate danger, "
        "call 911.",
    ),
    "assigned": (
        "{district}: your referral {id} is with a staff member",
        "Your referral {id} to {district} is with a member of the student support team.",
    ),
    "closed": (
        "{district}: your referral {id} is closed",
        "Your referral {id} to {district} is closed. Thank you for reaching out.",
    ),
}


def status_message(settings: Settings, public_id: str, state: str, day: date) -> tuple[str, str]:
    """(subject, body): the referral's id and state, never the student, concern or note."""
    subject, body = STATUS_TEXT[state]
    values = {"district": settings.district.name, "id": public_id, "day": day.isoformat()}
    return subject.format(**values), body.format(**values)


def plan_status(deliverer: Deliverer, item: ClaimedItem) -> Plan:
    """The status email, read when sent: superseded when the referral has moved on."""
    from connectors.base import FamilyMessage
    from service.delivery import Send, Skip
    from service.errors import PermanentError
    from service.sms_text import body_digest

    public_id = str(item.payload.get("referral"))
    state = str(item.payload.get("state"))
    channel = deliverer.channels.get(item.target)
    if channel is None:
        raise PermanentError(f"no channel named {item.target!r} is configured")
    with deliverer.engine.connect() as conn:
        row = conn.execute(
            select(PersonReferral.referrer_email, PersonReferral.referrer_status,
                   PersonReferral.received_on)
            .where(PersonReferral.public_id == public_id)
        ).first()  # fmt: skip
    if row is None:
        return Skip("suppressed", "referral_gone")
    if not row.referrer_email:
        return Skip("suppressed", "no_address")
    if state != "received" and row.referrer_status != state:
        return Skip("superseded", f"the referral is {row.referrer_status} now")
    subject, body = status_message(deliverer.settings, public_id, state, row.received_on)
    message = FamilyMessage(row.referrer_email, "en", body, subject, None)
    record = {"channel": channel.name, "medium": "email", "to": row.referrer_email,
              "referral": public_id, "state": state, "body_digest": body_digest(body)}  # fmt: skip
    return Send(
        channel.name,
        channel.idempotency != "provider_key",
        lambda: channel.send(item.idempotency_key, message),
        record,
    )


def status_delivered(conn: Connection, item: ClaimedItem, now: datetime) -> None:
    """A status email about a matched referral tells an outsider that the school acted on a
    student: recorded like any disclosure (34 CFR 99.32)."""
    if (
        item.kind != REFERRER_STATUS
        or not item.student_id
        or item.payload.get("state") == ("received")
    ):
        return
    conn.execute(
        insert(Disclosure).values(
            student_id=item.student_id, outbox_id=item.id, disclosed_at=now,
            recipient=f"referrer of {item.payload.get('referral')} via {item.target}",
            recipient_kind="referrer", data_categories=["referral_status"], basis=STATUS_BASIS,
        )
    )  # fmt: skip


# -- staff: the list, one referral, the unmatched queue, resolving -------------------------------


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


def _person_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.public_id,
        "origin": "person",
        "state": row.state,
        "received_at": row.received_at,
        "student_id": row.student_id,
        "school_id": row.school_id,
        "case_id": row.case_id,
        "reason": "person_referral",
        "concerns": list(row.concerns or []),
        "urgency": row.urgency,
        "severity": SEVERITY_OF_URGENCY.get(row.urgency, "medium"),
    }


def _rule_summary(row: Any) -> dict[str, Any]:
    return {
        "id": f"{RULE_PREFIX}{row.id}",
        "origin": "rule",
        "state": "matched",
        "received_at": row.created_at,
        "student_id": row.student_id,
        "school_id": row.school_id,
        "case_id": row.case_id,
        "reason": row.reason,
        "concerns": [],
        "urgency": None,
        "severity": row.severity,
    }


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_referrals(
    engine: Engine,
    caller: Caller,
    state: str | None = None,
    origin: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """Referrals of both origins, newest first, within the caller's schools. A rule's referral
    is always matched (it is a case reason); a person's may be unmatched or rejected."""
    page = Page()
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        schools = allowed_schools(conn, caller.schools)
        if origin in (None, "person"):
            q = select(PersonReferral)
            if state:
                q = q.where(PersonReferral.state == state)
            if schools is not None:
                q = q.where(PersonReferral.school_id.in_(schools))
            total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
            q = q.order_by(PersonReferral.received_at.desc(), PersonReferral.id.desc())
            rows += [_person_summary(r) for r in conn.execute(q.limit(offset + limit))]
            page.total += total
        if origin in (None, "rule") and state in (None, "matched"):
            q2 = (
                select(Referral.id, Referral.student_id, Referral.case_id, Referral.reason,
                       Referral.severity, Referral.created_at, Case.school_id)
                .join(Case, Case.id == Referral.case_id)
                .where(Referral.origin == "rule")
            )  # fmt: skip
            if schools is not None:
                q2 = q2.where(Case.school_id.in_(schools))
            page.total += conn.execute(select(func.count()).select_from(q2.subquery())).scalar_one()
            q2 = q2.order_by(Referral.created_at.desc(), Referral.id.desc())
            rows += [_rule_summary(r) for r in conn.execute(q2.limit(offset + limit))]
    rows.sort(key=lambda r: _aware(r["received_at"]), reverse=True)
    page.items = rows[offset : offset + limit]
    return page


def unmatched_queue(engine: Engine, caller: Caller, limit: int = 50, offset: int = 0) -> Page:
    """Unmatched referrals, oldest first, with what the referrer said about the student."""
    with engine.connect() as conn:
        schools = allowed_schools(conn, caller.schools)
        q = select(PersonReferral).where(PersonReferral.state == "unmatched")
        if schools is not None:
            q = q.where(PersonReferral.school_id.in_(schools))
        total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        q = q.order_by(PersonReferral.received_at, PersonReferral.id).limit(limit).offset(offset)
        items = [_person_detail(r) for r in conn.execute(q)]
    return Page(items, total)


def _person_detail(row: Any) -> dict[str, Any]:
    detail = _person_summary(row)
    detail.update({
        "referrer": {"name": row.referrer_name, "role": row.referrer_role,
                     "relationship": row.relationship, "email": row.referrer_email},
        "note": row.note,
        "family_contact_ok": row.family_contact_ok,
        "identification": row.identification,
        "match": row.match,
        "status": row.referrer_status,
        "rejection_reason": row.rejection_reason,
        "resolved_at": row.resolved_at,
        "resolved_by": row.resolved_by,
    })  # fmt: skip
    return detail


def get_referral(engine: Engine, caller: Caller, referral_id: str) -> dict[str, Any] | None:
    """One referral in full, or None when unknown or outside the caller's schools."""
    with engine.connect() as conn:
        schools = allowed_schools(conn, caller.schools)
        if referral_id.startswith(RULE_PREFIX):
            number = referral_id.removeprefix(RULE_PREFIX)
            if not number.isdigit():
                return None
            row = conn.execute(
                select(Referral.id, Referral.student_id, Referral.case_id, Referral.reason,
                       Referral.severity, Referral.created_at, Referral.rule_id,
                       Referral.rule_version, Referral.evidence, Case.school_id)
                .join(Case, Case.id == Referral.case_id)
                .where(Referral.id == int(number), Referral.origin == "rule")
            ).first()  # fmt: skip
            if row is None or (schools is not None and row.school_id not in schools):
                return None
            detail = _rule_summary(row)
            detail.update(
                {"rule_id": row.rule_id, "rule_version": row.rule_version,
                 "evidence": row.evidence}
            )  # fmt: skip
            return detail
        found = conn.execute(
            select(PersonReferral).where(PersonReferral.public_id == referral_id)
        ).first()
        if found is None or (schools is not None and found.school_id not in schools):
            return None
        return _person_detail(found)


ResolveOutcome = Literal["matched", "rejected", "not_found", "not_unmatched", "unknown_student"]


def resolve(
    engine: Engine,
    settings: Settings,
    caller: Caller,
    referral_id: str,
    student_id: str | None = None,
    rejection: str | None = None,
) -> ResolveOutcome:
    """Staff say who an unmatched referral is about (it then joins or opens that student's case,
    as if it had matched), or reject it (the referrer hears "closed")."""
    for _attempt in range(5):
        try:
            with engine.begin() as conn:
                return _resolve_once(conn, settings, caller, referral_id, student_id, rejection)
        except IntegrityError:
            continue  # another request opened this student's case first: join it instead
    raise RuntimeError("the referral could not be resolved after repeated conflicts")


def _resolve_once(
    conn: Connection,
    settings: Settings,
    caller: Caller,
    referral_id: str,
    student_id: str | None,
    rejection: str | None,
) -> ResolveOutcome:
    now = utcnow()
    schools = allowed_schools(conn, caller.schools)
    row = conn.execute(
        select(PersonReferral.id, PersonReferral.state, PersonReferral.school_id,
               PersonReferral.public_id, PersonReferral.referrer_email,
               PersonReferral.received_at)
        .where(PersonReferral.public_id == referral_id)
        .with_for_update()
    ).first()  # fmt: skip
    if row is None or (schools is not None and row.school_id not in schools):
        return "not_found"
    if row.state != "unmatched":
        return "not_unmatched"
    student = None
    if rejection is None:
        student = conn.execute(
            select(Student.student_id, Student.school_id).where(
                Student.student_id == student_id, Student.active.is_(True)
            )
        ).first()
        if student is None or (schools is not None and student.school_id not in schools):
            return "unknown_student"
    # Claim the row (the first write): a concurrent resolve of the same referral finds it taken.
    claimed = conn.execute(
        update(PersonReferral)
        .where(PersonReferral.id == row.id, PersonReferral.state == "unmatched")
        .values(resolved_at=now, resolved_by=caller.name)
    ).rowcount
    if not claimed:
        return "not_unmatched"
    if rejection is not None:
        conn.execute(
            update(PersonReferral)
            .where(PersonReferral.id == row.id)
            .values(state="rejected", rejection_reason=rejection, referrer_status="closed")
        )
        _tell_referrer(conn, settings, row.public_id, row.referrer_email, "closed",
                       row.received_at, now)  # fmt: skip
        log.info("referral.rejected", referral=row.public_id, reason=rejection)
        return "rejected"
    assert student is not None
    conn.execute(
        update(PersonReferral)
        .where(PersonReferral.id == row.id)
        .values(match="staff", state="matched", student_id=student.student_id)
    )
    if _place_batch(conn, settings, 1, row.id) != 1:  # at once, the worker's way
        raise RuntimeError("a resolved referral was not placed")
    log.info("referral.resolved", referral=row.public_id)
    return "matched"
