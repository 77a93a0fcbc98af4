"""Import one source: read chunks, map rows, merge them set-based, quarantine what fails.

Files: a chunk's digest is stored in the same transaction as its rows, so a run killed anywhere
resumes by skipping what already committed and ends with the same data as an uninterrupted run.
APIs: the source's cursor is saved with the rows of the window it closes. Either way, a bulk
stream (a full file, a full pull) then deactivates, never deletes, rows that are gone.
"""

from __future__ import annotations

import difflib
import hashlib
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, String, any_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from connectors.base import Chunk, RawRow, Source, Stream, StreamFailed
from connectors.sources.csv_chunks import digest64
from mappings.spec import EntityMapping, Lookups
from service.bulk import BOOKKEEPING, dialect_insert, merge, table
from service.clock import utcnow
from service.errors import BadRecord
from service.ingest_checks import (
    canonical_header,
    dangling_links,
    deactivation_counts,
    drop_links,
    knock_on_causes,
    rejected,
    safe_payload,
    too_long,
)
from service.models import School, Student, SyncRun, UserRole
from service.rekey import rekey, rekey_by_record_id

log = structlog.get_logger(__name__)

# Bump when a mapping's output for the same input changes: unchanged chunks are then re-read.
MAPPING_VERSION = b"mappings-v2"
BATCH_ROWS = 8000
LOOKUP_SLICE = 5000

ProgressFn = Callable[[str, int], None]


@dataclass
class EntityStats:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    deactivated: int = 0
    rekeyed: int = 0  # rows whose natural key changed, carried forward in place
    unchanged: int = 0  # rows in chunks skipped as already imported
    ignored: int = 0  # rows that map to nothing we keep (teachers in users.csv)
    failed: str | None = None  # why the stream stopped early (refused, incomplete pull)
    quarantined: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    # Why the stream was skipped or refused (a missing file, a bad header, the deactivation
    # guard): the sync then exits non-zero. None: it ran.
    refused: str | None = None
    # table -> [inserted, updated, deactivated], so guardians and links count apart from students
    tables: dict[str, list[int]] = field(default_factory=dict)
    # Contacts with a phone field that gave no usable number (active, after this stream).
    unusable_phones: int = 0

    def table_counts(self, name: str) -> list[int]:
        return self.tables.setdefault(name, [0, 0, 0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "deactivated": self.deactivated,
            "rekeyed": self.rekeyed,
            "unchanged": self.unchanged,
            "ignored": self.ignored,
            "failed": self.failed,
            "quarantined": dict(self.quarantined),
            "problems": list(self.problems),
            "refused": self.refused,
            "tables": dict(self.tables),
            "unusable_phones": self.unusable_phones,
        }


@dataclass
class SyncReport:
    source: str
    entities: dict[str, EntityStats] = field(default_factory=dict)
    error: str | None = None

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.entities.values())

    def quarantined(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for s in self.entities.values():
            out.update(s.quarantined)
        return out

    def refused(self) -> list[str]:
        """Every stream that was skipped or refused, with why."""
        return [
            f"{e}: {s.refused or s.failed}"
            for e, s in self.entities.items()
            if s.refused or s.failed  # skipped, refused, or stopped early (403, short pull)
        ]


def _row_digest(values: tuple[Any, ...]) -> int:
    raw = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def quarantine(
    conn: Connection, source: str, entity: str, raw: RawRow, reason: str, detail: str
) -> None:
    """Keep the record, its reason and where it came from; the same bad record is counted once."""
    now = utcnow()
    payload = safe_payload(raw.data)
    fingerprint = digest64(
        source.encode(), entity.encode(), reason.encode(), repr(sorted(payload.items())).encode()
    )
    qt = table("quarantine")
    stmt = dialect_insert(conn, qt).values(
        source=source,
        entity=entity,
        record_key=(payload.get("sourcedId") or raw.record_id or "")[:255] or None,
        location=raw.location[:255],
        reason=reason,
        detail=detail,
        payload=payload,
        fingerprint=fingerprint,
        first_seen=now,
        last_seen=now,
        times_seen=1,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "fingerprint"],
        set_={
            "last_seen": now,
            "times_seen": qt.c.times_seen + 1,
            "location": raw.location[:255],
            "resolved_at": None,  # seen bad again: open
            # Retention may have blanked it: the record as it arrives now (same fingerprint).
            "payload": payload,
            "payload_purged_at": None,
        },
    )
    conn.execute(stmt)


