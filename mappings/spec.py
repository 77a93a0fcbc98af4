"""What a mapping declares: the file it reads, the columns it knows, the tables it feeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
# (Lookups field, the raw column holding the keys, or a function of the record giving the key)
Need = tuple[str, "str | Callable[[dict[str, Any]], str]"]
Mapped = list[tuple[str, Row]]  # (canonical table, row)


@dataclass
class Lookups:
    """Facts a mapping needs from the database, fetched by the importer one batch at a time."""

    roles: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # user -> role, org
    students: set[str] = field(default_factory=set)  # student ids that exist
    incident_reports: dict[str, tuple[Any, bool]] = field(
        default_factory=dict
    )  # -> day, reportable
    student_by_local_id: dict[str, str] = field(default_factory=dict)
    line_items: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # -> class, period
    school_ids: set[str] = field(default_factory=set)  # roster school sourcedIds that exist
    school_by_number: dict[str, str] = field(default_factory=dict)  # orgs.identifier -> sourcedId


@dataclass(frozen=True)
class EntityMapping:
    entity: str  # the name the manifest and summaries use
    file: str
    tables: tuple[str, ...]
    required: frozenset[str]
    known: frozenset[str]
    map_row: Callable[[dict[str, Any], Lookups], Mapped]
    # Filled by the importer before mapping a batch.
    needs: tuple[Need, ...] = ()
    # Other entities whose content changes what this one maps to (their files' digests join
    # this file's chunk fingerprint).
    depends_on: tuple[str, ...] = ()
    # For API sources: a deleted record (its key values) -> (table, primary key) to deactivate.
    map_delete: Callable[[dict[str, Any]], list[tuple[str, Row]]] | None = None
