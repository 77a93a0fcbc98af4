"""Canonical tables: what every source maps into and every job reads from.

Source-keyed rows carry the source's natural key as primary key, plus `row_hash` (the mapped
content) and `src_chunk` (the content-defined chunk of the bulk file it last came from) so a
nightly re-import can skip unchanged data and find rows that vanished from a bulk file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-numbers a column declared exactly INTEGER PRIMARY KEY.
SerialId = BigInteger().with_variant(Integer(), "sqlite")
Key = String(128)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json}


class SourceRow:
    """Bookkeeping every source-keyed canonical row has."""

    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    row_hash: Mapped[int] = mapped_column(BigInteger, default=0)
    src_chunk: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source: Mapped[str] = mapped_column(String(64), default="")
    # The source's own id of the record (Ed-Fi `id`): survives a natural-key change, so the
    # changed record updates this row in place.
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class School(SourceRow, Base):
    __tablename__ = "schools"
    school_id: Mapped[str] = mapped_column(Key, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    org_type: Mapped[str] = mapped_column(String(32), default="school")
    identifier: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(Key)


class AcademicSession(SourceRow, Base):
    __tablename__ = "academic_sessions"
    session_id: Mapped[str] = mapped_column(Key, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    session_type: Mapped[str] = mapped_column(String(32))
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date] = mapped_column(Date)
    parent_id: Mapped[str | None] = mapped_column(Key)
    school_year: Mapped[str | None] = mapped_column(String(16))


class Course(SourceRow, Base):
    __tablename__ = "courses"
    course_id: Mapped[str] = mapped_column(Key, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    course_code: Mapped[str | None] = mapped_column(String(64))
    subjects: Mapped[str | None] = mapped_column(String(255))
    subject_codes: Mapped[str | None] = mapped_column(String(255))  # e.g. SCED "02"
    org_id: Mapped[str | None] = mapped_column(Key)


class SchoolClass(SourceRow, Base):
    __tablename__ = "classes"
    class_id: Mapped[str] = mapped_column(Key, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    course_id: Mapped[str | None] = mapped_column(Key)
    school_id: Mapped[str | None] = mapped_column(Key, index=True)
    class_type: Mapped[str | None] = mapped_column(String(32))
    subjects: Mapped[str | None] = mapped_column(String(255))
    subject_codes: Mapped[str | None] = mapped_column(String(255))


class Student(SourceRow, Base):
    __tablename__ = "students"
    student_id: Mapped[str] = mapped_column(Key, primary_key=True)
    local_id: Mapped[str | None] = mapped_column(String(64), index=True)
    first_name: Mapped[str] = mapped_column(String(128))
    last_name: Mapped[str] = mapped_column(String(128))
    grade_level: Mapped[str | None] = mapped_column(String(8))
    school_id: Mapped[str | None] = mapped_column(Key, index=True)
    email: Mapped[str | None] = mapped_column(String(255))


class Contact(SourceRow, Base):
    """A parent, guardian or other adult the school may reach about a student."""

    __tablename__ = "contacts"
    contact_id: Mapped[str] = mapped_column(Key, primary_key=True)
    first_name: Mapped[str] = mapped_column(String(128))
    last_name: Mapped[str] = mapped_column(String(128))
    relationship: Mapped[str] = mapped_column(String(32))  # parent | guardian | relatedContact
    is_guardian: Mapped[bool] = mapped_column(Boolean, default=False)
    email: Mapped[str | None] = mapped_column(String(255))
    sms_phone: Mapped[str | None] = mapped_column(String(20))  # E.164, able to take texts
    voice_phone: Mapped[str | None] = mapped_column(String(20))  # E.164
    language: Mapped[str] = mapped_column(String(8), default="en")
    do_not_contact: Mapped[bool] = mapped_column(Boolean, default=False)
    # doNotPublishIndicator on the chosen phone: usable to reach the family, never disclosed.
    phone_unlisted: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    # Consent evidence (TCPA): the family gave the number to the school for school matters.
    consent_basis: Mapped[str | None] = mapped_column(String(64))
    # Why a phone field the source sent gave no usable number ("sms:no_digits"), so staff see
    # "no textable number" instead of a silent gap.
    phone_issue: Mapped[str | None] = mapped_column(String(64))


class ContactPreference(Base):
    """Opt-outs and consent changes the family made to us; never overwritten by a sync."""

    __tablename__ = "contact_preferences"
    contact_id: Mapped[str] = mapped_column(Key, primary_key=True)
    sms_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "Stop everything", by any reasonable means: every channel.
    all_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(Json)
    # The SMS provider rejected this number (invalid, not a mobile): texts skip it until the SIS
    # gives a different one; email is used instead.
    sms_unusable_phone: Mapped[str | None] = mapped_column(String(32))


class StudentContact(SourceRow, Base):
    """The link between a student and an adult, with what the SIS says about it."""

    __tablename__ = "student_contacts"
    student_id: Mapped[str] = mapped_column(Key, primary_key=True)
    contact_id: Mapped[str] = mapped_column(Key, primary_key=True, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    # Ed-Fi keeps these on the association; NULL means the source did not say.
    relationship: Mapped[str | None] = mapped_column(String(64))
    is_guardian: Mapped[bool | None] = mapped_column(Boolean)
    primary_contact: Mapped[bool | None] = mapped_column(Boolean)
    lives_with: Mapped[bool | None] = mapped_column(Boolean)
    # contactRestrictions such as a court order: never contact this adult about this student.
    no_contact: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class UserRole(SourceRow, Base):
    """OneRoster 1.2 roles.csv rows: which role a user holds at which org."""

    __tablename__ = "user_roles"
    role_id: Mapped[str] = mapped_column(Key, primary_key=True)
    user_id: Mapped[str] = mapped_column(Key, index=True)
    role: Mapped[str] = mapped_column(String(32))
    role_type: Mapped[str | None] = mapped_column(String(16))
    org_id: Mapped[str | None] = mapped_column(Key)


class Enrollment(SourceRow, Base):
    __tablename__ = "enrollments"
    enrollment_id: Mapped[str] = mapped_column(Key, primary_key=True)
    user_id: Mapped[str] = mapped_column(Key, index=True)
    class_id: Mapped[str | None] = mapped_column(Key, index=True)
    school_id: Mapped[str | None] = mapped_column(Key)
    role: Mapped[str] = mapped_column(String(32))
    begin_date: Mapped[date | None] = mapped_column(Date)
    end_date: Mapped[date | None] = mapped_column(Date)
    grade_level: Mapped[str | None] = mapped_column(String(8))


class LineItem(SourceRow, Base):
    __tablename__ = "line_items"
    line_item_id: Mapped[str] = mapped_column(Key, primary_key=True)
    class_id: Mapped[str] = mapped_column(Key)
    grading_period_id: Mapped[str | None] = mapped_column(Key)
    title: Mapped[str] = mapped_column(String(255))


class Grade(SourceRow, Base):
    """A grading-period grade (a OneRoster result on a term-grade line item)."""

    __tablename__ = "grades"
    grade_id: Mapped[str] = mapped_column(Key, primary_key=True)
    student_id: Mapped[str] = mapped_column(Key, index=True)
    line_item_id: Mapped[str] = mapped_column(Key)
    class_id: Mapped[str | None] = mapped_column(Key)
    grading_period_id: Mapped[str | None] = mapped_column(Key)
    score: Mapped[float | None] = mapped_column(Float)
    letter: Mapped[str | None] = mapped_column(String(8))
    score_status: Mapped[str | None] = mapped_column(String(32))
    score_date: Mapped[date | None] = mapped_column(Date)


class CalendarDay(SourceRow, Base):
    __tablename__ = "calendar_days"
    school_id: Mapped[str] = mapped_column(Key, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    instructional: Mapped[bool] = mapped_column(Boolean)


class AttendanceEvent(SourceRow, Base):
    __tablename__ = "attendance_events"
    event_id: Mapped[str] = mapped_column(Key, primary_key=True)
    student_id: Mapped[str] = mapped_column(Key)
    school_id: Mapped[str | None] = mapped_column(Key)
    day: Mapped[date] = mapped_column(Date)
    period: Mapped[str | None] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))  # excused|unexcused|suspension|tardy|present
    code: Mapped[str] = mapped_column(String(32))
    __table_args__ = (Index("ix_attendance_events_student_day", "student_id", "day"),)


class DisciplineIncident(SourceRow, Base):
    __tablename__ = "discipline_incidents"
    incident_id: Mapped[str] = mapped_column(Key, primary_key=True)
    student_id: Mapped[str] = mapped_column(Key, index=True)
    school_id: Mapped[str | None] = mapped_column(Key)
    day: Mapped[date] = mapped_column(Date)
    behavior_code: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    action_code: Mapped[str | None] = mapped_column(String(32))
    action_days: Mapped[float | None] = mapped_column(Float)
    state_reportable: Mapped[bool] = mapped_column(Boolean, default=False)
    # Ed-Fi sends the incident and the action taken as separate records: an action row adds a
    # suspension without counting as a second incident.
    counts_as_incident: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=text("true")
    )


class DisciplineReport(SourceRow, Base):
    """An incident as the school reported it (Ed-Fi disciplineIncidents): its date and weight."""

    __tablename__ = "discipline_reports"
    report_id: Mapped[str] = mapped_column(Key, primary_key=True)  # incidentIdentifier|schoolId
    school_id: Mapped[str | None] = mapped_column(Key)
    day: Mapped[date] = mapped_column(Date)
    state_reportable: Mapped[bool] = mapped_column(Boolean, default=False)


class IngestChunk(Base):
    """Digests of the content-defined chunks of the last bulk file imported per (source, file)."""

    __tablename__ = "ingest_chunks"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    file: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    # The pull that last saw this chunk; a resumed full pull keeps its generation.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class SyncCursor(Base):
    __tablename__ = "sync_cursors"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncRun(Base):
    __tablename__ = "sync_runs"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stats: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)


class QuarantinedRecord(Base):
    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(64))
    record_key: Mapped[str | None] = mapped_column(String(255))
    location: Mapped[str | None] = mapped_column(String(255))  # file:line or URL
    reason: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    fingerprint: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_seen: Mapped[int] = mapped_column(Integer, default=1)
    # Set when the record later imported (a code map was fixed, it was deleted at the source).
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Retention blanked the payload (the row, reason and counts stay).
    payload_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        Index("uq_quarantine_source_fingerprint", "source", "fingerprint", unique=True),
    )


class StudentIndicators(Base):
    """The latest indicator values per student, recomputed set-based by each evaluation."""

    __tablename__ = "student_indicators"
    student_id: Mapped[str] = mapped_column(Key, primary_key=True)
    school_id: Mapped[str | None] = mapped_column(Key)
    grade_level: Mapped[float | None] = mapped_column(Float)
    as_of: Mapped[date] = mapped_column(Date)
    # NULL: unknown (no calendar for the student's school, no enrollment), never a perfect 1.0.
    enrolled_days: Mapped[float | None] = mapped_column(Float)
    absent_days: Mapped[float | None] = mapped_column(Float)
    unexcused_absent_days: Mapped[float | None] = mapped_column(Float)
    excused_absent_days: Mapped[float | None] = mapped_column(Float)
    suspension_absent_days: Mapped[float | None] = mapped_column(Float)
    absence_rate: Mapped[float | None] = mapped_column(Float)
    attendance_rate: Mapped[float | None] = mapped_column(Float)
    unexcused_absence_rate: Mapped[float | None] = mapped_column(Float)
    chronically_absent: Mapped[bool | None] = mapped_column(Boolean)
    approaching_chronic_absence: Mapped[bool | None] = mapped_column(Boolean)
    # Why attendance is unknown: "no_calendar" or "no_enrollment" (NULL when known).
    attendance_unknown: Mapped[str | None] = mapped_column(String(32))
    course_failures: Mapped[float] = mapped_column(Float)
    core_course_failures: Mapped[float] = mapped_column(Float)
    discipline_incidents: Mapped[float] = mapped_column(Float)
    suspensions: Mapped[float] = mapped_column(Float)
    state_reportable_incidents: Mapped[float] = mapped_column(Float)


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    student_id: Mapped[str] = mapped_column(Key, index=True)
    school_id: Mapped[str | None] = mapped_column(Key)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    severity: Mapped[str] = mapped_column(String(16), default="medium")
    assignee_id: Mapped[str | None] = mapped_column(String(64), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    close_reason: Mapped[str | None] = mapped_column(String(64))
    # First evaluation date on which none of the case's rule reasons fired any more.
    recovered_since: Mapped[date | None] = mapped_column(Date)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (
        # The database, not the code, guarantees one open case per student.
        Index(
            "uq_cases_one_open_per_student",
            "student_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )


class Referral(Base):
    __tablename__ = "referrals"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    student_id: Mapped[str] = mapped_column(Key, index=True)
    origin: Mapped[str] = mapped_column(String(16))  # rule | person
    rule_id: Mapped[str | None] = mapped_column(String(64))
    rule_version: Mapped[int | None] = mapped_column(Integer)
    rule_expression: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    resource_categories: Mapped[list[Any]] = mapped_column(Json, default=list)
    evidence: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_fired_on: Mapped[date | None] = mapped_column(Date)
    __table_args__ = (Index("uq_referrals_case_rule", "case_id", "rule_id", unique=True),)


class CaseEvent(Base):
    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Who changed the case and where, when a person did it in a staff tool (None: evaluation).
    actor: Mapped[str | None] = mapped_column(String(255))
    via: Mapped[str | None] = mapped_column(String(64))


class OutboxItem(Base):
    """An intent: what should happen outside (`task_upsert`, `family_notice`), not the text.

    Rendering, address choice and send-time policy happen when a worker delivers it.
    Status: pending -> (sending) -> delivered | dead | needs_review | suppressed | superseded.
    """

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # task_upsert | family_notice
    # A destination's name (tasks); "family" until a channel is chosen at send time (notices).
    target: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    student_id: Mapped[str | None] = mapped_column(Key)
    contact_id: Mapped[str | None] = mapped_column(Key, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)  # the intent's parameters
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Why it is in that status: "opted_out", "quiet_hours", "reconcile: not found"...
    reason: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # host:pid of the worker
    # Fencing token of the current claim: every mark checks it, so a worker that lost its
    # lease cannot mark an item another worker holds now.
    claim_token: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(255))
    # What was (or is being) sent: channel, address, resource ids; reconcile reads it.
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sending_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)


@dataclass(slots=True)
class ClaimedItem:
    """An outbox row as a worker holds it while delivering: the same columns as `OutboxItem`,
    as a plain object (building ORM instances was a tenth of a dispatcher's time)."""

    id: int
    idempotency_key: str
    kind: str
    target: str
    case_id: int | None
    student_id: str | None
    contact_id: str | None
    payload: dict[str, Any]
    status: str
    reason: str | None
    attempts: int
    next_attempt_at: datetime
    claimed_until: datetime | None
    claimed_by: str | None
    claim_token: str | None
    last_error: str | None
    external_id: str | None
    result: dict[str, Any] | None
    created_at: datetime
    sending_at: datetime | None
    delivered_at: datetime | None


class DeliveryLink(Base):
    """Our earlier item in a tool that issues its own ids: later revisions update it."""

    __tablename__ = "delivery_links"
    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. "case-12"
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(255))  # ETag or the tool's version
    last_revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Disclosure(Base):
    """34 CFR 99.32: what student data left the system, to whom, when and on what basis."""

    __tablename__ = "disclosures"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    student_id: Mapped[str] = mapped_column(Key, index=True)
    recipient: Mapped[str] = mapped_column(String(255))
    recipient_kind: Mapped[str] = mapped_column(String(32))  # staff_tool | family
    data_categories: Mapped[list[Any]] = mapped_column(Json)
    basis: Mapped[str] = mapped_column(String(255))
    # No foreign key: the record of disclosures outlives the outbox rows and cases retention
    # purges (34 CFR 99.32), so it keeps the case and what the disclosure was for itself.
    outbox_id: Mapped[int | None] = mapped_column(SerialId)
    disclosed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    case_id: Mapped[int | None] = mapped_column(SerialId, index=True)
    purpose: Mapped[str | None] = mapped_column(String(32))  # the outbox kind: task_upsert...


