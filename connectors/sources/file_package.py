"""A folder or a zip of CSV files, read as binary streams: what both CSV sources sit on."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from service.errors import PermanentError


class FilePackage:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise PermanentError(f"{path} does not exist")
        self._zip_names: dict[str, str] = {}
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise PermanentError(f"{path} is neither a folder nor a zip file")
            with zipfile.ZipFile(path) as zf:
                # Members may sit in one top-level folder; match by base name.
                for name in zf.namelist():
                    if not name.endswith("/"):
                        self._zip_names.setdefault(Path(name).name, name)

    def exists(self, name: str) -> bool:
        if self._zip_names:
            return name in self._zip_names
        return (self.path / name).is_file()

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        if self._zip_names:
            with zipfile.ZipFile(self.path) as zf, zf.open(self._zip_names[name]) as fh:
                yield fh  # type: ignore[misc]
        else:
            with open(self.path / name, "rb") as fh:
                yield fh

    def label(self, name: str) -> str:
        return name
