"""An append-only JSON Lines file: the stand-in for outside systems in the demo and tests.

Each line is fsynced before `append` returns, so a record a reader can see is durable before the
outbox marks the item delivered. `find` reads the file back: it is how a file target answers
"did this go out?" after a crash, as Twilio's message list does for SMS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.errors import OutcomeUnknown, TransientError


class JsonlStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # field -> value -> records; read from the file once, kept current by `append`
        # (a nightly run looks up thousands of keys: re-reading the file each time is quadratic).
        self._index: dict[str, dict[Any, list[dict[str, Any]]]] = {}

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash mid-write: nothing a person saw
                if isinstance(record, dict):
                    yield record

    def find(self, field: str, value: Any) -> list[dict[str, Any]]:
        index = self._index.get(field)
        if index is None:
            index = {}
            for record in self.records():
                index.setdefault(record.get(field), []).append(record)
            self._index[field] = index
        return list(index.get(value, ()))

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Append the records with one write and one fsync.

        Failing before the file is opened for writing is a `TransientError` (nothing was written);
        failing during the write or the fsync is `OutcomeUnknown`: some lines may be there, so
        the outbox asks `find` (reconcile) before anything is written again.
        """
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            # A full disk or a permission fixed by IT: the outbox retries with backoff.
            raise TransientError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        try:
            with fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())  # durable before the outbox marks the items delivered
        except OSError as exc:
            raise OutcomeUnknown(f"writing {self.path}: {exc.strerror or exc}") from exc
        for record in records:
            for field, index in self._index.items():
                index.setdefault(record.get(field), []).append(record)
