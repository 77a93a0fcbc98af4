"""Family messages as JSON Lines: the SMS and email stand-in the demo and tests use.

Like SMS and email it has no idempotency key: a message written is a message sent, and sending
again writes it again. The outbox therefore commits `sending` first and, after a crash, asks
`reconcile`, which reads the file back as Twilio's message list would be read. It takes a
claimed batch in one write (`deliver_many`), as a local sink can.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from connectors.base import (
    DeliveryResult,
    FamilyMessage,
    Idempotency,
    OutgoingMessage,
    Reconciled,
)
from connectors.jsonl_store import JsonlStore
from connectors.registry import register
from service.clock import utcnow
from service.config import ChannelSettings, Settings


class FileChannelSettings(ChannelSettings):
    """Family messages as JSON Lines in the output folder (the demo's SMS/email stand-in)."""

    kind: Literal["file"]
    medium: Literal["sms", "email"]
    path: str


class FileChannel:
    idempotency: Idempotency = "none"

    def __init__(self, name: str, medium: Literal["sms", "email"], path: Path) -> None:
        self.name = name
        self.medium = medium
        self.store = JsonlStore(path)

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult:
        self.store.append(self._record(key, message))
        return DeliveryResult(external_id=key)

    def deliver_many(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult | Exception]:
        """Every message in one write and one fsync (the outbox committed `sending` first)."""
        self.store.append_many([self._record(m.key, m.message) for m in messages])
        return [DeliveryResult(external_id=m.key) for m in messages]

    def _record(self, key: str, message: FamilyMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "to": message.to,
            "language": message.language,
            "body": message.body,
        }
        if message.subject is not None:
            body["subject"] = message.subject
        return {
            "idempotency_key": key,
            "medium": self.medium,
            "sent_at": utcnow().isoformat(),
            "message": body,
        }

    def reconcile(self, key: str, message_to: str, since: datetime) -> Reconciled:
        # The file is the whole truth: a key that is not in it was never written.
        sent = [
            r for r in self.store.find("idempotency_key", key) if r["message"]["to"] == message_to
        ]
        if sent:
            return Reconciled("sent", DeliveryResult(external_id=key))
        return Reconciled("not_sent")


def build(settings: Settings, cfg: FileChannelSettings) -> FileChannel:
    return FileChannel(cfg.name, cfg.medium, settings.resolve(settings.output_dir) / cfg.path)


register("channel", "file", FileChannelSettings, build, FileChannel.idempotency)
