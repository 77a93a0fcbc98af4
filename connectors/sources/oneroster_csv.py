"""OneRoster 1.1 / 1.2 CSV packages: a folder or a zip with manifest.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from connectors.base import (
    BuiltSource,
    Chunk,
    Stream,
    StreamProblem,
    SyncMode,
    config_fingerprint,
)
from connectors.registry import register
from connectors.sources.csv_chunks import CsvFileOptions, decode, open_stream, read_stream
from connectors.sources.file_package import FilePackage
from mappings.oneroster import entity_mappings
from service.config import Settings, SourceSettings
from service.errors import PermanentError


class OneRosterCsvSettings(SourceSettings, CsvFileOptions):
    """OneRoster 1.1 / 1.2 CSV: a folder or a zip with manifest.csv (bulk and delta)."""

    kind: Literal["oneroster_csv"]
    path: Path  # a folder or a .zip holding manifest.csv
    guardian_roles: list[str] = ["parent", "guardian", "relatedContact"]


class OneRosterCsvSource:
    """Streams come from the manifest: `file.users=bulk|delta|absent` and so on."""

    kind = "oneroster_csv"
    places_students = False

    def __init__(self, name: str, path: Path, options: CsvFileOptions | None = None) -> None:
        self.name = name
        self.options = options or CsvFileOptions()
        self.max_deactivation_share: float | None = self.options.max_deactivation_share
        self.package = FilePackage(path)
        self.manifest = self._read_manifest()
        self.version = self.manifest.get("oneroster.version", "1.1")

    def _read_manifest(self) -> dict[str, str]:
        if not self.package.exists("manifest.csv"):
            raise PermanentError(f"{self.package.path}: no manifest.csv (not a OneRoster package)")
        with self.package.open("manifest.csv") as fh:
            rows = list(csv.reader(io.StringIO(decode(fh.read()))))
        return {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) >= 2}

    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        out: list[Stream] = []
        for mapping in entity_mappings():
            declared = self.manifest.get(f"file.{mapping.entity}", "")
            present = self.package.exists(mapping.file)
            if declared == "absent" or (not declared and not present):
                continue
            mode: SyncMode = "delta" if declared == "delta" else "bulk"
            stream = Stream(mapping.entity, mode, mapping.file)
            if not present:
                stream.problems.append(
                    StreamProblem("missing_file", f"manifest lists {mapping.file}; it is not there")
                )
            else:
                open_stream(self.package, stream, self.options, "sourcedId")
            out.append(stream)
        return out

    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        yield from read_stream(self.package, stream, known_chunks, self.options)


def build(settings: Settings, cfg: OneRosterCsvSettings) -> BuiltSource:
    source = OneRosterCsvSource(cfg.name, settings.resolve(cfg.path), cfg)
    maps = entity_mappings(tuple(cfg.guardian_roles), source.version)
    # The folder's path is not part of what rows mean: moving it re-reads nothing.
    return BuiltSource(source, {m.entity: m for m in maps}, config_fingerprint(cfg, {"path"}))


register("source", "oneroster_csv", OneRosterCsvSettings, build)
