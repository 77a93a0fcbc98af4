"""Family messages as JSON Lines: the SMS/email stand-in the demo and tests use."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from connectors.base import DeliveryResult
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
    def __init__(self, name: str, medium: str, path: Path) -> None:
        self.name = name
        self.medium = medium
        self.store = JsonlStore(path)

    def send(self, idempotency_key: str, message: dict[str, Any]) -> DeliveryResult:
        self.store.append(
            idempotency_key,
            {"medium": self.medium, "sent_at": utcnow().isoformat(), "message": message},
        )
        return DeliveryResult(external_id=idempotency_key)


def build(settings: Settings, cfg: FileChannelSettings) -> FileChannel:
    return FileChannel(cfg.name, cfg.medium, settings.resolve(settings.output_dir) / cfg.path)


register("channel", "file", FileChannelSettings, build)
