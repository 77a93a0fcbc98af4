"""The Ed-Fi ODS/API source against a real local ODS-shaped server, on both databases."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.config import Settings, parse_settings
from service.pipeline import open_engine, run_evaluate, run_sync
from tests.conftest import raw_config_for, write_config
from tests.fixtures.edfi_server import EdFiServer
from tests.fixtures.grand_bend import load_grand_bend, source_counts, synthetic_edfi
from tests.fixtures.http_server import Fault

GRAND_BEND = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "edfi" / "grand-bend-ds5.2"
)
needs_grand_bend = pytest.mark.skipif(
    not GRAND_BEND.is_dir(),
    reason=f"the Grand Bend sample data is not here ({GRAND_BEND}): it ships in ../shared only",
)
TABLES = ("students", "contacts", "student_contacts", "enrollments", "attendance_events",
          "discipline_reports", "discipline_incidents", "calendar_days")  # fmt: skip


def edfi_source(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "edfi", "name": "ods", "base_url": base_url, "client_key": "key",
            "client_secret": "secret", "change_version_window": 200_000,
            "http": {"backoff_base_seconds": 0.01, "max_attempts": 5}, **extra}  # fmt: skip


def settings_for_ods(db_url: str, tmp: Path, source: dict[str, Any], **over: Any) -> Settings:
    raw = raw_config_for(db_url, tmp, tmp / "out", sources=[source], **over)
    return parse_settings(raw, "edfi.yaml", tmp)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t} WHERE active")).scalar_one()
                for t in TABLES}  # fmt: skip


@pytest.fixture(scope="module")
def small() -> dict[str, list[dict[str, Any]]]:
    return synthetic_edfi(300, seed=3)


@pytest.fixture
def server(small: dict[str, list[dict[str, Any]]]) -> Iterator[EdFiServer]:
    srv = EdFiServer(small, token_ttl=3600)
    srv.start()
    yield srv
    srv.stop()


def expected_counts(resources: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {
        "students": len(resources["students"]),
        "contacts": len(resources["contacts"]),
        "student_contacts": len(resources["studentContactAssociations"]),
        "enrollments": len(resources["studentSchoolAssociations"]),
        "attendance_events": len(resources["studentSchoolAttendanceEvents"])
        + len(resources.get("studentSectionAttendanceEvents", [])),
        "discipline_reports": len(resources["disciplineIncidents"]),
        "discipline_incidents": len(resources["studentDisciplineIncidentBehaviorAssociations"])
        + len(resources["disciplineActions"]),
        "calendar_days": len({(c["calendarReference"]["schoolId"], c["date"])
                              for c in resources["calendarDates"]}),
    }  # fmt: skip


@needs_grand_bend
def test_grand_bend_lands_with_the_counts_of_the_source_files(db_url: str, tmp_path: Path) -> None:
    srv = EdFiServer(load_grand_bend(GRAND_BEND))
    srv.start()
    try:
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url))
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        got = counts(engine)
        xml = source_counts(GRAND_BEND)
        assert got["students"] == xml["students"]
        assert got["contacts"] == xml["contacts"]
        assert got["attendance_events"] == xml["studentSchoolAttendanceEvents"]
        assert got["discipline_reports"] == xml["disciplineIncidents"]
        assert got["discipline_incidents"] == (
            xml["studentDisciplineIncidentBehaviorAssociations"] + xml["disciplineActions"]
        )
        assert sum(report.quarantined().values()) == 0
        # A second sync after 1% of students and attendance changed reads only those records.
        touched = srv.touch_fraction("students", 0.01, seed=1)
        touched += srv.touch_fraction("studentSchoolAttendanceEvents", 0.01, seed=2)
        [again] = run_sync(engine, settings)
        assert again.total("read") == len(touched)
        assert again.entities["students"].read == len(touched) - again.entities[
            "studentSchoolAttendanceEvents"].read  # fmt: skip
    finally:
        srv.stop()


def test_full_then_incremental_with_deletes_and_key_changes(
    db_url: str, tmp_path: Path, server: EdFiServer, small: dict[str, list[dict[str, Any]]]
) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(server.base_url))
    engine = open_engine(settings)
    [first] = run_sync(engine, settings)
    assert first.error is None, first.error
    assert counts(engine) == expected_counts(small)
    with engine.connect() as conn:
        placed = conn.execute(text("SELECT COUNT(*) FROM students WHERE school_id IS NOT NULL"))
        assert placed.scalar_one() == len(small["students"])  # school from the enrollment
    event = server.records("studentSchoolAttendanceEvents")[0]
    server.delete("studentSchoolAttendanceEvents", event["id"])
    ssa = server.records("studentSchoolAssociations")[5]
    server.change_key("studentSchoolAssociations", ssa["id"], {"entryDate": "2025-09-02"})
    server.update("students", server.records("students")[7]["id"], firstName="Renamed")
    [delta] = run_sync(engine, settings)
    assert delta.entities["studentSchoolAttendanceEvents"].deactivated == 1
    # A changed natural key updates the enrollment in place (same Ed-Fi id), nothing beside it.
    ssas = delta.entities["studentSchoolAssociations"]
    assert (ssas.deactivated, ssas.inserted, ssas.updated) == (0, 0, 1)
    with engine.connect() as conn:
        begins = conn.execute(
            text("SELECT begin_date, active FROM enrollments WHERE resource_id = :i"),
            {"i": ssa["id"]},
        ).all()
    assert [(str(b), bool(a)) for b, a in begins] == [("2025-09-02", True)]
    assert (delta.entities["students"].read, delta.entities["students"].updated) == (1, 1)
    after = counts(engine)
    assert after["attendance_events"] == expected_counts(small)["attendance_events"] - 1
    assert after["enrollments"] == expected_counts(small)["enrollments"]
    # Deltas were asked for by change-version window, not by re-reading everything.
    windows = [r.query.get("minChangeVersion", ["0"])[0] for r in server.requests
               if r.path.endswith("/students")]  # fmt: skip
    assert windows[-1] != "0"


def test_a_purged_change_history_forces_a_full_reconcile(
    db_url: str, tmp_path: Path, server: EdFiServer, small: dict[str, list[dict[str, Any]]]
) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(server.base_url))
    engine = open_engine(settings)
    run_sync(engine, settings)
    gone = server.records("students")[3]
    server.delete("students", gone["id"])
    server.set_oldest_change_version(server.newest_change_version)  # the delete is forgotten
    [report] = run_sync(engine, settings)
    students = report.entities["students"]
    assert students.read == len(small["students"]) - 1  # everything again
    assert students.deactivated == 1  # and the missing one is found by absence
    assert counts(engine)["students"] == len(small["students"]) - 1


@pytest.mark.parametrize(
    ("url_mode", "data_standard", "cursor_paging"),
    [("year_specific", 5, False), ("instance_year_specific", 4, False), ("shared", 5, True)],
)
def test_url_modes_data_standards_and_cursor_paging(
    db_url: str,
    tmp_path: Path,
    small: dict[str, list[dict[str, Any]]],
    url_mode: str,
    data_standard: int,
    cursor_paging: bool,
) -> None:
    srv = EdFiServer(small, data_standard=data_standard, url_mode=url_mode, school_year=2026,
                     instance="255901", cursor_paging=cursor_paging)  # fmt: skip
    srv.start()
    try:
        source = edfi_source(srv.base_url, school_year=2026, instance="255901",
                             cursor_paging=cursor_paging, page_size=100)  # fmt: skip
        settings = settings_for_ods(db_url, tmp_path, source)
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert counts(engine) == expected_counts(small)
        family = "parents" if data_standard == 4 else "contacts"
        assert any(p.endswith(f"/ed-fi/{family}") for p in srv.paths())
        if url_mode != "shared":
            assert all("/2026/" in p for p in srv.paths() if "/ed-fi/" in p)
        if cursor_paging:
            assert any("pageToken" in r.query for r in srv.requests)
    finally:
        srv.stop()


def test_faults_retries_and_a_token_expiring_mid_pull(
    db_url: str, tmp_path: Path, server: EdFiServer, small: dict[str, list[dict[str, Any]]]
) -> None:
    server.faults += [
        Fault("studentSchoolAttendanceEvents", status=429, retry_after=1),
        Fault("/students", status=502, times=3),
        Fault("/contacts", status=503),
        Fault("studentContactAssociations", kind="html"),
        Fault("disciplineActions", kind="truncated"),
        Fault("calendarDates", kind="drop"),
    ]
    original = server.take_fault

    def expire_midway(path: str) -> Fault | None:
        if path.endswith("/studentSchoolAssociations") and server.token_requests == 1:
            server.expire_tokens()  # the token dies between two resources of one pull
        return original(path)

    server.take_fault = expire_midway  # type: ignore[method-assign]
    settings = settings_for_ods(db_url, tmp_path, edfi_source(server.base_url, page_size=50))
    engine = open_engine(settings)
    started = time.monotonic()
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert counts(engine) == expected_counts(small)
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    assert server.token_requests == 2  # refreshed once after the 401
    assert all(f.times == 0 for f in server.faults)


def test_rows_changing_between_pages_are_neither_lost_nor_doubled(
    db_url: str, tmp_path: Path, server: EdFiServer, small: dict[str, list[dict[str, Any]]]
) -> None:
    events = server.records("studentSchoolAttendanceEvents")
    original = server.take_fault
    changed: list[str] = []

    def change_during_pull(path: str) -> Fault | None:
        if path.endswith("/studentSchoolAttendanceEvents") and not changed:
            for record in events[:5]:  # these leave the window while the pull pages through it
                server.update("studentSchoolAttendanceEvents", record["id"],
                              attendanceEventReason="corrected")  # fmt: skip
                changed.append(record["id"])
        return original(path)

    server.take_fault = change_during_pull  # type: ignore[method-assign]
    settings = settings_for_ods(db_url, tmp_path, edfi_source(server.base_url, page_size=50))
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_sync(engine, settings)  # the changed rows come back in the next window
    assert counts(engine)["attendance_events"] == len(small["studentSchoolAttendanceEvents"])


def test_a_sync_killed_mid_pull_resumes_to_the_same_data(
    db_url: str, tmp_path: Path, server: EdFiServer, small: dict[str, list[dict[str, Any]]]
) -> None:
    server.page_delay = 0.03
    source = edfi_source(server.base_url, page_size=50, change_version_window=500)
    config = write_config(tmp_path / "c.yaml", db_url, tmp_path, tmp_path / "out", sources=[source])
    command = [sys.executable, "-m", "service.cli", "--config", str(config), "sync"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = settings_for_ods(db_url, tmp_path, source)
    engine = open_engine(settings)
    try:
        deadline = time.monotonic() + 90
        while counts(engine)["attendance_events"] == 0:  # the first window has committed
            assert proc.poll() is None, "the sync finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    server.page_delay = 0.0
    partial = counts(engine)
    assert 0 < partial["attendance_events"] < len(small["studentSchoolAttendanceEvents"])
    students_before = len(server.paths(lambda r: r.path.endswith("/students")))
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert counts(engine) == expected_counts(small)
    # Students had finished: the resumed run read no student again.
    assert report.entities["students"].read == 0
    assert len(server.paths(lambda r: r.path.endswith("/students"))) - students_before <= 1


def test_edfi_data_drives_cases(db_url: str, tmp_path: Path, server: EdFiServer) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(server.base_url), as_of="2026-03-02")
    engine = open_engine(settings)
    run_sync(engine, settings)
    report = run_evaluate(engine, settings)
    assert report.students_evaluated == 300
    with engine.connect() as conn:
        enrolled = conn.execute(text("SELECT MAX(enrolled_days) FROM student_indicators"))
        assert enrolled.scalar_one() > 20  # calendar and enrollments from Ed-Fi line up
