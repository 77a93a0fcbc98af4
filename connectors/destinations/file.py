"""Case tasks as JSON Lines: the staff-tool stand-in the demo and tests use.

It behaves like a tool that issues its own ids (Planner, Sheets): the first delivery creates a
task and gets an id back, later revisions update that id, and `find` searches the file by our
subject ("case-12") when casebridge has no stored link (a crash between create and mark). A
claimed batch is written at once (`deliver_many`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from connectors.base import DeliveryResult, Idempotency, Link, Reconciled, TaskUpsert
from connectors.jsonl_store import JsonlStore
from connectors.registry import register
from service.clock import utcnow
from service.config import DestinationSettings, Settings


class FileDestinationSettings(DestinationSettings):
    """Case tasks as JSON Lines in the output folder (the demo's staff-tool stand-in)."""

    kind: Literal["file"]
    path: str = "tasks.jsonl"


class FileTaskDestination:
    idempotency: Idempotency = "stored_link"

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.store = JsonlStore(path)

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        record, result = self._write(TaskUpsert(key, subject, task, link))
        self.store.append(record)
        return result

    def deliver_many(self, upserts: Sequence[TaskUpsert]) -> list[DeliveryResult | Exception]:
        """Every task in one write and one fsync (creates had `sending` committed first)."""
        written = [self._write(u) for u in upserts]
        self.store.append_many([record for record, _ in written])
        return [result for _, result in written]

    @staticmethod
    def _write(upsert: TaskUpsert) -> tuple[dict[str, Any], DeliveryResult]:
        """The line that creates or updates the task, and what the tool answers."""
        link = upsert.link
        if link is None:
            op, external_id, version = "create", f"T-{uuid.uuid4().hex[:12]}", 1
        else:
            op, external_id, version = "update", link.external_id, int(link.version or 0) + 1
        record = {
            "idempotency_key": upsert.key,
            "op": op,
            "task_id": external_id,
            "subject": upsert.subject,
            "version": version,
            "written_at": utcnow().isoformat(),
            "task": upsert.task,
        }
        return record, DeliveryResult(external_id, str(version), detail={"op": op})

    def find(self, subject: str) -> Link | None:
        found = self.store.find("subject", subject)
        if not found:
            return None
        last = found[-1]
        return Link(str(last["task_id"]), str(last["version"]))

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        found = self.store.find("idempotency_key", key)
        if not found:
            return Reconciled("not_sent")
        last = found[-1]
        return Reconciled("sent", DeliveryResult(str(last["task_id"]), str(last["version"])))


def build(settings: Settings, cfg: FileDestinationSettings) -> FileTaskDestination:
    return FileTaskDestination(cfg.name, settings.resolve(settings.output_dir) / cfg.path)


register("destination", "file", FileDestinationSettings, build, FileTaskDestination.idempotency)
