"""Case tasks as JSON Lines: the staff-tool stand-in the demo and tests use.

Like a real tool, it keeps one task per case: the first revision creates it, later ones update
it. Each line says which, and names the task by its stable id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from connectors.base import DeliveryResult
from connectors.jsonl_store import JsonlStore
from connectors.registry import register
from service.clock import utcnow
from service.config import DestinationSettings, Settings


class FileDestinationSettings(DestinationSettings):
    """Case tasks as JSON Lines in the output folder (the demo's staff-tool stand-in)."""

    kind: Literal["file"]
    path: str = "tasks.jsonl"


class FileTaskDestination:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.store = JsonlStore(path)

    def upsert_task(self, idempotency_key: str, task: dict[str, Any]) -> DeliveryResult:
        task_id = str(task["task_id"])
        op = "create" if task.get("revision") == 1 else "update"
        self.store.append(
            idempotency_key,
            {"op": op, "task_id": task_id, "written_at": utcnow().isoformat(), "task": task},
        )
        return DeliveryResult(external_id=task_id, detail={"op": op})


def build(settings: Settings, cfg: FileDestinationSettings) -> FileTaskDestination:
    return FileTaskDestination(cfg.name, settings.resolve(settings.output_dir) / cfg.path)


register("destination", "file", FileDestinationSettings, build)
