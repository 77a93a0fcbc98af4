"""The service's units of work, shared by the CLI and the scheduled jobs."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from service import db
from service.cases import EvaluationReport, evaluate
from service.config import Settings
from service.delivery import Deliverer
from service.ingest import ProgressFn, SyncReport
from service.models import OutboxItem
from service.outbox import DispatchReport, dispatch
from service.sync import sync_sources


def database_url(settings: Settings) -> str:
    """SQLite paths in the config are relative to the config file, like every other path."""
    url = make_url(db.normalise_url(settings.database.url))
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            url = url.set(database=str(settings.resolve(path)))
    return url.render_as_string(hide_password=False)


def open_engine(settings: Settings, upgrade: bool = False) -> Engine:
    """The engine every command and the API use. The schema must be current: migrations are
    run by `casebridge db upgrade` (or the embedded demo), never by N workers racing."""
    url = database_url(settings)
    if upgrade:
        db.upgrade(url)
    engine = db.make_engine(url)
    db.check_schema_current(engine, url)
    return engine


def run_sync(
    engine: Engine,
    settings: Settings,
    only: str | None = None,
    progress: ProgressFn | None = None,
    full: bool = False,
    dry_run: bool = False,
    allow_deactivation: bool = False,
) -> list[SyncReport]:
    return sync_sources(engine, settings, only, progress, full, dry_run, allow_deactivation)


def run_evaluate(engine: Engine, settings: Settings, as_of: date | None = None) -> EvaluationReport:
    return evaluate(engine, settings, as_of)


def outbox_counts(engine: Engine) -> Counter[str]:
    """Items by status."""
    with engine.connect() as conn:
        return Counter(
            dict(
                conn.execute(
                    select(OutboxItem.status, func.count()).group_by(OutboxItem.status)
                ).all()
            )
        )


def run_dispatch(engine: Engine, settings: Settings) -> DispatchReport:
    from service import target_health
    from service.referrals import place_received

    target_health.watch(engine)  # breakers opening here are seen by /readyz and /metrics
    place_received(engine, settings)  # referrals people sent: their tasks go in this pass
    return dispatch(engine, Deliverer(engine, settings), settings.outbox)
