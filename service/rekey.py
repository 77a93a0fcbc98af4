"""Carry a record forward when its natural key changes, instead of adding it beside the old one.

Ed-Fi reports natural-key changes in `/keyChanges` and keeps a record's `id` across them. A row
whose key changed is re-keyed in place; a person (a student, a contact) also takes everything
that points at them along: enrollments, attendance, links, cases, referrals, outbox history,
disclosures, opt-outs. The referring columns are found from the schema, so a table added later
is carried too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import Column, Connection, Table, and_, exists, select, update
from sqlalchemy.exc import IntegrityError

from service.bulk import table
from service.models import Base

log = structlog.get_logger(__name__)

# The person tables and the column names that refer to them elsewhere.
SLICE = 5000
PEOPLE = {"students": ("student_id", "user_id"), "contacts": ("contact_id",)}


def references(person_table: str) -> list[Column[Any]]:
    """Every column outside the person table that holds that person's id."""
    names = PEOPLE[person_table]
    out = []
    for t in Base.metadata.sorted_tables:
        if t.name == person_table:
            continue
        for name in names:
            if name in t.c:
                out.append(t.c[name])
    return out


def _where(t: Table, key: dict[str, Any]) -> Any:
    return and_(*(t.c[k] == v for k, v in key.items()))


def rekey(conn: Connection, source: str, table_name: str, old: dict[str, Any],
          new: dict[str, Any]) -> int:  # fmt: skip
    """Give the row keyed `old` the key `new`; returns rows re-keyed (0 or 1).

    When a row with the new key is already there (imported before its id was known), the old
    one is deactivated instead. A person's references move either way.
    """
    if old == new:
        return 0
    t = table(table_name)
    pk = [c.name for c in t.primary_key.columns]
    if set(old) != set(pk) or set(new) != set(pk):
        return 0
    mine = and_(_where(t, old), t.c.source == source)
    if conn.execute(select(exists().where(_where(t, new)))).scalar():
        conn.execute(update(t).where(mine, t.c.active.is_(True)).values(active=False, row_hash=0))
        moved = 0
    else:
        moved = conn.execute(update(t).where(mine).values(**new)).rowcount or 0
    if table_name in PEOPLE:
        (column,) = pk
        move_person(conn, table_name, str(old[column]), str(new[column]))
    return moved


def move_person(conn: Connection, person_table: str, old: str, new: str) -> None:
    """Point everything that refers to person `old` at `new` (one person, two keys)."""
    carried = left = 0
    for column in references(person_table):
        t = column.table
        try:
            with conn.begin_nested():
                carried += conn.execute(
                    update(t).where(column == old).values({column.name: new})
                ).rowcount
            continue
        except IntegrityError:
            pass
        # A row for the new key already exists (a link, today's indicators, an open case):
        # move the rows that do not collide, one at a time, and leave the others.
        pk = [c.name for c in t.primary_key.columns]
        for key in conn.execute(select(*(t.c[k] for k in pk)).where(column == old)).all():
            where = _where(t, dict(zip(pk, key, strict=True)))
            try:
                with conn.begin_nested():
                    conn.execute(update(t).where(where).values({column.name: new}))
                carried += 1
            except IntegrityError:
                left += 1
    log.info("rekey.person", table=person_table, carried=carried, left=left)


def rekey_by_record_id(conn: Connection, source: str, table_name: str,
                       rows: Sequence[tuple[str, dict[str, Any]]]) -> int:  # fmt: skip
    """Rows about to be merged, by the source's record id: any stored under another key (the
    record's natural key changed) are re-keyed first, so the merge updates them in place."""
    t = table(table_name)
    if "resource_id" not in t.c or not rows:
        return 0
    pk = [c.name for c in t.primary_key.columns]
    wanted = {rid: key for rid, key in rows}
    ids = list(wanted)
    stored: list[Any] = []
    for i in range(0, len(ids), SLICE):
        stored += conn.execute(
            select(t.c.resource_id, *(t.c[k] for k in pk)).where(
                t.c.resource_id.in_(ids[i : i + SLICE]), t.c.source == source
            )
        ).all()
    moved = 0
    for rid, *values in stored:
        old = dict(zip(pk, values, strict=True))
        new = wanted.get(rid)
        if new is not None and old != new:
            moved += rekey(conn, source, table_name, old, new)
    return moved
