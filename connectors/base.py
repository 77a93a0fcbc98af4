"""The protocols every connector kind implements, kept small on purpose.

- A *source* reads one outside system and yields raw records in chunks, stream by stream.
- A *destination* upserts one case task into a staff tool and says how it stays idempotent.
- A *channel* sends one rendered family message and says how it stays idempotent.
- Either may also take a batch in one call (`deliver_many`: one request, one fsync); one item
  per call stays the default.

Connectors do I/O and nothing else: mapping lives in `mappings/`, storage in `service/`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    # Files: what a prescan found (see connectors/sources/csv_chunks.py). `records` None: unknown.
    encoding: str = "utf-8"
    records: int | None = None
    key_column: str | None = None  # the column that must be unique within the file
    duplicate_keys: frozenset[str] = frozenset()


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


# How a destination or channel keeps a redelivery from showing twice:
# - "provider_key": the tool honours our idempotency key (Standard Webhooks, Zendesk);
# - "stored_link": the tool issues its own ids; we keep them in `delivery_links` and update
#   that item (Planner, Sheets), and `find` searches the tool by our subject when no link exists;
# - "none": nothing (Twilio, SMTP). The outbox commits `sending` before the call and, after a
#   crash, asks `reconcile` whether it went out instead of sending again.
Idempotency = Literal["provider_key", "stored_link", "none"]


@dataclass(frozen=True)
class Link:
    """Our earlier item in a tool: its id there and its version (ETag) when the tool has one."""

    external_id: str
    version: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    external_id: str | None
    version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reconciled:
    """What a target says about a delivery whose outcome we lost in a crash."""

    outcome: Literal["sent", "not_sent", "unknown"]
    result: DeliveryResult | None = None
    detail: str = ""


@dataclass(frozen=True)
class FamilyMessage:
    """A rendered family message, ready for a channel."""

    to: str
    language: str
    body: str
    subject: str | None = None  # email
    # Our opaque id of the recipient (a contact id): for a signed unsubscribe link, never shown.
    recipient_id: str | None = None


class Destination(Protocol):
    """A staff tool that holds case tasks: one task per case, created once, then updated."""

    name: str
    idempotency: Idempotency

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        """Create the task (no link) or update the linked one; return its id and version."""
        ...

    def find(self, subject: str) -> Link | None:
        """Our task for `subject` ("case-12") in the tool, if it has one (stored_link kinds)."""
        ...

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        """Did the delivery with `key` happen? (kinds with idempotency "none")."""
        ...


class FindsItsLink:
    """For `stored_link` destinations: after a crash the core asks `find(subject)` whether a
    create landed, never `reconcile`; this answers the protocol's method once for all of them."""

    name: str

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        raise PermanentError(f"{self.name} keeps stored links; the core reconciles with find")


class Channel(Protocol):
    """A way to reach a family (SMS, email)."""

    name: str
    medium: Literal["sms", "email"]
    idempotency: Idempotency

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult: ...

    def reconcile(self, key: str, message_to: str, since: datetime) -> Reconciled:
        """Did the message with `key` to `message_to`, sent after `since`, go out?"""
        ...


@dataclass(frozen=True)
class TaskUpsert:
    """One `upsert_task` call, as an entry of a destination's batch."""

    key: str
    subject: str
    task: dict[str, Any]
    link: Link | None


@dataclass(frozen=True)
class OutgoingMessage:
    """One `send` call, as an entry of a channel's batch."""

    key: str
    message: FamilyMessage


class DeliversTasksInBatches(Protocol):
    """Optional for a destination that can take several tasks in one call.

    Returns one entry per upsert, in order: its result, or the error of the taxonomy that one
    alone met. Raising says the same of every entry: `TransientError` that none took effect,
    `OutcomeUnknown` that any may have. The core commits `sending` first for the entries that
    need it, exactly as for a single call.
    """

    def deliver_many(self, upserts: Sequence[TaskUpsert]) -> list[DeliveryResult | Exception]: ...


class SendsInBatches(Protocol):
    """Optional for a channel that can take several messages in one call; the contract of
    `DeliversTasksInBatches`. A channel with a per-sender rate is always called one by one."""

    def deliver_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[DeliveryResult | Exception]: ...


@dataclass
class BuiltSource:
    """What a source kind's factory returns: the connector, its mappings and a fingerprint of
    the configuration the mappings depend on (a change re-reads chunks already imported)."""

    source: Source
    mappings: dict[str, EntityMapping]
    fingerprint: bytes


def config_fingerprint(cfg: BaseModel, exclude: set[str] | None = None) -> bytes:
    """A digest of the settings the mapped rows depend on; `exclude` names the ones they do not
    (a data folder's path: moving the folder must not re-read every chunk)."""
    return hashlib.blake2b(cfg.model_dump_json(exclude=exclude).encode(), digest_size=16).digest()
