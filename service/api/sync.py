"""Sync status per source (`admin`): the last run, its outcome and rows, quarantine, cursors, lag.

Admin only: it is district-wide operations data (every school's counts, error messages, resume
cursors), which a token limited to one school should not read. How fresh the data is, per
source, is also on `/metrics` (`casebridge_sync_lag_seconds`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, func, select

from service.api.auth import BEARER, requires
from service.api.common import Timestamp, json_response
from service.api.context import engine, settings
from service.api.problems import documented
from service.clock import utcnow
from service.models import QuarantinedRecord, SyncCursor, SyncRun
from service.task_view import aware

bp = APIBlueprint("sync", __name__, abp_tags=[Tag(name="sync")], abp_security=BEARER)

RunOutcome = Literal["ok", "refused", "failed"]
ROW_COUNTS = ("read", "inserted", "updated", "deactivated", "unchanged")


class CursorView(BaseModel):
    resource: str
    value: str
    updated_at: Timestamp


class RunView(BaseModel):
    started_at: Timestamp
    finished_at: Timestamp | None
    outcome: RunOutcome = Field(
        description="ok; refused: a stream was skipped or refused (missing file, bad header, "
        "deactivation guard, an API stream stopped early); failed: the source could not be read."
    )
    error: str | None = Field(description="Why it failed (the kind only for unexpected errors).")
    refused: list[str] = Field(description="Each refused stream with why.")
    rows: dict[str, int] = Field(description="read, inserted, updated, deactivated, unchanged.")
    quarantined: int = Field(description="Records this run held back.")


class SourceStatus(BaseModel):
    source: str
    kind: str | None = Field(description="null: no longer in the configuration.")
    last_run: RunView | None
    quarantined_open: int = Field(description="Held-back records not resolved since.")
    cursors: list[CursorView] = Field(description="Where the next incremental pull resumes.")
    lag_seconds: float | None = Field(
        description="Seconds since the last run that did not fail finished (null: never)."
    )


class SyncStatus(BaseModel):
    sources: list[SourceStatus]


def run_view(run: Any) -> RunView:
    stats: dict[str, Any] = dict(run.stats or {})
    error = stats.pop("error", None)
    if isinstance(error, str) and error.startswith("unexpected "):
        # An error outside the taxonomy may quote a value it choked on: its kind only.
        error = error.partition(":")[0]
    entities = [e for e in stats.values() if isinstance(e, dict)]
    refused = [f"{name}: {e.get('refused') or e.get('failed')}" for name, e in stats.items()
               if isinstance(e, dict) and (e.get("refused") or e.get("failed"))]  # fmt: skip
    outcome: RunOutcome = "failed" if error else ("refused" if refused else "ok")
    return RunView(
        started_at=run.started_at, finished_at=run.finished_at, outcome=outcome, error=error,
        refused=refused,
        rows={k: sum(int(e.get(k) or 0) for e in entities) for k in ROW_COUNTS},
        quarantined=sum(sum((e.get("quarantined") or {}).values()) for e in entities),
    )  # fmt: skip


def latest_runs(conn: Connection) -> dict[str, Any]:
    newest = select(SyncRun.source, func.max(SyncRun.id).label("id")).group_by(SyncRun.source)
    ids = [row.id for row in conn.execute(newest)]
    rows = conn.execute(select(SyncRun.__table__).where(SyncRun.id.in_(ids))).all()
    return {r.source: r for r in rows}


def last_good_finish(conn: Connection) -> dict[str, datetime]:
    """Per source, when the newest run that did not fail finished (data is at least this fresh)."""
    out: dict[str, datetime] = {}
    q = select(SyncRun.source, SyncRun.finished_at, SyncRun.stats).where(
        SyncRun.finished_at.is_not(None)
    )
    for source, finished, stats in conn.execute(q.order_by(SyncRun.id)):
        if not (stats or {}).get("error"):
            out[source] = aware(finished)
    return out


def sync_status(db: Engine, configured: dict[str, str]) -> SyncStatus:
    now = utcnow()
    with db.connect() as conn:
        runs = latest_runs(conn)
        good = last_good_finish(conn)
        held = dict(
            conn.execute(
                select(QuarantinedRecord.source, func.count())
                .where(QuarantinedRecord.resolved_at.is_(None))
                .group_by(QuarantinedRecord.source)
            ).all()
        )
        cursors: dict[str, list[CursorView]] = {}
        for c in conn.execute(select(SyncCursor.__table__).order_by(SyncCursor.resource)):
            cursors.setdefault(c.source, []).append(
                CursorView(resource=c.resource, value=c.value, updated_at=c.updated_at)
            )
    names = list(configured) + sorted(set(runs) - set(configured))
    return SyncStatus(
        sources=[
            SourceStatus(
                source=name, kind=configured.get(name),
                last_run=run_view(runs[name]) if name in runs else None,
                quarantined_open=int(held.get(name, 0)), cursors=cursors.get(name, []),
                lag_seconds=round((now - good[name]).total_seconds(), 1) if name in good else None,
            )
            for name in names
        ]
    )  # fmt: skip


@bp.get(
    "/sync/status",
    summary="Sync status per source",
    operation_id="getSyncStatus",
    responses={200: SyncStatus, **documented(401, 403)},
)
@requires("admin")
def get_sync_status() -> Any:
    """Every configured source (and any that ran before but is no longer configured)."""
    configured = {s.name: s.kind for s in settings().sources}
    return json_response(sync_status(engine(), configured))
