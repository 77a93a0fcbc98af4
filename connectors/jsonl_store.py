"""An append-only JSON Lines file that remembers which idempotency keys it already holds.

The outbox delivers at least once; this file is where "at least once" becomes "exactly once":
a key already written is not written again, even after a crash between write and mark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from service.errors import TransientError


class JsonlStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: set[str] | None = None

    def _load(self) -> set[str]:
        if self._keys is None:
            self._keys = set()
            if self.path.is_file():
                with self.path.open(encoding="utf-8") as fh:
                    for line in fh:
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            self._keys.add(json.loads(line)["idempotency_key"])
                        except (ValueError, KeyError):
                            continue  # a torn last line from a crash mid-write
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def append(self, key: str, record: dict[str, Any]) -> bool:
        """Write the record once; False when the key was already there."""
        keys = self._load()
        if key in keys:
            return False
        line = json.dumps({"idempotency_key": key, **record}, ensure_ascii=False, default=str)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())  # durable before the outbox marks the item delivered
        except OSError as exc:
            # A full disk or a permission fixed by IT: the outbox retries with backoff.
            raise TransientError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        keys.add(key)
        return True