class JobRun(Base):
    """One firing of a scheduled job for one slot of its schedule: the unique key makes a second
    firing of the same slot (a new leader catching up, a race) impossible."""

    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(64))
    slot: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    holder: Mapped[str] = mapped_column(String(128))  # host:pid of the scheduler that fired it
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(255))
    __table_args__ = (Index("uq_job_runs_job_slot", "job", "slot", unique=True),)


class SchedulerHeartbeat(Base):
    """The leading scheduler's heartbeat, shown by readiness checks."""

    __tablename__ = "scheduler_heartbeat"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # "leader"
    holder: Mapped[str] = mapped_column(String(128))
    elected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A caller of the HTTP API. Only the SHA-256 of the token is stored: a token is 256 random
    bits, so a plain digest cannot be reversed, and a lost token is revoked and replaced."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    scopes: Mapped[list[Any]] = mapped_column(Json)
    schools: Mapped[list[Any] | None] = mapped_column(Json)  # None: every school
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- families (issue 8): consent history, provider message states, send-rate slots -------------


class ConsentEvent(Base):
    """Every consent change a family made, with its evidence, kept (TCPA: at least 4 years).

    `contact_preferences` says where a contact stands now; this says how it got there.
    """

    __tablename__ = "consent_events"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(Key, index=True)
    # opt_out | opt_in | address_unusable
    action: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(16))  # sms | email | all
    # sms_reply | carrier_opt_out | unsubscribe_link | provider_error
    via: Mapped[str] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any]] = mapped_column(Json)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InboundMessage(Base):
    """A text a family sent us, kept as received; the provider's id makes a retried webhook
    one message (one action, at most one confirmation)."""

    __tablename__ = "inbound_messages"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Twilio MessageSid
    channel: Mapped[str] = mapped_column(String(64))
    from_address: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text)
    # opt_out | opt_in | help | other
    action: Mapped[str] = mapped_column(String(16))
    contact_ids: Mapped[list[Any]] = mapped_column(Json)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MessageStatus(Base):
    """A provider's delivery state of one message we sent; only ever moves forward."""

    __tablename__ = "message_statuses"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Twilio MessageSid
    channel: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SendRate(Base):
    """The next free send slot per sender (seconds since the epoch), shared by every worker."""

    __tablename__ = "send_rates"
    sender: Mapped[str] = mapped_column(String(128), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)


