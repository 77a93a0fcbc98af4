"""OneRoster CSV and SIS export imports: bulk, delta, bad input, re-import, on both databases."""

from __future__ import annotations

import csv
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

from connectors.sources.csv_chunks import MAX_ROWS
from service.config import Settings
from service.ingest import SyncReport
from service.models import AttendanceEvent, Enrollment, QuarantinedRecord, Student
from service.pipeline import run_sync
from tests.builders import TinyDistrict, weekdays
from tools.synthetic import generate_district


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def rewrite(path: Path, header: list[str], data: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, header, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(data)


def rename_column(path: Path, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n", 1)
    path.write_text(lines[0].replace(old, new) + "\n" + lines[1], encoding="utf-8")


def entity(reports: list[SyncReport], name: str):  # type: ignore[no-untyped-def]
    for r in reports:
        if name in r.entities:
            return r.entities[name]
    raise AssertionError(f"no {name} in {[list(r.entities) for r in reports]}")


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def student_ids(data: Path) -> list[str]:
    roles = {r["userSourcedId"]: r["role"] for r in rows(data / "oneroster" / "roles.csv")}
    return [
        u["sourcedId"]
        for u in rows(data / "oneroster" / "users.csv")
        if roles.get(u["sourcedId"]) == "student"
    ]


def test_bulk_load_lands_every_record_of_the_files(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=120, seed=11)
    reports = run_sync(engine, make_settings(data))
    assert all(r.error is None for r in reports)
    assert count(engine, "SELECT COUNT(*) FROM students WHERE active") == summary.students
    assert count(engine, "SELECT COUNT(*) FROM contacts WHERE active") == summary.guardians
    assert count(engine, "SELECT COUNT(*) FROM attendance_events") == summary.attendance_events
    assert (
        count(engine, "SELECT COUNT(*) FROM discipline_incidents") == summary.discipline_incidents
    )
    assert count(engine, "SELECT COUNT(*) FROM grades") == summary.results
    assert count(engine, "SELECT COUNT(*) FROM quarantine") == 0
    users = entity(reports, "users")
    assert users.read == summary.files["oneroster/users.csv"]
    assert users.ignored == summary.teachers  # teachers are read, not kept as case subjects
    # Guardian links come from the agents lists, so every student can be reached.
    assert (
        count(engine, "SELECT COUNT(DISTINCT student_id) FROM student_contacts") == summary.students
    )


def test_delta_updates_deletes_and_adds_without_touching_the_rest(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=5)
    settings = make_settings(data)
    run_sync(engine, settings)
    users = rows(data / "oneroster" / "users.csv")
    header = list(users[0].keys())
    sids = student_ids(data)
    renamed, removed = sids[0], sids[1]
    changed = dict(next(u for u in users if u["sourcedId"] == renamed), familyName="Delta-Renamed")
    deleted = dict(next(u for u in users if u["sourcedId"] == removed), status="tobedeleted")
    added = dict(changed, sourcedId="new-student-1", identifier="999001", familyName="Newcomer")
    delta = tmp_path / "delta"
    (delta / "oneroster").mkdir(parents=True)
    shutil.copytree(data / "sis", delta / "sis")
    rewrite(delta / "oneroster" / "users.csv", header, [changed, deleted, added])
    rewrite(
        delta / "oneroster" / "roles.csv",
        ["sourcedId", "status", "dateLastModified", "userSourcedId", "roleType", "role",
         "orgSourcedId"],
        [{"sourcedId": "r-new", "status": "active", "dateLastModified": "2026-11-20T02:00:00Z",
          "userSourcedId": "new-student-1", "roleType": "primary", "role": "student",
          "orgSourcedId": changed["primaryOrgSourcedId"]}],
    )  # fmt: skip
    (delta / "oneroster" / "manifest.csv").write_text(
        "propertyName,value\nmanifest.version,1.0\noneroster.version,1.2\n"
        "file.users,delta\nfile.roles,delta\nfile.enrollments,absent\n"
    )
    before = count(engine, "SELECT COUNT(*) FROM students WHERE active")
    reports = run_sync(engine, make_settings(delta))
    stats = entity(reports, "users")
    assert (stats.read, stats.inserted, stats.updated) == (3, 1, 2)
    with engine.connect() as conn:
        assert (
            conn.execute(
                select(Student.last_name).where(Student.student_id == renamed)
            ).scalar_one()
            == "Delta-Renamed"
        )
        # tobedeleted deactivates; the record (and its history) stays.
        assert (
            conn.execute(select(Student.active).where(Student.student_id == removed)).scalar_one()
            is False
        )
        assert (
            conn.execute(
                select(Student.local_id).where(Student.student_id == "new-student-1")
            ).scalar_one()
            == "999001"
        )
    assert count(engine, "SELECT COUNT(*) FROM students WHERE active") == before  # -1 +1
    assert count(engine, "SELECT COUNT(*) FROM students") == before + 1


def test_student_missing_from_a_bulk_file_becomes_inactive_not_deleted(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=80, seed=9)
    settings = make_settings(data)
    run_sync(engine, settings)
    users_path = data / "oneroster" / "users.csv"
    users = rows(users_path)
    gone = student_ids(data)[40]
    rewrite(users_path, list(users[0].keys()), [u for u in users if u["sourcedId"] != gone])
    reports = run_sync(engine, settings)
    assert entity(reports, "users").deactivated == 1
    with engine.connect() as conn:
        active = conn.execute(select(Student.active).where(Student.student_id == gone)).scalar_one()
    assert active is False
    assert count(engine, "SELECT COUNT(*) FROM students WHERE NOT active") == 1
    # The student coming back in a later file is active again.
    rewrite(users_path, list(users[0].keys()), users)
    run_sync(engine, settings)
    assert count(engine, "SELECT COUNT(*) FROM students WHERE NOT active") == 0


def test_reimport_of_an_unchanged_package_skips_it_and_one_changed_row_is_one_update(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=1500, seed=2)
    settings = make_settings(data)
    first = run_sync(engine, settings)
    second = run_sync(engine, settings)
    for report in second:
        for name, s in report.entities.items():
            assert (s.inserted, s.updated, s.deactivated) == (0, 0, 0), name
            assert s.unchanged == s.read, name
    assert sum(r.total("read") for r in first) == sum(r.total("read") for r in second)
    users_path = data / "oneroster" / "users.csv"
    users = rows(users_path)
    target = student_ids(data)[700]
    for u in users:
        if u["sourcedId"] == target:
            u["givenName"] = "Changed"
    rewrite(users_path, list(users[0].keys()), users)
    third = run_sync(engine, settings)
    stats = entity(third, "users")
    assert (stats.inserted, stats.updated, stats.deactivated) == (0, 1, 0)
    # Only the content-defined chunk around the change was parsed again.
    assert 0 < stats.read - stats.unchanged <= MAX_ROWS
    assert stats.unchanged > stats.read / 2


def test_misspelled_headers_and_bad_dates_are_reported_and_good_rows_land(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 30)
    for i in range(6):
        d.student(f"s{i}", f"10{i}", guardians=(f"g{i}",))
        d.guardian(f"g{i}", (f"s{i}",), sms=f"(212) 555-01{i:02d}")
    d.absent("100", days[3])
    d.absent("101", days[4])
    d.incident("inc-1", "102", days[5])
    d.write()
    ors = d.root / "oneroster"
    enr = rows(ors / "enrollments.csv")
    enr[1]["beginDate"] = "1/05/2023"  # a real-world date the spec does not allow
    enr[2]["endDate"] = "2026-13-45"
    rewrite(ors / "enrollments.csv", list(enr[0].keys()), enr)
    # A required column misspelled: the file cannot be read. An optional one: reported, rows land.
    rename_column(d.root / "sis" / "discipline.csv", "IncidentID", "IncidentNo")
    rename_column(d.root / "sis" / "attendance.csv", "Period", "Perod")
    att_settings = make_settings(d.root)
    reports = run_sync(engine, att_settings)
    problems = [p for r in reports for s in r.entities.values() for p in s.problems]
    assert any("discipline.csv: required column 'IncidentID' is missing" in p and "IncidentNo" in p
               for p in problems), problems  # fmt: skip
    assert count(engine, "SELECT COUNT(*) FROM discipline_incidents") == 0
    assert any("unknown column 'Perod'" in p and "'Period'" in p for p in problems), problems
    enrollments = entity(reports, "enrollments")
    assert enrollments.quarantined == {"bad_date": 2}
    assert count(engine, "SELECT COUNT(*) FROM enrollments") == len(enr) - 2
    assert count(engine, "SELECT COUNT(*) FROM attendance_events") == 2
    with engine.connect() as conn:
        bad = conn.execute(
            select(QuarantinedRecord.reason, QuarantinedRecord.detail, QuarantinedRecord.location,
                   QuarantinedRecord.payload).where(QuarantinedRecord.entity == "enrollments")
            .order_by(QuarantinedRecord.location)
        ).all()  # fmt: skip
    assert [b.location for b in bad] == ["enrollments.csv:3", "enrollments.csv:4"]
    assert "'1/05/2023'" in bad[0].detail and bad[0].payload["beginDate"] == "1/05/2023"
    assert count(engine, "SELECT COUNT(*) FROM students") == 6
    # The same bad rows on the next run are counted again but stored once.
    run_sync(engine, att_settings)
    assert count(engine, "SELECT COUNT(*) FROM quarantine WHERE entity = 'enrollments'") == 2
    assert count(engine, "SELECT MAX(times_seen) FROM quarantine WHERE entity = 'enrollments'") == 2


def test_a_row_quarantined_for_an_unknown_student_lands_once_the_student_arrives(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 25)
    d.student("s1", "101")
    d.absent("101", days[2])
    d.absent("202", days[3])  # student 202 is not in the roster yet
    d.write()
    settings = make_settings(d.root)
    reports = run_sync(engine, settings)
    assert entity(reports, "attendance").quarantined == {"unknown_student": 1}
    d.student("s2", "202")
    d.write()
    run_sync(engine, settings)
    with engine.connect() as conn:
        landed = conn.execute(
            select(AttendanceEvent.student_id).where(AttendanceEvent.day == days[3])
        ).scalar_one()
    assert landed == "s2"


def test_oneroster_11_zip_package_lands_like_a_folder(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=50, seed=4, oneroster_version="1.1")
    archive = tmp_path / "zipped" / "oneroster"
    archive.parent.mkdir()
    shutil.copytree(data / "sis", tmp_path / "zipped" / "sis")
    with zipfile.ZipFile(tmp_path / "package.zip", "w") as zf:
        for f in sorted((data / "oneroster").iterdir()):
            zf.write(f, f"export/{f.name}")  # vendors often nest files in one folder
    settings = make_settings(data)
    raw_sources = [s.model_dump(mode="json") for s in settings.sources]
    raw_sources[0]["path"] = str(tmp_path / "package.zip")
    settings = make_settings(data, sources=raw_sources)
    reports = run_sync(engine, settings)
    assert all(r.error is None for r in reports)
    assert count(engine, "SELECT COUNT(*) FROM students") == summary.students
    assert count(engine, "SELECT COUNT(*) FROM contacts") == summary.guardians
    with engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(Enrollment)).scalar_one()
            == summary.enrollments
        )


