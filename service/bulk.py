"""Set-based writes shared by every importer: stage a batch, then merge it with two statements.

PostgreSQL loads the stage with COPY and SQLite with executemany; the merge SQL is the same on
both. Rows whose content hash did not change are not written at all.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from service.models import Base

BOOKKEEPING = ("row_hash", "src_chunk", "source")
SMALL_BATCH = 50  # rows `insert_new` writes in one statement rather than through a stage


def table(name: str) -> Table:
    return Base.metadata.tables[name]


def dialect_insert(conn: Connection, target: Table) -> Any:
    """INSERT with ON CONFLICT support on either database."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    return sqlite.insert(target)


def _stage(conn: Connection, target: Table, columns: Sequence[str] | None = None) -> str:
    name = f"stage_{target.name}"
    cols = ", ".join(columns or [c.name for c in target.columns])
    conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {cols} FROM {target.name} WHERE 1=0"
        )
    )
    conn.execute(
        text(f"{'TRUNCATE' if conn.dialect.name == 'postgresql' else 'DELETE FROM'} {name}")
    )
    return name


def load_rows(
    conn: Connection, target: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Append rows as fast as the driver allows (COPY on PostgreSQL)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cur.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    raw = conn.connection.dbapi_connection
    raw.cursor().executemany(  # type: ignore[union-attr]
        f"INSERT INTO {target} ({', '.join(columns)}) VALUES ({marks})", rows
    )


def merge(
    conn: Connection,
    target: Table,
    rows: Sequence[tuple[Any, ...]],
    track_chunks: bool,
    direct: bool = False,
) -> tuple[int, int]:
    """Upsert `rows` (all columns, in table order) by primary key; returns (inserted, updated).

    `direct`: the table was empty when this stream began (a first import), so the rows most
    likely collide with nothing: write them straight into the table, with no stage. A key seen
    earlier in the same stream rolls that back to a savepoint and the batch merges as usual.
    """
    if not rows:
        return 0, 0
    columns = [c.name for c in target.columns]
    if direct:
        # The driver's own error: load_rows talks to the DBAPI cursor, below SQLAlchemy.
        duplicate = conn.dialect.loaded_dbapi.IntegrityError
        try:
            with conn.begin_nested():
                load_rows(conn, target.name, columns, rows)
            return len(rows), 0
        except (IntegrityError, duplicate):
            pass
    stage = _stage(conn, target)
    load_rows(conn, stage, columns, rows)
    pk = [c.name for c in target.primary_key.columns]
    match = " AND ".join(f"{target.name}.{k} = s.{k}" for k in pk)
    settable = [c for c in columns if c not in pk]
    assignments = ", ".join(f"{c} = s.{c}" for c in settable)
    updated = conn.execute(
        text(
            f"UPDATE {target.name} SET {assignments} FROM {stage} AS s "
            f"WHERE {match} AND {target.name}.row_hash <> s.row_hash"
        )
    ).rowcount
    if track_chunks:
        # Same content in a different chunk: move the bookkeeping without counting an update.
        conn.execute(
            text(
                f"UPDATE {target.name} SET src_chunk = s.src_chunk, source = s.source "
                f"FROM {stage} AS s WHERE {match} AND {target.name}.row_hash = s.row_hash "
                f"AND ({target.name}.src_chunk IS NULL OR {target.name}.src_chunk <> s.src_chunk)"
            )
        )
    col_list = ", ".join(columns)
    inserted = conn.execute(
        text(
            f"INSERT INTO {target.name} ({col_list}) SELECT {col_list} FROM {stage} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target.name} WHERE {match})"
        )
    ).rowcount
    return inserted, updated


def _sqlite_datetime(value: datetime | None) -> str | None:
    """The text SQLAlchemy itself stores for a DateTime on SQLite (UTC, no offset)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _driver_rows(
    conn: Connection, target: Table, rows: Sequence[dict[str, Any]]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Rows as the driver takes them: JSON serialised once, datetimes as SQLAlchemy stores them."""
    columns = list(rows[0])
    convert: list[tuple[int, Callable[[Any], Any]]] = []
    for n, name in enumerate(columns):
        kind = target.c[name].type
        if isinstance(kind, JSON):
            convert.append((n, lambda v: json.dumps(v, default=str)))
        elif isinstance(kind, DateTime) and conn.dialect.name == "sqlite":
            convert.append((n, _sqlite_datetime))
    getter = operator.itemgetter(*columns)
    out = []
    for row in rows:
        values = list(getter(row))
        for n, fn in convert:
            values[n] = fn(values[n])
        out.append(tuple(values))
    return columns, out


def insert_many(conn: Connection, target: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Plain inserts at driver speed (COPY on PostgreSQL), in the caller's transaction."""
    if rows:
        columns, values = _driver_rows(conn, target, rows)
        load_rows(conn, target.name, columns, values)


def insert_new(conn: Connection, target: Table, key: str, rows: Sequence[dict[str, Any]]) -> int:
    """Insert the rows whose `key` is not there yet; returns how many were new."""
    if not rows:
        return 0
    if len(rows) <= SMALL_BATCH:
        # A few rows (a referral's tasks, a reply's notice): one multi-row INSERT, instead of
        # four round trips to stage them. The rows it returns are the new ones (psycopg's
        # rowcount for it is -1).
        statement = dialect_insert(conn, target).values(list(rows))
        statement = statement.on_conflict_do_nothing(index_elements=[key]).returning(target.c[key])
        return len(conn.execute(statement).all())
    columns, values = _driver_rows(conn, target, rows)
    stage = _stage(conn, target, columns)
    load_rows(conn, stage, columns, values)
    cols = ", ".join(columns)
    return conn.execute(
        text(
            # "WHERE true": SQLite would read ON CONFLICT as part of a join without it.
            f"INSERT INTO {target.name} ({cols}) SELECT {cols} FROM {stage} WHERE true "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
    ).rowcount
