"""A parent's FERPA request: every disclosure of one student's records (34 CFR 99.32).

`casebridge export-disclosures --student ID` lists, for the student named by id or student
number, each time data about them left casebridge: when, to whom (which tool or which family
contact, over which channel), what categories of data, for what, on which legal basis, and the
case. The disclosure log outlives purged cases, so the export does too.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select

from service.intents import DIGEST, FAMILY_NOTICE, FOLLOW_UP, REFERRER_STATUS, TASK_UPSERT
from service.models import Disclosure, OutboxItem, Student

# The column order is part of the format: a district's records office may script against it.
COLUMNS = (
    "disclosed_at",
    "student_id",
    "recipient",
    "recipient_kind",
    "data_categories",
    "purpose",
    "basis",
    "case_id",
    "disclosure_id",
)
PURPOSES = {
    TASK_UPSERT: "case task for the staff member supporting the student",
    DIGEST: "case manager's daily digest of new and changed cases",
    FAMILY_NOTICE: "community resources offered to the family",
    FOLLOW_UP: "asking the family whether the resources helped",
    REFERRER_STATUS: "telling the person who made a referral its status (received, assigned, "
    "closed)",
}


class UnknownStudent(LookupError):
    """No student, and no disclosure, goes by that id or student number."""


class AmbiguousStudent(LookupError):
    """More than one student goes by that id or student number."""


@dataclass(frozen=True)
class DisclosureExport:
    student_id: str
    rows: list[dict[str, Any]]


def find_student(engine: Engine, ident: str) -> str:
    """The student's id, from their id (sourcedId) or student number."""
    with engine.connect() as conn:
        by_id = conn.execute(select(Student.student_id).where(Student.student_id == ident)).first()
        if by_id is not None:
            return str(by_id[0])
        numbers = list(
            conn.execute(select(Student.student_id).where(Student.local_id == ident)).scalars()
        )
        if len(numbers) > 1:
            raise AmbiguousStudent(
                f"student number {ident!r} belongs to {len(numbers)} students "
                f"({', '.join(sorted(numbers))}): give the student id instead"
            )
        if numbers:
            return str(numbers[0])
        # A student gone from the roster still has the disclosures made about them.
        logged = conn.execute(
            select(func.count()).select_from(Disclosure).where(Disclosure.student_id == ident)
        ).scalar_one()
    if logged:
        return ident
    raise UnknownStudent(f"no student with id or student number {ident!r}")


def export_disclosures(engine: Engine, ident: str, timezone: str) -> DisclosureExport:
    """Every disclosure about the student, oldest first, times in the district's zone."""
    student_id = find_student(engine, ident)
    zone = ZoneInfo(timezone)
    q = (
        select(
            Disclosure.id, Disclosure.disclosed_at, Disclosure.student_id, Disclosure.recipient,
            Disclosure.recipient_kind, Disclosure.data_categories, Disclosure.basis,
            # Live rows: the outbox item says the case and the kind; purged ones kept a copy.
            func.coalesce(Disclosure.case_id, OutboxItem.case_id).label("case_id"),
            func.coalesce(Disclosure.purpose, OutboxItem.kind).label("purpose"),
        )
        .outerjoin(OutboxItem, OutboxItem.id == Disclosure.outbox_id)
        .where(Disclosure.student_id == student_id)
        .order_by(Disclosure.disclosed_at, Disclosure.id)
    )  # fmt: skip
    rows = []
    with engine.connect() as conn:
        for r in conn.execute(q):
            at = r.disclosed_at if r.disclosed_at.tzinfo else r.disclosed_at.replace(tzinfo=UTC)
            rows.append({
                "disclosed_at": at.astimezone(zone).isoformat(timespec="seconds"),
                "student_id": r.student_id,
                "recipient": r.recipient,
                "recipient_kind": r.recipient_kind,
                "data_categories": list(r.data_categories or []),
                "purpose": PURPOSES.get(r.purpose or "", r.purpose or ""),
                "basis": r.basis,
                "case_id": r.case_id,
                "disclosure_id": r.id,
            })  # fmt: skip
    return DisclosureExport(student_id, rows)


def write_csv(export: DisclosureExport, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in export.rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def write_json(export: DisclosureExport, out: TextIO, generated_at: datetime) -> None:
    document = {
        "student_id": export.student_id,
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "regulation": "34 CFR 99.32 record of disclosures",
        "columns": list(COLUMNS),
        "disclosures": [{c: row[c] for c in COLUMNS} for row in export.rows],
    }
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
