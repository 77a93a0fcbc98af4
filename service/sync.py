"""Build each configured source with its mappings and import it."""

from __future__ import annotations

import hashlib

import structlog
from sqlalchemy import Engine

from connectors.base import Source
from connectors.sources.oneroster_csv import OneRosterCsvSource
from connectors.sources.sis_csv import SisCsvExportSource
from mappings.oneroster import entity_mappings
from mappings.sis_export import sis_entity_mappings
from mappings.spec import EntityMapping
from service.config import OneRosterCsvSource as OneRosterCsvConfig
from service.config import Settings, SisCsvSource, SourceConfig
from service.errors import CasebridgeError
from service.ingest import Importer, ProgressFn, SyncReport

log = structlog.get_logger(__name__)


def build_source(
    settings: Settings, cfg: SourceConfig
) -> tuple[Source, dict[str, EntityMapping], bytes]:
    """The connector, its mappings by entity, and a fingerprint of the config they depend on."""
    fingerprint = hashlib.blake2b(cfg.model_dump_json().encode(), digest_size=16).digest()
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
) -> list[SyncReport]:
    """Import every configured source (or just `only`); one failing source does not stop others."""
    reports: list[SyncReport] = []
    for cfg in settings.sources:
        if only and cfg.name != only:
            continue
        try:
            source, maps, fingerprint = build_source(settings, cfg)
            reports.append(Importer(engine, source, maps, fingerprint, progress).run())
        except CasebridgeError as exc:
            log.error("sync.source_failed", source=cfg.name, error=str(exc))
            reports.append(SyncReport(cfg.name, error=str(exc)))
    return reports
