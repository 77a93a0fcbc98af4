"""Build each configured source with its mappings and import it."""

from __future__ import annotations

import hashlib

import structlog
from sqlalchemy import Engine, text

from connectors.base import Source
from connectors.sources.edfi import EdFiApiSource, mappings_factory
from connectors.sources.oneroster_csv import OneRosterCsvSource
from connectors.sources.oneroster_rest import OneRosterRestApiSource
from connectors.sources.sis_csv import SisCsvExportSource
from mappings.edfi import DescriptorMap
from mappings.oneroster import entity_mappings
from mappings.sis_export import sis_entity_mappings
from mappings.spec import EntityMapping
from service.config import EdFiSource, OneRosterRestSource, Settings, SisCsvSource, SourceConfig
from service.config import OneRosterCsvSource as OneRosterCsvConfig
from service.errors import CasebridgeError, PermanentError
from service.ingest import Importer, ProgressFn, SyncReport

log = structlog.get_logger(__name__)


def build_source(
    settings: Settings, cfg: SourceConfig
) -> tuple[Source, dict[str, EntityMapping], bytes]:
    """The connector, its mappings by entity, and a fingerprint of the config they depend on."""
    fingerprint = hashlib.blake2b(cfg.model_dump_json().encode(), digest_size=16).digest()
    if isinstance(cfg, EdFiSource):
        override = settings.resolve(cfg.descriptor_map) if cfg.descriptor_map else None
        if override is not None:
            if not override.is_file():
                raise PermanentError(f"{cfg.name}: descriptor_map {override} does not exist")
            fingerprint += override.read_bytes()  # an edited map re-reads unchanged pages
        source = EdFiApiSource(cfg, mappings_factory(DescriptorMap.load(override)))
        return source, source.mappings, fingerprint
    if isinstance(cfg, OneRosterRestSource):
        rest = OneRosterRestApiSource(cfg)
        return rest, rest.mappings, fingerprint
    path = settings.resolve(cfg.path)
    if isinstance(cfg, OneRosterCsvConfig):
        maps = entity_mappings(tuple(cfg.guardian_roles))
        return OneRosterCsvSource(cfg.name, path), {m.entity: m for m in maps}, fingerprint
    if isinstance(cfg, SisCsvSource):
        maps = sis_entity_mappings(cfg)
        return SisCsvExportSource(cfg, path), {m.entity: m for m in maps}, fingerprint
    raise TypeError(f"no connector for source kind {cfg.kind!r}")  # pragma: no cover


def sync_sources(
    engine: Engine,
    settings: Settings,
    only: str | None = None,
    progress: ProgressFn | None = None,
    full: bool = False,
    dry_run: bool = False,
) -> list[SyncReport]:
    """Import every configured source (or just `only`); one failing source does not stop others."""
    reports: list[SyncReport] = []
    for cfg in settings.sources:
        if only and cfg.name != only:
            continue
        try:
            source, maps, fingerprint = build_source(settings, cfg)
            importer = Importer(engine, source, maps, fingerprint, progress, full, dry_run)
            reports.append(importer.run())
            if isinstance(cfg, EdFiSource) and not dry_run:
                place_students(engine, cfg.name)
        except CasebridgeError as exc:
            log.error("sync.source_failed", source=cfg.name, error=str(exc))
            reports.append(SyncReport(cfg.name, error=str(exc)))
    return reports


def place_students(engine: Engine, source: str) -> None:
    """Ed-Fi keeps a student's school and grade on the enrollment: copy the latest one over."""
    latest = (
        "SELECT e.{col} FROM enrollments e WHERE e.user_id = students.student_id "
        "AND e.active AND e.role = 'student' "
        "ORDER BY e.end_date IS NULL DESC, e.begin_date DESC LIMIT 1"
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                f"UPDATE students SET school_id = ({latest.format(col='school_id')}), "
                f"grade_level = ({latest.format(col='grade_level')}) WHERE source = :source"
            ),
            {"source": source},
        )
