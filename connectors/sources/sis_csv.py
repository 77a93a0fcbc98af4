"""The district SIS's own CSV export: calendar, attendance and discipline files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from connectors.base import BuiltSource, Chunk, Stream, StreamProblem, config_fingerprint
from connectors.registry import register
from connectors.sources.csv_chunks import CsvFileOptions, open_stream, read_stream
from connectors.sources.file_package import FilePackage
from mappings.sis_export import SisExportMapping, sis_entity_mappings
from service.config import Settings, SourceSettings


class SisCsvSettings(SourceSettings, SisExportMapping, CsvFileOptions):
    """The SIS's own CSV export: calendar, attendance and discipline, mapped by the district."""

    kind: Literal["sis_csv"]
    path: Path


class SisCsvExportSource:
    """Each configured file is one bulk stream: the export is a full snapshot every night."""

    kind = "sis_csv"
    places_students = False

    def __init__(self, cfg: SisCsvSettings, path: Path) -> None:
        self.name = cfg.name
        self.options: CsvFileOptions = cfg
        self.max_deactivation_share: float | None = cfg.max_deactivation_share
        self.package = FilePackage(path)
        self.files = {
            entity: spec.file
            for entity, spec in (
                ("calendar", cfg.calendar),
                ("attendance", cfg.attendance),
                ("discipline", cfg.discipline),
            )
            if spec is not None
        }
        # The column that names a record uniquely, where the export has one.
        self.keys = {
            "attendance": cfg.attendance.columns.get("event_id") if cfg.attendance else None,
            "discipline": cfg.discipline.columns.get("incident_id") if cfg.discipline else None,
        }

    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        out: list[Stream] = []
        for entity, file in self.files.items():
            stream = Stream(entity, "bulk", file)
            if not self.package.exists(file):
                stream.problems.append(StreamProblem("missing_file", f"{file} is not there"))
            else:
                open_stream(self.package, stream, self.options, self.keys.get(entity))
            out.append(stream)
        return out

    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        yield from read_stream(self.package, stream, known_chunks, self.options)


def build(settings: Settings, cfg: SisCsvSettings) -> BuiltSource:
    maps = sis_entity_mappings(cfg)
    source = SisCsvExportSource(cfg, settings.resolve(cfg.path))
    return BuiltSource(source, {m.entity: m for m in maps}, config_fingerprint(cfg, {"path"}))


register("source", "sis_csv", SisCsvSettings, build)