def test_a_missing_package_fails_that_source_only(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    d.school_days("sch-1", 5)
    d.write()
    settings = make_settings(d.root)
    raw_sources = [s.model_dump(mode="json") for s in settings.sources]
    raw_sources[0]["path"] = str(tmp_path / "nowhere")
    reports = run_sync(engine, make_settings(d.root, sources=raw_sources))
    assert reports[0].error and "nowhere" in reports[0].error
    assert reports[1].error is None
    # The export still ran; its calendar names a school the missing roster would have held.
    calendar = reports[1].entities["calendar"]
    assert calendar.read == len(weekdays(d.calendar[0][1], 5))
    assert calendar.quarantined == {"unknown_school": calendar.read}


def test_dry_run_counts_and_writes_nothing(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=40, seed=6)
    reports = run_sync(engine, make_settings(data), dry_run=True)
    # Counted as if written: later files of the source see the earlier ones' rows.
    assert entity(reports, "users").inserted == summary.students
    assert entity(reports, "enrollments").inserted == summary.enrollments
    for t in ("students", "contacts", "attendance_events", "ingest_chunks", "sync_runs"):
        assert count(engine, f"SELECT COUNT(*) FROM {t}") == 0, t


def test_first_import_with_keys_repeated_across_batches_lands_each_once(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: Any
) -> None:
    """The empty-table fast path meets a key again in a later batch and falls back to merging.

    Guardian links arrive from both sides (student and guardian rows), so every link key repeats
    across batches; a sourcedId repeated in users.csv is held back, every copy of it."""
    import connectors.sources.csv_chunks
    import service.ingest

    # Small chunks and batches, so the repeated key and its first row land in different batches.
    monkeypatch.setattr(service.ingest, "BATCH_ROWS", 40)
    monkeypatch.setattr(connectors.sources.csv_chunks, "MAX_ROWS", 16)
    data = tmp_path / "data"
    summary = generate_district(data, students=60, seed=12)
    users_path = data / "oneroster" / "users.csv"
    users = rows(users_path)
    first_student = next(u for u in users if u["sourcedId"] == student_ids(data)[0])
    renamed = dict(first_student, familyName="Later-Row-Wins")
    rewrite(users_path, list(users[0].keys()), [*users, renamed])  # same key, last batch
    reports = run_sync(engine, make_settings(data))
    assert all(r.error is None for r in reports)
    assert count(engine, "SELECT COUNT(*) FROM students") == summary.students - 1
    assert entity(reports, "users").quarantined["duplicate_key"] == 2
    assert (
        count(engine, "SELECT COUNT(DISTINCT student_id) FROM student_contacts WHERE active")
        == summary.students - 1
    )
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT COUNT(*) FROM students WHERE student_id = :s"),
            {"s": first_student["sourcedId"]},
        ).scalar_one()
    assert kept == 0  # neither copy wins silently
