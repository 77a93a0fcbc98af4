"""Test-only connector kinds, registered the way a third-party plugin would be.

Imported in-process by tests, or named in $CASEBRIDGE_PLUGINS for a CLI subprocess. The core
does not know these kinds exist: that is what the tests prove.

- `test_recording` (destination, provider key): records tasks; raises RuntimeError for listed
  cases, like a buggy SDK would. With `batch: true` it takes a batch per call and answers each
  entry on its own, like a bulk API.
- `test_crashing` (source): raises an error outside the taxonomy, like a buggy client.
- `test_sms` (channel, no idempotency): like the file channel, but can be slow, can kill its own
  process once around the write (a power cut mid-send), and can be unable to tell after a crash.
  One message per call, like Twilio; with `batch: true` it takes a batch per call (one write)
  and the crash points are around that write.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from connectors.base import (
    BuiltSource,
    Chunk,
    DeliveryResult,
    FamilyMessage,
    Idempotency,
    Link,
    OutgoingMessage,
    RawRow,
    Reconciled,
    Stream,
    TaskUpsert,
)
from connectors.channels.file import FileChannel
from connectors.jsonl_store import JsonlStore
from connectors.registry import register
from mappings.spec import EntityMapping, Lookups, Mapped
from service.config import ChannelSettings, DestinationSettings, Settings, SourceSettings
from service.errors import TransientError


class RecordingSettings(DestinationSettings):
    """Records tasks in a file; fails for some cases."""

    kind: Literal["test_recording"]
    path: str = "recorded-tasks.jsonl"
    fail_cases: list[int] = []
    batch: bool = False


class RecordingDestination:
    idempotency: Idempotency = "provider_key"

    def __init__(self, name: str, path: Path, fail_cases: list[int]) -> None:
        self.name = name
        self.store = JsonlStore(path)
        self.fail_cases = set(fail_cases)

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        if task["case_id"] in self.fail_cases:
            raise RuntimeError(f"SDK bug on {subject}")
        if not self.store.find("idempotency_key", key):  # the provider honours our key
            self.store.append({"idempotency_key": key, "subject": subject, "task": task})
        return DeliveryResult(external_id=subject)

    def find(self, subject: str) -> Link | None:
        return None

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        return Reconciled("unknown")


class BulkRecordingDestination(RecordingDestination):
    def deliver_many(self, upserts: Sequence[TaskUpsert]) -> list[DeliveryResult | Exception]:
        answers: list[DeliveryResult | Exception] = []
        for u in upserts:
            try:
                answers.append(self.upsert_task(u.key, u.subject, u.task, u.link))
            except Exception as exc:  # one entry's error, the others stand
                answers.append(exc)
        return answers


def build_recording(settings: Settings, cfg: RecordingSettings) -> RecordingDestination:
    path = settings.resolve(settings.output_dir) / cfg.path
    kind = BulkRecordingDestination if cfg.batch else RecordingDestination
    return kind(cfg.name, path, cfg.fail_cases)


class FlakySmsSettings(ChannelSettings):
    """An SMS stand-in that can be slow, crash mid-send, or forget."""

    kind: Literal["test_sms"]
    path: str = "test-sms.jsonl"
    delay_seconds: float = 0.0
    # Kill this process once (the marker file remembers) just before or just after the write.
    crash: Literal["before_write", "after_write"] | None = None
    crash_marker: str | None = None
    # After a crash, say "cannot tell" instead of reading the file back.
    reconcile_unknown: bool = False
    # After a crash, the provider's message list is down (a 503 on the list call).
    reconcile_down: bool = False
    # Take a claimed batch in one call (`deliver_many`), like the file channel.
    batch: bool = False


class FlakySmsChannel(FileChannel):
    # One message per call, like Twilio: the file channel's batch call is not inherited.
    deliver_many = None

    def __init__(self, cfg: FlakySmsSettings, path: Path, marker: Path | None) -> None:
        super().__init__(cfg.name, "sms", path)
        self.cfg = cfg
        self.marker = marker

    def _maybe_crash(self, point: str) -> None:
        if self.cfg.crash == point and self.marker and not self.marker.exists():
            self.marker.write_text(point)
            os.kill(os.getpid(), signal.SIGKILL)

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult:
        if self.cfg.delay_seconds:
            time.sleep(self.cfg.delay_seconds)
        self._maybe_crash("before_write")
        result = super().send(key, message)
        self._maybe_crash("after_write")
        return result

    def reconcile(self, key: str, message_to: str, since: datetime) -> Reconciled:
        if self.cfg.reconcile_unknown:
            return Reconciled("unknown", detail="the provider cannot say")
        if self.cfg.reconcile_down:
            raise TransientError("message list answered 503")
        return super().reconcile(key, message_to, since)


class FlakyBatchSmsChannel(FlakySmsChannel):
    def deliver_many(  # type: ignore[override]
        self, messages: Sequence[OutgoingMessage]
    ) -> list[DeliveryResult | Exception]:
        if self.cfg.delay_seconds:
            time.sleep(self.cfg.delay_seconds)
        self._maybe_crash("before_write")
        results = FileChannel.deliver_many(self, messages)
        self._maybe_crash("after_write")
        return results


def build_sms(settings: Settings, cfg: FlakySmsSettings) -> FlakySmsChannel:
    out = settings.resolve(settings.output_dir)
    marker = out / cfg.crash_marker if cfg.crash_marker else None
    kind = FlakyBatchSmsChannel if cfg.batch else FlakySmsChannel
    return kind(cfg, out / cfg.path, marker)


class CrashingSourceSettings(SourceSettings):
    """A source whose client (or mapping) has a bug."""

    kind: Literal["test_crashing"]
    # "client": listing streams raises; "mapping": one of three records breaks its mapping.
    fail_in: Literal["client", "mapping"] = "client"


ORGS = [
    {"sourcedId": "org-a", "status": "active", "name": "Alpha School", "type": "school"},
    {"sourcedId": "org-b", "status": "active", "nme": "a record of a shape nobody expected"},
    {"sourcedId": "org-c", "status": "active", "name": "Gamma School", "type": "school"},
]


class CrashingSource:
    places_students = False

    def __init__(self, cfg: CrashingSourceSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg

    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        if self.cfg.fail_in == "client":
            raise KeyError("studentUniqueId")
        return [Stream("orgs", "delta", "orgs", resumable=True)]

    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        rows = [RawRow(f"orgs#{i}", dict(r)) for i, r in enumerate(ORGS)]
        yield Chunk(digest=1, row_count=len(rows), rows=rows, cursor="done")


def not_total(row: dict[str, Any], lookups: Lookups) -> Mapped:
    return [("schools", {"school_id": row["sourcedId"], "name": row["name"], "active": True})]


def build_crashing(settings: Settings, cfg: CrashingSourceSettings) -> BuiltSource:
    mapping = EntityMapping("orgs", "orgs", ("schools",), frozenset(), frozenset(), not_total)
    return BuiltSource(CrashingSource(cfg), {"orgs": mapping}, b"")


register("source", "test_crashing", CrashingSourceSettings, build_crashing)
register(
    "destination",
    "test_recording",
    RecordingSettings,
    build_recording,
    RecordingDestination.idempotency,
)
register("channel", "test_sms", FlakySmsSettings, build_sms, "none")