def _among(conn: Connection, column: Any, keys: list[str]) -> Any:
    """`column IN keys`; on PostgreSQL one array parameter instead of thousands of them."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("keys", value=keys, type_=ARRAY(String())))
    return column.in_(keys)


def _lookup(conn: Connection, need: str, keys: list[str], into: Lookups) -> None:
    for i in range(0, len(keys), LOOKUP_SLICE):
        part = keys[i : i + LOOKUP_SLICE]
        if need == "roles":
            q = select(UserRole.user_id, UserRole.role, UserRole.org_id, UserRole.role_type).where(
                _among(conn, UserRole.user_id, part), UserRole.active.is_(True)
            )
            for user, role, org, role_type in conn.execute(q):
                # A primary role wins over a secondary one.
                if user not in into.roles or role_type == "primary":
                    into.roles[user] = (role, org)
        elif need == "students":
            q2 = select(Student.student_id).where(_among(conn, Student.student_id, part))
            into.students.update(r[0] for r in conn.execute(q2))
        elif need == "student_by_local_id":
            q3 = select(Student.local_id, Student.student_id).where(
                _among(conn, Student.local_id, part), Student.active.is_(True)
            )
            into.student_by_local_id.update({r[0]: r[1] for r in conn.execute(q3) if r[0]})
        elif need == "incident_reports":
            dr = table("discipline_reports")
            q5 = select(dr.c.report_id, dr.c.day, dr.c.state_reportable).where(
                _among(conn, dr.c.report_id, part), dr.c.active.is_(True)
            )
            into.incident_reports.update({r[0]: (r[1], bool(r[2])) for r in conn.execute(q5)})
        elif need == "schools":
            q6 = select(School.school_id, School.identifier).where(
                _among(conn, School.school_id, part) | _among(conn, School.identifier, part),
                School.active.is_(True),
            )
            for school_id, number in conn.execute(q6):
                into.school_ids.add(school_id)
                if number:
                    into.school_by_number[number] = school_id
        elif need == "line_items":
            lt = table("line_items")
            q4 = select(lt.c.line_item_id, lt.c.class_id, lt.c.grading_period_id).where(
                _among(conn, lt.c.line_item_id, part)
            )
            into.line_items.update({r[0]: (r[1], r[2]) for r in conn.execute(q4)})
        else:  # pragma: no cover - a mapping declaring an unknown lookup is a programming error
            raise ValueError(f"unknown lookup {need!r}")


class Importer:
    """Runs one source's streams through their mappings into the canonical tables."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        mappings: dict[str, EntityMapping],
        config_fingerprint: bytes = b"",
        progress: ProgressFn | None = None,
        full: bool = False,
        dry_run: bool = False,
        allow_deactivation: bool = False,
    ) -> None:
        self.full = full
        self.allow_deactivation = allow_deactivation
        # File sources set the share of active rows a bulk stream may deactivate (None: no guard).
        self.max_deactivation_share: float | None = getattr(source, "max_deactivation_share", None)
        self.dry_run = dry_run
        self.engine = engine
        self.source = source
        self.mappings = mappings
        self.config_fingerprint = config_fingerprint
        self.progress = progress or (lambda _entity, _rows: None)
        self.file_digests: dict[str, bytes] = {}  # entity -> digest of its chunk set, this run
        self.saved: dict[str, str] = {}
        self._direct: set[str] = set()  # tables empty when the current stream began
        self.started = utcnow()

    def _commit(self, conn: Connection) -> None:
        """Commit; a dry run keeps one open transaction, rolled back when the run ends."""
        if not self.dry_run:
            conn.commit()

    def run(self) -> SyncReport:
        report = SyncReport(self.source.name)
        started = self.started = utcnow()
        with self.engine.connect() as conn:
            sc = table("sync_cursors")
            saved = {
                r.resource: r.value
                for r in conn.execute(
                    select(sc.c.resource, sc.c.value).where(sc.c.source == self.source.name)
                )
            }
        self.saved = {} if self.full else saved
        # One connection for the whole run. A dry run also keeps one transaction (later files
        # see earlier ones' rows, so the counts are true) and throws it away at the end.
        with self.engine.connect() as conn:
            for stream in self.source.streams(self.saved):
                mapping = self.mappings.get(stream.name)
                if mapping is None:
                    continue
                stats = report.entities.setdefault(stream.name, EntityStats())
                self._import_stream(conn, stream, mapping, stats)
            conn.rollback()
        if self.dry_run:
            return report
        with self.engine.begin() as conn:
            conn.execute(
                SyncRun.__table__.insert().values(  # type: ignore[attr-defined]
                    source=self.source.name,
                    started_at=started,
                    finished_at=utcnow(),
                    stats={k: v.as_dict() for k, v in report.entities.items()},
                )
            )
        log.info(
            "sync.finished",
            source=self.source.name,
            read=report.total("read"),
            inserted=report.total("inserted"),
            updated=report.total("updated"),
            quarantined=sum(report.quarantined().values()),
        )
        return report

    # -- one stream -------------------------------------------------------------------------

    def _header_problems(self, stream: Stream, mapping: EntityMapping) -> tuple[list[str], bool]:
        """Messages naming each bad column; the bool says whether the file can still be read."""
        messages: list[str] = []
        header = stream.header
        missing = sorted(mapping.required - set(header))
        unknown = [h for h in header if h not in mapping.known and not h.startswith("metadata.")]
        for col in unknown:
            close = difflib.get_close_matches(col, list(mapping.known), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            messages.append(
                f"{stream.location}: unknown column {col!r}{hint}; its values are ignored"
            )
        for col in missing:
            close = difflib.get_close_matches(col, unknown, n=1, cutoff=0.75)
            hint = f" (found {close[0]!r}: misspelled?)" if close else ""
            messages.append(f"{stream.location}: required column {col!r} is missing{hint}")
        return messages, not missing

    def _import_stream(
        self, conn: Connection, stream: Stream, mapping: EntityMapping, stats: EntityStats
    ) -> None:
        source = self.source.name
        for problem in stream.problems:
            stats.problems.append(problem.detail)
            self._file_problem(conn, stream, problem.reason, problem.detail)
        if stream.problems:
            stats.refused = "; ".join(p.detail for p in stream.problems)
            log.warning("sync.stream_skipped", source=source, stream=stream.name,
                        reason=stream.problems[0].reason)  # fmt: skip
            return
        if not stream.resumable:  # files have headers to check; API records do not
            stream.header = canonical_header(stream.header, mapping.known)
            messages, readable = self._header_problems(stream, mapping)
            stats.problems.extend(messages)
            if not readable:
                self._file_problem(conn, stream, "bad_header", "; ".join(messages))
                stats.refused = "bad header: " + "; ".join(messages)
                log.warning(
                    "sync.stream_skipped", source=source, stream=stream.name, reason="bad_header"
                )
                return
        if (
            stream.mode == "bulk"
            and stream.records == 0
            and self._refuse_empty(conn, stream, mapping, stats)
        ):
            return
        deps = b"".join(self.file_digests.get(d, b"") for d in mapping.depends_on)
        stream.context_fingerprint = hashlib.blake2b(
            MAPPING_VERSION + self.config_fingerprint + stream.name.encode() + deps, digest_size=16
        ).digest()
        ic = table("ingest_chunks")
        where = (ic.c.source == source) & (ic.c.file == stream.location)
        bulk = stream.mode == "bulk"
        generation = 0
        if bulk:
            known = {r[0] for r in conn.execute(select(ic.c.digest).where(where, ic.c.rows >= 0))}
            if stream.duplicate_keys:
                known = set()  # every copy of a repeated key must be seen to be quarantined
            generation = self._generation(conn, stream)
        else:
            # A delta changes rows behind the bulk cache's back: the next bulk must re-read every
            # chunk (rows = -1), though they still count as present until that bulk replaces them.
            conn.execute(update(ic).where(where).values(rows=-1))
            self._commit(conn)
            known = set()
        seen: list[int] = []
        batch: list[Chunk] = []
        batch_rows = 0
        self._direct = {
            t for t in mapping.tables if conn.execute(select(table(t)).limit(1)).first() is None
        }
        cursor = self.saved.get(stream.name) if stream.resumable else None
        if stream.resumable and stream.mode == "delta":
            self._retry_quarantined(conn, stream, mapping, stats)
        failed: list[StreamFailed] = []
        for chunk in _until_failed(self.source.read(stream, known, cursor), failed):
            seen.append(chunk.digest)
            stats.read += chunk.row_count
            if chunk.rows is None:
                stats.unchanged += chunk.row_count
            else:
                batch_rows += chunk.row_count
            batch.append(chunk)
            # An API window's end is a resume point: commit it rather than hold it in memory.
            if batch_rows >= BATCH_ROWS or len(batch) >= 256 or chunk.cursor is not None:
                self._flush(conn, stream, mapping, batch, stats, generation)
                batch, batch_rows = [], 0
        self._flush(conn, stream, mapping, batch, stats, generation)
        if failed:
            # What was read stays; the cursor stays at the last resume point and a full pull
            # does not deactivate what it did not get to. The other streams go on.
            stats.problems.append(failed[0].detail)
            stats.failed = failed[0].reason
            self._file_problem(conn, stream, failed[0].reason, failed[0].detail)
            log.warning("sync.stream_failed", source=source, stream=stream.name,
                        reason=failed[0].reason)  # fmt: skip
            return
        self.file_digests[stream.name] = hashlib.blake2b(
            repr(sorted(seen)).encode(), digest_size=16
        ).digest()
        if bulk:
            self._finish_bulk(conn, stream, mapping, generation, stats)
            if stream.resumable and not stream.resuming:  # a resumed pull saw part earlier
                self._close_unseen_quarantine(conn, stream)
        if stream.resumable:
            save_cursor(conn, source, f"{stream.name}#config", self._config_mark())
            self._commit(conn)
        if {"contacts", "student_contacts"} <= set(mapping.tables) and not stream.resumable:
            # A file is read whole again next night, so a dropped link comes back once its person
            # does. An API delta would not re-send it: there, a link waits for its person.
            self._check_links(conn, stream, stats)

    def _refuse_empty(
        self, conn: Connection, stream: Stream, mapping: EntityMapping, stats: EntityStats
    ) -> bool:
        """A header-only bulk file (an export that failed half-way) would deactivate all it fed."""
        t = table(mapping.tables[0])
        active = conn.execute(
            select(t.c.source).where(t.c.source == self.source.name, t.c.active.is_(True)).limit(1)
        ).first()
        if active is None:
            return False  # nothing it could deactivate: an empty file is simply empty
        if self.allow_deactivation:
            stats.problems.append(
                f"{stream.location}: empty; everything it fed is deactivated (--allow-deactivation)"
            )
            return False
        detail = (
            f"{stream.location}: the file has a header and no records; as a full snapshot it "
            "would deactivate everything it fed, so nothing was changed (empty-file guard; run "
            "`casebridge sync --allow-deactivation` if this is intended)"
        )
        stats.problems.append(detail)
        stats.refused = detail
        self._file_problem(conn, stream, "empty_file", detail)
        log.warning("sync.stream_refused", source=self.source.name, stream=stream.name,
                    reason="empty_file")  # fmt: skip
        return True

    def _check_links(self, conn: Connection, stream: Stream, stats: EntityStats) -> None:
        """A guardian link naming a person nobody sent is quarantined, not kept dangling."""
        links = dangling_links(conn, self.source.name)
        if not links:
            return
        causes = knock_on_causes(conn, self.source.name, {s for s, _c, _m in links}
                                 | {c for _s, c, _m in links})  # fmt: skip
        for student, contact, missing in links:
            ref = student if missing == "student" else contact
            detail = f"links student {student!r} and contact {contact!r}; no {missing} {ref!r}"
            if ref in causes:
                detail += f"; {causes[ref]}"
            raw = RawRow(stream.location, {"sourcedId": ref, "studentSourcedId": student,
                                           "agentSourcedId": contact})  # fmt: skip
            quarantine(conn, self.source.name, stream.name, raw, "unknown_person", detail)
            stats.quarantined["unknown_person"] += 1
        drop_links(conn, self.source.name, links)
        stats.table_counts("student_contacts")[2] += len(links)
        self._commit(conn)

    def _config_mark(self) -> str:
        return hashlib.blake2b(MAPPING_VERSION + self.config_fingerprint, digest_size=8).hexdigest()

    def _retry_quarantined(
        self, conn: Connection, stream: Stream, mapping: EntityMapping, stats: EntityStats
    ) -> None:
        """A code map (or any mapping input) changed since this stream's last run: map its
        quarantined records again before the changes are read, and close the ones that import.

        An incremental pull would not see them otherwise: the records themselves did not change.
        """
        source = self.source.name
        mark = read_cursor(conn, source, f"{stream.name}#config")
        if mark is None or mark == self._config_mark():
            return
        qt = table("quarantine")
        open_rows = conn.execute(
            select(qt.c.id, qt.c.location, qt.c.payload, qt.c.record_key).where(
                qt.c.source == source, qt.c.entity == stream.name, qt.c.resolved_at.is_(None),
                qt.c.location != stream.location,  # stream problems, not records
                qt.c.payload_purged_at.is_(None),  # retention blanked it: nothing to map
            )
        ).all()  # fmt: skip
        if not open_rows:
            return
        # Ed-Fi rows carry their id in the payload; the retried row keeps it.
        chunk = Chunk(0, len(open_rows), [
            RawRow(f"quarantine#{r.id}", dict(r.payload), r.payload.get("id") or None)
            for r in open_rows
        ])  # fmt: skip
        done = self._flush(conn, stream, mapping, [chunk], stats, 0, requarantine=False)
        ids = [r.id for r in open_rows if f"quarantine#{r.id}" in done]
        self._resolve(conn, qt.c.id, ids, stream.name)
        self._commit(conn)
        log.info("sync.quarantine_retried", source=source, stream=stream.name,
                 retried=len(open_rows), resolved=len(ids))  # fmt: skip

    def _resolve(self, conn: Connection, column: Any, keys: list[Any], entity: str) -> None:
        """Close the open quarantine rows of `entity` whose `column` is among `keys`."""
        qt = table("quarantine")
        for i in range(0, len(keys), LOOKUP_SLICE):
            conn.execute(
                update(qt)
                .where(column.in_(keys[i : i + LOOKUP_SLICE]), qt.c.source == self.source.name,
                       qt.c.entity == entity, qt.c.resolved_at.is_(None))
                .values(resolved_at=utcnow())
            )  # fmt: skip

    def _close_unseen_quarantine(self, conn: Connection, stream: Stream) -> None:
        """A complete full pull re-quarantines what is still bad: older rows are resolved."""
        qt = table("quarantine")
        conn.execute(
            update(qt)
            .where(qt.c.source == self.source.name, qt.c.entity == stream.name,
                   qt.c.resolved_at.is_(None), qt.c.location != stream.location,
                   qt.c.last_seen < self.started)
            .values(resolved_at=utcnow())
        )  # fmt: skip
        self._commit(conn)

    def _generation(self, conn: Connection, stream: Stream) -> int:
        """The id of this full pull; a resumed pull keeps the one it started with."""
        key = f"{stream.name}#generation"
        if stream.resuming:
            saved = read_cursor(conn, self.source.name, key)
            if saved:
                return int(saved)
        generation = time.time_ns() // 1000
        save_cursor(conn, self.source.name, key, str(generation))
        self._commit(conn)
        return generation

    def _file_problem(self, conn: Connection, stream: Stream, reason: str, detail: str) -> None:
        quarantine(
            conn, self.source.name, stream.name, RawRow(stream.location, {"file": stream.location}),
            reason, detail,
        )  # fmt: skip
        self._commit(conn)

    def _flush(
        self,
        conn: Connection,
        stream: Stream,
        mapping: EntityMapping,
        chunks: list[Chunk],
        stats: EntityStats,
        generation: int,
        requarantine: bool = True,
    ) -> set[str]:
        """Map and merge a batch, record its chunks and cursor, and commit them together.

        Returns the keys of the records that imported (with `requarantine` off, a retry of
        quarantined records: their locations, and failures are left as they are)."""
        if not chunks:
            return set()
        source = self.source.name
        bulk = stream.mode == "bulk"
        rows = [(c.digest, raw) for c in chunks if not (c.deletions or c.key_changes)
                for raw in c.rows or ()]  # fmt: skip
        gone = [raw for c in chunks if c.deletions for raw in c.rows or ()]
        lookups = Lookups()
        for need, column in mapping.needs:
            keys = sorted({_key_of(raw.data, column) for _, raw in rows} - {""})
            _lookup(conn, need, keys, lookups)
        # table -> primary key -> full row tuple (the last occurrence of a key in a file wins)
        out: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {t: {} for t in mapping.tables}
        # table -> (record id, primary key) of rows whose record the source identifies by id
        by_id: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        imported: set[str] = set()
        bad_chunks: set[int] = set()
        failed: list[tuple[RawRow, BadRecord]] = []
        dup_column = stream.key_column if stream.duplicate_keys else None
        for digest, raw in rows:
            try:
                problem = rejected(raw)
                if problem is not None:
                    raise BadRecord(*problem)
                if dup_column and (raw.data.get(dup_column) or "").strip() in stream.duplicate_keys:
                    raise BadRecord(
                        "duplicate_key",
                        f"{dup_column} {raw.data.get(dup_column)!r} "
                        "appears more than once in the file; every copy is held back",
                    )
                mapped = mapping.map_row(raw.data, lookups)
                for table_name, values in mapped:
                    long = too_long(table_name, values)
                    if long:
                        raise BadRecord("field_too_long", long)
            except BadRecord as exc:
                if not requarantine:
                    continue
                stats.quarantined[exc.reason] += 1
                bad_chunks.add(digest)
                failed.append((raw, exc))
                continue
            except Exception as exc:
                # A mapping that is not total (a KeyError on a record shape nobody expected):
                # that record is quarantined with the error, never the whole source stopped.
                if not requarantine:
                    continue
                stats.quarantined["mapping_error"] += 1
                bad_chunks.add(digest)
                failed.append((raw, BadRecord("mapping_error", f"{type(exc).__name__}: {exc}")))
                continue
            if not mapped:
                stats.ignored += 1
            imported.add(raw.location if not requarantine else
                         str(raw.data.get("sourcedId") or raw.record_id or ""))  # fmt: skip
            for table_name, values in mapped:
                if raw.record_id is not None:
                    values = {**values, "resource_id": raw.record_id}
                key, row = _canonical_row(table_name, values, source, digest)
                out[table_name][key] = row
                if raw.record_id is not None and len(mapped) == 1:
                    by_id.setdefault(table_name, []).append((raw.record_id, _pk_dict(
                        table_name, key)))  # fmt: skip
        # A record missing because its own row was quarantined says which row that was.
        causes = knock_on_causes(conn, source, {e.ref for _r, e in failed if e.ref})
        for raw, bad in failed:
            detail = bad.detail
            if bad.ref in causes:
                detail = f"{detail}; {causes[bad.ref]}"
            quarantine(conn, source, stream.name, raw, bad.reason, detail)
        for table_name, keyed in out.items():
            if table_name in by_id and table_name not in self._direct:
                # A record whose natural key changed is re-keyed first: updated in place.
                rekey_by_record_id(conn, source, table_name, by_id[table_name])
            inserted, updated = merge(
                conn, table(table_name), list(keyed.values()), bulk, table_name in self._direct
            )
            counts = stats.table_counts(table_name)
            counts[0] += inserted
            counts[1] += updated
            if table_name == mapping.tables[0]:
                stats.inserted += inserted
                stats.updated += updated
        moved = [raw for c in chunks if c.key_changes for raw in c.rows or ()]
        if moved and mapping.map_delete is not None:
            self._key_changes(conn, stream, mapping, moved, stats)
        if gone and mapping.map_delete is not None:
            stats.deactivated += self._deactivate(conn, stream, mapping, gone, stats)
        if not bulk and requarantine and imported - {""}:
            # A record that imports now (corrected at the source) closes its quarantine rows.
            self._resolve(conn, table("quarantine").c.record_key, sorted(imported - {""}),
                          stream.name)  # fmt: skip
        if bulk:
            self._record_chunks(conn, stream, chunks, bad_chunks, generation)
        last_cursor = next((c.cursor for c in reversed(chunks) if c.cursor is not None), None)
        if last_cursor is not None:
            save_cursor(conn, source, stream.name, last_cursor)
        self._commit(conn)
        self.progress(stream.name, sum(c.row_count for c in chunks))
        return imported

    def _key_changes(
        self,
        conn: Connection,
        stream: Stream,
        mapping: EntityMapping,
        changes: list[RawRow],
        stats: EntityStats,
    ) -> None:
        """Re-key rows in place (a person keeps their history); an unreadable one is quarantined."""
        assert mapping.map_delete is not None
        for raw in changes:
            try:
                old = mapping.map_delete(dict(raw.data.get("oldKeyValues") or {}))
                new = dict(mapping.map_delete(dict(raw.data.get("newKeyValues") or {})))
            except BadRecord as exc:
                stats.quarantined[exc.reason] += 1
                quarantine(conn, self.source.name, stream.name, raw, exc.reason, exc.detail)
                continue
            for table_name, key in old:
                if table_name in new:
                    stats.rekeyed += rekey(conn, self.source.name, table_name, key,
                                           new[table_name])  # fmt: skip

    def _deactivate_by_id(
        self, conn: Connection, mapping: EntityMapping, record_id: str | None
    ) -> int:
        if not record_id:
            return 0
        count = 0
        for table_name in mapping.tables:
            t = table(table_name)
            changed = conn.execute(
                update(t)
                .where(t.c.resource_id == record_id, t.c.source == self.source.name,
                       t.c.active.is_(True))
                .values(active=False, row_hash=0)
            ).rowcount  # fmt: skip
            if table_name == mapping.tables[0]:
                count += changed
        return count

    def _deactivate(
        self,
        conn: Connection,
        stream: Stream,
        mapping: EntityMapping,
        gone: list[RawRow],
        stats: EntityStats,
    ) -> int:
        assert mapping.map_delete is not None
        by_table: dict[str, list[dict[str, Any]]] = {}
        read_ok: list[str] = []
        count = 0
        for raw in gone:
            # The source's record id finds the row whatever its key (a changed one included).
            by_id = self._deactivate_by_id(conn, mapping, raw.record_id)
            count += by_id
            try:
                deleted = mapping.map_delete(raw.data)
            except BadRecord as exc:
                if not by_id:  # one unreadable delete must not stop the source for good
                    stats.quarantined[exc.reason] += 1
                    quarantine(conn, self.source.name, stream.name, raw, exc.reason, exc.detail)
                continue
            for table_name, key in deleted:
                by_table.setdefault(table_name, []).append(key)
            if raw.record_id:
                read_ok.append(raw.record_id)
        # A record deleted at the source needs no more fixing.
        self._resolve(conn, table("quarantine").c.record_key, read_ok, stream.name)
        for table_name, keys in by_table.items():
            t = table(table_name)
            pk = [c.name for c in t.primary_key.columns]
            stmt = (
                update(t)
                .where(*(t.c[k] == bindparam(f"k_{k}") for k in pk))
                .where(t.c.source == self.source.name, t.c.active.is_(True))
                .values(active=False, row_hash=0)
            )
            params = [{f"k_{k}": key[k] for k in pk} for key in keys]
            # One statement per key: rowcount of executemany is not reliable on every driver.
            for p in params:
                changed = conn.execute(stmt, p).rowcount
                if table_name == mapping.tables[0]:
                    count += changed
        return count

    def _record_chunks(
        self,
        conn: Connection,
        stream: Stream,
        chunks: list[Chunk],
        bad_chunks: set[int],
        generation: int,
    ) -> None:
        source = self.source.name
        ic = table("ingest_chunks")
        parsed = [c for c in chunks if c.rows is not None and not c.deletions]
        if parsed:
            stmt = dialect_insert(conn, ic)
            stmt = stmt.on_conflict_do_update(
                index_elements=["source", "file", "digest"],
                set_={"rows": stmt.excluded.rows, "generation": stmt.excluded.generation},
            )
            # rows = -1 marks a chunk with quarantined records: re-read it next time, since a
            # record it refers to (a student) may have arrived since.
            conn.execute(
                stmt,
                [
                    {
                        "source": source,
                        "file": stream.location,
                        "digest": c.digest,
                        "rows": -1 if c.digest in bad_chunks else c.row_count,
                        "generation": generation,
                    }
                    for c in parsed
                ],
            )
        skipped = [c.digest for c in chunks if c.rows is None]
        for i in range(0, len(skipped), LOOKUP_SLICE):
            conn.execute(
                update(ic)
                .where(
                    ic.c.source == source,
                    ic.c.file == stream.location,
                    ic.c.digest.in_(skipped[i : i + LOOKUP_SLICE]),
                )
                .values(generation=generation)
            )

    def _finish_bulk(
        self,
        conn: Connection,
        stream: Stream,
        mapping: EntityMapping,
        generation: int,
        stats: EntityStats,
    ) -> None:
        """Forget chunks this pull did not see, then deactivate the rows they alone held."""
        source = self.source.name
        ic = table("ingest_chunks")
        mine = (ic.c.source == source) & (ic.c.file == stream.location)
        if self._guard_refuses(conn, stream, mapping, generation, stats):
            return
        conn.execute(delete(ic).where(mine, ic.c.generation != generation))
        # Several streams may feed one table (school and section attendance): a row stays while
        # any current chunk of this source holds it.
        still_there = select(ic.c.digest).where(ic.c.source == source)
        for table_name in mapping.tables:
            t = table(table_name)
            result = conn.execute(
                update(t)
                .where(
                    t.c.source == source,
                    t.c.active.is_(True),
                    (t.c.src_chunk.is_(None)) | (t.c.src_chunk.not_in(still_there)),
                )
                # A zero hash makes the row's return in a later file count as an update.
                .values(active=False, row_hash=0)
            )
            stats.table_counts(table_name)[2] += result.rowcount
            if table_name == mapping.tables[0]:
                stats.deactivated += result.rowcount
        if "contacts" in mapping.tables:
            ct = table("contacts")
            stats.unusable_phones = conn.execute(
                select(func.count()).where(
                    ct.c.source == source, ct.c.active.is_(True), ct.c.phone_issue.is_not(None)
                )
            ).scalar_one()
        clear_cursor(conn, source, f"{stream.name}#generation")
        self._commit(conn)

    def _guard_refuses(
        self,
        conn: Connection,
        stream: Stream,
        mapping: EntityMapping,
        generation: int,
        stats: EntityStats,
    ) -> bool:
        """True (and nothing deactivated) when this bulk stream would deactivate more than the
        configured share of the active rows of any table it feeds."""
        share = self.max_deactivation_share
        if share is None or self.allow_deactivation:
            return False
        ic = table("ingest_chunks")
        stale = (ic.c.file == stream.location) & (ic.c.generation != generation)
        keep = select(ic.c.digest).where(ic.c.source == self.source.name, ~stale)
        over = [
            c
            for c in deactivation_counts(conn, self.source.name, mapping.tables, keep)
            if c.would > 0 and c.would > share * c.active
        ]
        if not over:
            return False
        what = ", ".join(f"{c.would:,} of {c.active:,} active {c.table}" for c in over)
        detail = (
            f"{stream.location}: would deactivate {what}, more than max_deactivation_share "
            f"{share:.0%} (deactivation guard); nothing was deactivated. Run `casebridge sync "
            "--allow-deactivation` if these records really are gone"
        )
        stats.problems.append(detail)
        stats.refused = detail
        clear_cursor(conn, self.source.name, f"{stream.name}#generation")
        self._file_problem(conn, stream, "deactivation_guard", detail)
        log.warning("sync.stream_refused", source=self.source.name, stream=stream.name,
                    reason="deactivation_guard")  # fmt: skip
        return True


def _until_failed(chunks: Iterator[Chunk], failed: list[StreamFailed]) -> Iterator[Chunk]:
    """The chunks until the stream fails as a whole; the failure is kept in `failed`."""
    try:
        yield from chunks
    except StreamFailed as exc:
        failed.append(exc)


def _pk_dict(table_name: str, key: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip((c.name for c in table(table_name).primary_key.columns), key, strict=True))


def _key_of(record: dict[str, Any], column: str | Callable[[dict[str, Any]], str]) -> str:
    value = column(record) if callable(column) else record.get(column)
    return str(value or "").strip()


def read_cursor(conn: Connection, source: str, resource: str) -> str | None:
    sc = table("sync_cursors")
    return conn.execute(
        select(sc.c.value).where(sc.c.source == source, sc.c.resource == resource)
    ).scalar()


def save_cursor(conn: Connection, source: str, resource: str, value: str) -> None:
    """In the caller's transaction: the cursor moves only when the rows before it commit."""
    sc = table("sync_cursors")
    stmt = dialect_insert(conn, sc).values(
        source=source, resource=resource, value=value, updated_at=utcnow()
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["source", "resource"],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
    )


def clear_cursor(conn: Connection, source: str, resource: str) -> None:
    sc = table("sync_cursors")
    conn.execute(delete(sc).where(sc.c.source == source, sc.c.resource == resource))


def _canonical_row(
    table_name: str, values: dict[str, Any], source: str, digest: int
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The full row in table column order, with bookkeeping and a hash of its content."""
    layout = _layout(table_name)
    # Two C-level steps (merge onto the defaults, pick every column) instead of a Python loop
    # over the columns: this runs once per canonical row, millions of times in a first import.
    full = {**layout.defaults, **values, "source": source, "src_chunk": digest}
    full["row_hash"] = _row_digest(layout.content_of(full))
    return layout.pk_of(full), layout.row_of(full)


@dataclass(frozen=True)
class Layout:
    """How a canonical table's rows are built: defaults, and getters for row, key and content."""

    defaults: dict[str, Any]
    row_of: Callable[[dict[str, Any]], tuple[Any, ...]]
    pk_of: Callable[[dict[str, Any]], tuple[Any, ...]]
    content_of: Callable[[dict[str, Any]], tuple[Any, ...]]


_LAYOUTS: dict[str, Layout] = {}


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """itemgetter that returns a tuple even for a single name."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    name = names[0]

    def one(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row[name],)

    return one


def _layout(table_name: str) -> Layout:
    if table_name not in _LAYOUTS:
        t = table(table_name)
        defaults = {
            c.name: (
                c.default.arg  # type: ignore[attr-defined]
                if c.default is not None and c.default.is_scalar
                else None
            )
            for c in t.columns
        }
        defaults["active"] = True
        _LAYOUTS[table_name] = Layout(
            defaults=defaults,
            row_of=_getter([c.name for c in t.columns]),
            pk_of=_getter([c.name for c in t.primary_key.columns]),
            content_of=_getter([c.name for c in t.columns if c.name not in BOOKKEEPING]),
        )
    return _LAYOUTS[table_name]
