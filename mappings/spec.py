"""What a mapping declares: the file it reads, the columns it knows, the tables it feeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
Mapped = list[tuple[str, Row]]  # (canonical table, row)


@dataclass
class Lookups:
    """Facts a mapping needs from the database, fetched by the importer one batch at a time."""

    roles: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # user -> role, org
    students: set[str] = field(default_factory=set)  # student ids that exist
    student_by_local_id: dict[str, str] = field(default_factory=dict)
    line_items: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # -> class, period


@dataclass(frozen=True)
class EntityMapping:
    entity: str  # the name the manifest and summaries use
    file: str
    tables: tuple[str, ...]
    required: frozenset[str]
    known: frozenset[str]
    map_row: Callable[[dict[str, str], Lookups], Mapped]
    # (Lookups field, raw column holding the keys to look up), filled before mapping a batch.
    needs: tuple[tuple[str, str], ...] = ()
    # Other entities whose content changes what this one maps to (their files' digests join
    # this file's chunk fingerprint).
    depends_on: tuple[str, ...] = ()
