"""The service's units of work, shared by the CLI and the scheduled jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from service import db
from service.cases import EvaluationReport, evaluate
from service.config import Settings
from service.delivery import disclosure_records, make_deliver
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


def open_engine(settings: Settings, upgrade: bool = True) -> Engine:
    url = database_url(settings)
    if upgrade:
        db.upgrade(url)
    return db.make_engine(url)


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


@dataclass
class OutboxState:
    pending: int = 0
    delivered: int = 0
    dead: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def run_dispatch(engine: Engine, settings: Settings) -> DispatchReport:
    return dispatch(engine, make_deliver(settings), settings.outbox, disclosure_records)


def outbox_state(engine: Engine) -> OutboxState:
    state = OutboxState()
    with engine.connect() as conn:
        for status, count in conn.execute(
            select(OutboxItem.status, func.count()).group_by(OutboxItem.status)
        ):
            setattr(state, status, count)
    return state
