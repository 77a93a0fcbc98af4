"""Checks the importer runs so bad input is quarantined or refused, never silently wrong.

Kept apart from `service/ingest.py` (the merge machinery) so each check reads on its own:
rejected rows (bad bytes), values longer than their column, the mass-deactivation guard,
guardian links to people who do not exist, and naming the quarantined row behind a knock-on
`unknown_student`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, and_, func, not_, or_, select, update

from connectors.base import RawRow
from connectors.sources.csv_chunks import REJECT, REJECT_DETAIL
from service.bulk import table
from service.models import QuarantinedRecord

PAYLOAD_VALUE_MAX = 300  # a 10 MB field is kept as its start and its size


def canonical_header(header: list[str], known: Iterable[str]) -> list[str]:
    """Column names matched case-insensitively to the names the mapping knows."""
    by_lower = {k.lower(): k for k in known}
    return [h if h in by_lower.values() else by_lower.get(h.lower(), h) for h in header]


def rejected(raw: RawRow) -> tuple[str, str] | None:
    """(reason, detail) when the reader could not make a row of these bytes."""
    reason = raw.data.get(REJECT)
    return (reason, raw.data.get(REJECT_DETAIL, "")) if reason else None


def safe_payload(data: dict[str, Any]) -> dict[str, Any]:
    """What a quarantine row keeps of a record: no NUL (PostgreSQL refuses it), no 10 MB."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in (REJECT, REJECT_DETAIL):
            continue
        if isinstance(value, str):
            if "\x00" in value:
                value = value.replace("\x00", "\\x00")
            if len(value) > PAYLOAD_VALUE_MAX:
                value = f"{value[:PAYLOAD_VALUE_MAX]}... ({len(value):,} characters)"
        out[key] = value
    return out


_LIMITS: dict[str, list[tuple[str, int]]] = {}


def too_long(table_name: str, values: dict[str, Any]) -> str | None:
    """Which value would not fit its column (PostgreSQL fails the whole batch on one)."""
    limits = _LIMITS.get(table_name)
    if limits is None:
        limits = _LIMITS[table_name] = [
            (c.name, c.type.length)
            for c in table(table_name).columns
            if isinstance(c.type, String) and c.type.length
        ]
    for name, length in limits:
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            return f"{name} is {len(value):,} characters; the column holds {length}"
    return None


def knock_on_causes(conn: Connection, source: str, refs: set[str]) -> dict[str, str]:
    """ref -> the quarantined record with that key (sourcedId or student number), if any."""
    if not refs:
        return {}
    q = QuarantinedRecord
    keys = sorted(refs)
    found: dict[str, str] = {}
    ident = q.payload["identifier"].as_string()
    rows = conn.execute(
        select(q.id, q.record_key, ident, q.location, q.reason).where(
            or_(q.record_key.in_(keys), ident.in_(keys)),
            q.reason.not_in(("unknown_student", "unknown_person")),
        )
    )
    for qid, key, number, location, reason in rows:
        for ref in (key, number):
            if ref in refs and ref not in found:
                found[ref] = f"its record was quarantined: #{qid} at {location} ({reason})"
    return found


@dataclass
class DeactivationCheck:
    table: str
    would: int
    active: int


def deactivation_counts(
    conn: Connection, source: str, tables: tuple[str, ...], keep: Any
) -> list[DeactivationCheck]:
    """Per table: active rows of this source the bulk finish would deactivate, and all active.

    `keep` selects the chunk digests that stay (every current chunk of the source)."""
    out: list[DeactivationCheck] = []
    for name in tables:
        t = table(name)
        mine = and_(t.c.source == source, t.c.active.is_(True))
        gone = or_(t.c.src_chunk.is_(None), t.c.src_chunk.not_in(keep))
        would = conn.execute(select(func.count()).where(mine, gone)).scalar_one()
        active = conn.execute(select(func.count()).where(mine)).scalar_one()
        out.append(DeactivationCheck(name, int(would), int(active)))
    return out


def dangling_links(conn: Connection, source: str) -> list[tuple[str, str, str]]:
    """Active guardian links of this source whose student or contact does not exist (active):
    (student_id, contact_id, which side is missing)."""
    sc, st, ct = table("student_contacts"), table("students"), table("contacts")
    has_student = (
        select(st.c.student_id)
        .where(st.c.student_id == sc.c.student_id, st.c.active.is_(True))
        .exists()
    )
    has_contact = (
        select(ct.c.contact_id)
        .where(ct.c.contact_id == sc.c.contact_id, ct.c.active.is_(True))
        .exists()
    )
    rows = conn.execute(
        select(sc.c.student_id, sc.c.contact_id, has_student, has_contact).where(
            sc.c.source == source,
            sc.c.active.is_(True),
            or_(not_(has_student), not_(has_contact)),
        )
    )
    return [(s, c, "student" if not hs else "contact") for s, c, hs, _hc in rows]


def drop_links(conn: Connection, source: str, links: list[tuple[str, str, str]]) -> None:
    sc = table("student_contacts")
    for student, contact, _side in links:
        conn.execute(
            update(sc)
            .where(sc.c.source == source, sc.c.student_id == student, sc.c.contact_id == contact)
            .values(active=False, row_hash=0)
        )
