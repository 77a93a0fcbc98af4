"""Build each configured source with its mappings and import it."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import Engine, insert, text

from connectors.base import BuiltSource
from connectors.registry import lookup
from service.clock import utcnow
from service.config import Settings, SourceSettings
from service.errors import CasebridgeError
from service.ingest import Importer, ProgressFn, SyncReport
from service.models import SyncRun

log = structlog.get_logger(__name__)


def build_source(settings: Settings, cfg: SourceSettings) -> BuiltSource:
    """The connector its kind registered, with its mappings and config fingerprint."""
    return lookup("source", cfg.kind).factory(settings, cfg)


def sync_sources(
    engine: Engine,
    settings: Settings,
    only: str | None = None,
    progress: ProgressFn | None = None,
    full: bool = False,
    dry_run: bool = False,
    allow_deactivation: bool = False,
) -> list[SyncReport]:
    """Import every configured source (or just `only`); one failing source does not stop others.

    `allow_deactivation` lets a bulk file deactivate more than its source's
    max_deactivation_share (and an empty file deactivate everything it fed)."""
    reports: list[SyncReport] = []
    for cfg in settings.sources:
        if only and cfg.name != only:
            continue
        started = utcnow()
        try:
            built = build_source(settings, cfg)
            importer = Importer(
                engine, built.source, built.mappings, built.fingerprint, progress, full, dry_run,
                allow_deactivation,
            )  # fmt: skip
            reports.append(importer.run())
            if built.source.places_students and not dry_run:
                place_students(engine, cfg.name)
        except CasebridgeError as exc:
            log.error("sync.source_failed", source=cfg.name, error=str(exc))
            reports.append(SyncReport(cfg.name, error=str(exc)))
            _record_failure(engine, cfg.name, started, str(exc), dry_run)
        except Exception as exc:
            # Outside the taxonomy (a client bug, a KeyError in a mapping): this source's run
            # failed and says why; the other sources still run.
            error = f"unexpected {type(exc).__name__}: {exc}"
            log.error("sync.source_crashed", source=cfg.name, error=type(exc).__name__)
            reports.append(SyncReport(cfg.name, error=error))
            _record_failure(engine, cfg.name, started, error, dry_run)
    return reports


def _record_failure(
    engine: Engine, source: str, started: datetime, error: str, dry_run: bool
) -> None:
    if dry_run:
        return
    with engine.begin() as conn:
        conn.execute(
            insert(SyncRun).values(
                source=source, started_at=started, finished_at=utcnow(),
                stats={"error": error[:2000]},
            )
        )  # fmt: skip


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