class CommunityResource(Base):
    """A service from an imported resource directory (Open Referral HSDS 3.0).

    Re-imports update in place; a service that vanished from its directory is retired (inactive,
    `retired_at`), never deleted, so what families were sent stays explainable.
    """

    __tablename__ = "community_resources"
    resource_id: Mapped[str] = mapped_column(Key, primary_key=True)  # the HSDS service id
    directory: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str | None] = mapped_column(String(64))  # ours, mapped from taxonomy terms
    name: Mapped[str] = mapped_column(String(255))
    organization: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(32))  # E.164 when it could be read
    url: Mapped[str | None] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean)
    languages: Mapped[list[Any]] = mapped_column(Json)  # ISO 639-1 codes
    minimum_age: Mapped[float | None] = mapped_column(Float)
    maximum_age: Mapped[float | None] = mapped_column(Float)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    assured_date: Mapped[date | None] = mapped_column(Date)
    notes: Mapped[list[Any]] = mapped_column(Json)  # fields dropped on import, and why
    content_hash: Mapped[str] = mapped_column(String(32))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ResourceQuarantine(Base):
    """A directory record that could not be used, with the reason; the previous version stays."""

    __tablename__ = "resource_quarantine"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    directory: Mapped[str] = mapped_column(String(64), index=True)
    record_id: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CaseReply(Base):
    """A family's answer to a follow-up ("did the resources help?"), kept on the case.

    answer: got_help | no_help | need_other | unrecognised (the text is kept for a person).
    """

    __tablename__ = "case_replies"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    contact_id: Mapped[str] = mapped_column(Key)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))  # the follow-up
    answer: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    message_sid: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ResourceLink(Base):
    """A short, opaque, expiring link to a page listing resources in one language.

    A text names what fits in its segments and links the rest. The page holds resources only:
    no student, no family, no reason.
    """

    __tablename__ = "resource_links"
    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_ids: Mapped[list[Any]] = mapped_column(Json)
    language: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ToolStatusReceipt(Base):
    """A status report from a staff tool, kept so a redelivered webhook changes nothing twice."""

    __tablename__ = "tool_status_receipts"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # the destination's name
    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # webhook-id
    # No foreign key on purpose: a report naming an unknown case is recorded as refused.
    case_id: Mapped[int | None] = mapped_column(SerialId)
    outcome: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- person-based referrals (issue 10) -----------------------------------------------------------


