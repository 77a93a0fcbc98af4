"""Sync: an error outside the taxonomy fails one source (or one record), never the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, select, text

import tests.plugins.kinds  # noqa: F401  (registers the test-only kinds)
from service.config import Settings
from service.models import QuarantinedRecord, SyncRun
from service.pipeline import run_sync
from tools.synthetic import generate_district


def test_a_crashing_source_is_recorded_on_its_run_and_the_others_still_sync(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=20, seed=3)
    base = make_settings(data)
    crashing = {"name": "buggy", "kind": "test_crashing"}
    sources = [crashing, *(s.model_dump(mode="json") for s in base.sources)]
    settings = make_settings(data, sources=sources)

    reports = {r.source: r for r in run_sync(engine, settings)}

    assert reports["buggy"].error == "unexpected KeyError: 'studentUniqueId'"
    assert reports["roster"].error is None and reports["sis-export"].error is None
    with engine.connect() as conn:
        students = conn.execute(text("SELECT COUNT(*) FROM students WHERE active")).scalar_one()
        runs = dict(conn.execute(select(SyncRun.source, SyncRun.stats)).all())
    assert students == 20
    assert runs["buggy"] == {"error": "unexpected KeyError: 'studentUniqueId'"}
    assert "error" not in runs["roster"]


def test_a_mapping_that_is_not_total_quarantines_the_record_and_keeps_the_rest(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, sources=[{"name": "partial", "kind": "test_crashing", "fail_in": "mapping"}]
    )

    [report] = run_sync(engine, settings)

    assert report.error is None
    assert report.quarantined() == {"mapping_error": 1}
    with engine.connect() as conn:
        schools = conn.execute(text("SELECT school_id FROM schools ORDER BY 1")).scalars().all()
        [bad] = conn.execute(select(QuarantinedRecord.__table__)).mappings().all()
    assert schools == ["org-a", "org-c"]
    assert (bad["reason"], bad["detail"]) == ("mapping_error", "KeyError: 'name'")
    assert bad["payload"]["sourcedId"] == "org-b"
