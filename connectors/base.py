"""The protocols every connector kind implements, kept small on purpose.

- A *source* reads one outside system and yields raw records in chunks, stream by stream.
- A *destination* upserts one case task into a staff tool by idempotency key.
- A *channel* sends one family message.

Connectors do I/O and nothing else: mapping lives in `mappings/`, storage in `service/`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from service.errors import PermanentError

if TYPE_CHECKING:
    from mappings.spec import EntityMapping

SyncMode = Literal["bulk", "delta"]


@dataclass(slots=True)
class RawRow:
    """One source record as read, before mapping; `location` says where it came from.

    CSV rows hold strings; API records hold the parsed JSON object.
    """

    location: str
    data: dict[str, Any]
    # The server's own id of the record (Ed-Fi `id`), kept on its rows: a record whose natural
    # key changed is then found and updated in place instead of added beside the old one.
    record_id: str | None = None


@dataclass
class Chunk:
    """A run of consecutive records with a stable digest of their content.

    `rows` is None when the source recognised the digest as already imported and skipped parsing.
    """

    digest: int
    row_count: int
    rows: list[RawRow] | None
    # Where to resume after this chunk commits (API sources); None for files.
    cursor: str | None = None
    # The rows name records the source deleted: deactivate them.
    deletions: bool = False
    # The rows are natural-key changes ({"oldKeyValues", "newKeyValues"}): re-key in place.
    key_changes: bool = False


class StreamFailed(PermanentError):
    """One stream cannot be read (a refused resource, a pull short of its stated total): the
    stream stops where it is, its cursor does not move, and the source's other streams go on."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class StreamProblem:
    """A stream-level problem (a bad header, an unreadable file): reported, never silent."""

    reason: str
    detail: str


@dataclass
class Stream:
    """One resource of a source (a CSV file, an API collection) and how to read it."""

    name: str  # the entity, e.g. "users", "attendance"
    mode: SyncMode
    location: str  # a file name or URL path, for messages
    header: list[str] = field(default_factory=list)  # column names, for sources that have them
    problems: list[StreamProblem] = field(default_factory=list)
    # A fingerprint of everything outside the rows that changes their meaning (code maps,
    # files the rows are resolved against); a change forces re-reading unchanged chunks.
    context_fingerprint: bytes = b""
    # API sources resume from a saved cursor; a file is simply read again (known chunks skip).
    resumable: bool = False
    # True when this read continues a full pull that was interrupted (keeps its generation).
    resuming: bool = False


class Source(Protocol):
    """A system of record we pull from."""

    name: str
    # True when students' school and grade come from their latest enrollment (Ed-Fi).
    places_students: bool

    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        """The streams to read now, in dependency order (orgs before users...).

        `saved` holds this source's committed cursors by resource (empty for a full reconcile):
        an API source decides from it between an incremental pull and a full one.
        """
        ...

    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        """Yield the stream's chunks, resuming after `cursor` (the last committed chunk's).

        Chunks whose digest is in `known_chunks` may come unparsed (`rows=None`).
        """
        ...


@dataclass(frozen=True)
class DeliveryResult:
    external_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


class Destination(Protocol):
    """A staff tool that holds case tasks. Must be idempotent on `idempotency_key`."""

    name: str

    def upsert_task(self, idempotency_key: str, task: dict[str, Any]) -> DeliveryResult: ...


class Channel(Protocol):
    """A way to reach a family (SMS, email). Must not send twice for one `idempotency_key`."""

    name: str
    medium: str

    def send(self, idempotency_key: str, message: dict[str, Any]) -> DeliveryResult: ...


@dataclass
class BuiltSource:
    """What a source kind's factory returns: the connector, its mappings and a fingerprint of
    the configuration the mappings depend on (a change re-reads chunks already imported)."""

    source: Source
    mappings: dict[str, EntityMapping]
    fingerprint: bytes


def config_fingerprint(cfg: BaseModel) -> bytes:
    return hashlib.blake2b(cfg.model_dump_json().encode(), digest_size=16).digest()