class StudentDemographics(SourceRow, Base):
    """What OneRoster's `demographics.csv` says about a student that a referral can be matched
    on: the birth date. Kept apart from `students`, which each users.csv import rewrites whole."""

    __tablename__ = "student_demographics"
    student_id: Mapped[str] = mapped_column(Key, primary_key=True)
    birth_date: Mapped[date | None] = mapped_column(Date, index=True)


class PersonReferral(Base):
    """A concern a person reported through `POST /referrals`, as they sent it, and what became
    of it: matched to a student (it then has a case reason in `referrals`), waiting for staff to
    say who the student is, or rejected.

    The referrer's status token is never stored; `referral_status_tokens` holds its SHA-256.
    """

    __tablename__ = "person_referrals"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    # What callers see: random, so ids say nothing about how many referrals a district gets.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_on: Mapped[date] = mapped_column(Date)  # the district's date
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # The same referrer, student, concerns and day through the same token: one referral.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    referrer_name: Mapped[str] = mapped_column(String(255))
    referrer_role: Mapped[str] = mapped_column(String(32))
    referrer_email: Mapped[str | None] = mapped_column(String(255))
    relationship: Mapped[str] = mapped_column(String(128))
    concerns: Mapped[list[Any]] = mapped_column(Json)
    note: Mapped[str] = mapped_column(Text)
    urgency: Mapped[str] = mapped_column(String(16))  # routine | soon | urgent
    family_contact_ok: Mapped[bool] = mapped_column(Boolean)
    # The student as the referrer named them (local id, names, school, birth date).
    identification: Mapped[dict[str, Any]] = mapped_column(Json)
    # The student's school once matched, else the school as given (school-limited tokens).
    school_id: Mapped[str | None] = mapped_column(Key, index=True)
    # How the student was found (local_id, name_school_birth_date, staff) or why not.
    match: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)  # matched | unmatched | rejected
    student_id: Mapped[str | None] = mapped_column(Key, index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
    rejection_reason: Mapped[str | None] = mapped_column(String(32))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    # What the referrer has been told: received | assigned | closed.
    referrer_status: Mapped[str] = mapped_column(String(16))
    __table_args__ = (
        Index("uq_person_referrals_token_key", "token_id", "idempotency_key", unique=True),
    )


class ReferralStatusToken(Base):
    """The SHA-256 of a status token given to a referrer (a replayed POST gets a new one)."""

    __tablename__ = "referral_status_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_referral_id: Mapped[int] = mapped_column(ForeignKey("person_referrals.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- the API's jobs and the destinations' health (issue 10) -------------------------------------


class JobRequest(Base):
    """A job someone asked for through the API (`POST /jobs/sync`): a worker claims it.

    At most one request per job waits and at most one runs (the partial unique indexes), so a
    job asked for twice while one waits is run once, and two workers never run the same job side
    by side. A worker that dies while running leaves its lease to expire; another takes it over.
    """

    __tablename__ = "job_requests"
    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(32))  # sync | evaluate | dispatch
    state: Mapped[str] = mapped_column(String(16))  # requested | running | succeeded | failed
    requested_by: Mapped[str] = mapped_column(String(128))  # the token's name
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    holder: Mapped[str | None] = mapped_column(String(128))  # host:pid of the worker
    claim_token: Mapped[str | None] = mapped_column(String(36))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)  # counts only, never records
    __table_args__ = (
        Index(
            "uq_job_requests_waiting",
            "job",
            unique=True,
            sqlite_where=text("state = 'requested'"),
            postgresql_where=text("state = 'requested'"),
        ),
        Index(
            "uq_job_requests_running",
            "job",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )


class TargetHealth(Base):
    """A destination's circuit breaker as last seen by any worker: the breaker lives in the
    worker process, and `/readyz` and `/metrics` run in another, so each change is written here."""

    __tablename__ = "target_health"
    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # open | closed
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row, when it opened
    open_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    holder: Mapped[str] = mapped_column(String(128))  # host:pid of the worker that saw it
