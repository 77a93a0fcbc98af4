"""Issue 7, the file side: data a district can trust. No silent zeros, no silent mass
deactivation, every problem visible. Each test runs on SQLite and PostgreSQL against files the
project's own generator writes, with the real-world quirks it can inject."""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from click.testing import CliRunner, Result
from conftest import raw_config_for
from sqlalchemy import Engine, text

from service.cases import EvaluationReport
from service.cli import EXIT_SOURCE_FAILED, EXIT_STREAM_REFUSED, main
from service.config import Settings, parse_settings
from service.ingest import EntityStats, SyncReport
from service.pipeline import run_evaluate, run_sync
from tools.synthetic import generate_district

AS_OF = date(2026, 11, 20)
ABSENT_CODES = {"A", "AE", "OSS"}


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


# -- helpers ------------------------------------------------------------------------------------


def rows(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh))


def rewrite(path: Path, data: list[dict[str, str]], header: list[str] | None = None) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, header or list(data[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(data)


def raw_config(
    db_url: str, data: Path, out: Path, roster: dict[str, Any] | None = None,
    sis: dict[str, Any] | None = None, **top: Any,
) -> dict[str, Any]:  # fmt: skip
    raw = raw_config_for(db_url, data, out, **top)
    for source in raw["sources"]:
        source.update((roster if source["kind"] == "oneroster_csv" else sis) or {})
    return raw


def settings(db_url: str, data: Path, out: Path, **kw: Any) -> Settings:
    return parse_settings(raw_config(db_url, data, out, **kw), "test-config.yaml", data)


def config_file(tmp_path: Path, db_url: str, data: Path, **kw: Any) -> Path:
    path = tmp_path / "district.yaml"
    raw = raw_config(db_url, data, tmp_path / "out", **kw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line(output: str) -> str:
    return re.sub(r"\s*\n\s*", " ", output)


def entity(reports: list[SyncReport], name: str) -> EntityStats:
    for r in reports:
        if name in r.entities:
            return r.entities[name]
    raise AssertionError(f"no {name} in {[list(r.entities) for r in reports]}")


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def column(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).scalars())


def quarantine_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text("SELECT id, entity, location, reason, detail, record_key FROM quarantine")
            ).mappings()
        ]


def independent_chronic(data: Path, as_of: date, codes: dict[str, str] | None = None) -> set[str]:
    """Students who missed >= 10% of >= 20 enrolled instructional days, counted straight from
    the files with no casebridge code: the number the import must reproduce."""
    ors, sis = data / "oneroster", data / "sis"
    number_to_school = {o["identifier"]: o["sourcedId"] for o in rows(ors / "orgs.csv")}
    year_start = next(
        date.fromisoformat(s["startDate"])
        for s in rows(ors / "academicSessions.csv")
        if s["type"] == "schoolYear"
    )
    days: dict[str, set[date]] = defaultdict(set)
    for c in rows(sis / "calendar.csv"):
        if c["InSession"] == "Y":
            days[number_to_school[(codes or {}).get(c["SchoolCode"], c["SchoolCode"])]].add(
                date.fromisoformat(c["CalendarDate"])
            )
    role = {r["userSourcedId"]: r["role"] for r in rows(ors / "roles.csv")}
    number = {u["sourcedId"]: u["identifier"] for u in rows(ors / "users.csv")}
    spans: dict[str, tuple[str, date, date]] = {}
    for e in rows(ors / "enrollments.csv"):
        if e["role"] == "student" and role.get(e["userSourcedId"]) == "student":
            end = date.fromisoformat(e["endDate"]) if e["endDate"] else as_of
            spans[e["userSourcedId"]] = (
                e["schoolSourcedId"], date.fromisoformat(e["beginDate"]), end
            )  # fmt: skip
    absent: dict[str, set[date]] = defaultdict(set)
    for a in rows(sis / "attendance.csv"):
        if a["AttendanceCode"] in ABSENT_CODES:
            absent[a["StudentNumber"]].add(date.fromisoformat(a["AbsenceDate"]))
    chronic: set[str] = set()
    for sid, (school, begin, end) in spans.items():
        enrolled = {d for d in days[school] if max(begin, year_start) <= d <= min(end, as_of)}
        missed = absent[number[sid]] & enrolled
        if len(enrolled) >= 20 and len(missed) / len(enrolled) >= 0.10:
            chronic.add(sid)
    return chronic


# -- 1. school identity -------------------------------------------------------------------------


def test_school_numbers_and_code_map_flag_exactly_the_independently_counted_students(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=300, seed=17)  # the SIS export names schools by number
    # One school goes by a code that is neither its sourcedId nor its number: the code map says.
    for name in ("calendar.csv", "attendance.csv", "discipline.csv"):
        path = data / "sis" / name
        table = rows(path)
        for r in table:
            r["SchoolCode"] = "NORTH" if r["SchoolCode"] == "101" else r["SchoolCode"]
        rewrite(path, table)
    expected = independent_chronic(data, AS_OF, {"NORTH": "101"})
    cfg = settings(db_url, data, tmp_path / "out", sis={"school_codes": {"NORTH": "101"}})

    reports = run_sync(engine, cfg)
    report = run_evaluate(engine, cfg, AS_OF)

    assert all(r.error is None and not r.refused() for r in reports)
    assert entity(reports, "calendar").quarantined == {}
    flagged = set(
        column(engine, "SELECT student_id FROM student_indicators WHERE chronically_absent")
    )
    assert len(expected) > 20  # the district really has chronic absence to find
    assert flagged == expected
    assert report.flagged_by_rule["chronic-absence"] == len(expected)
    assert report.unknown_attendance == {} and report.unknown_by_rule == {}
    assert scalar(engine, "SELECT COUNT(*) FROM student_indicators WHERE attendance_rate = 1") == (
        scalar(engine, "SELECT COUNT(*) FROM student_indicators WHERE absent_days = 0")
    )


def test_a_school_without_a_calendar_leaves_attendance_unknown_never_perfect(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=300, seed=17)
    orgs = {o["identifier"]: o["sourcedId"] for o in rows(data / "oneroster" / "orgs.csv")}
    cal = data / "sis" / "calendar.csv"
    rewrite(cal, [r for r in rows(cal) if r["SchoolCode"] != "102"])  # no calendar for 102
    cfg = settings(db_url, data, tmp_path / "out")

    run_sync(engine, cfg)
    report = run_evaluate(engine, cfg, AS_OF)

    at_102 = scalar(
        engine, "SELECT COUNT(*) FROM students WHERE active AND school_id = :s", s=orgs["102"]
    )
    assert at_102 > 0
    assert report.unknown_attendance == {(orgs["102"], "no_calendar"): at_102}
    # Unknown is NULL, never a 100% attendance rate, and the rule says it could not judge them.
    assert scalar(
        engine,
        "SELECT COUNT(*) FROM student_indicators WHERE school_id = :s AND attendance_rate IS NULL"
        " AND chronically_absent IS NULL AND enrolled_days IS NULL",
        s=orgs["102"],
    ) == at_102  # fmt: skip
    assert report.unknown_by_rule["chronic-absence"] == at_102
    assert scalar(
        engine,
        "SELECT COUNT(*) FROM student_indicators WHERE school_id = :s AND chronically_absent",
        s=orgs["102"],
    ) == 0  # fmt: skip
    # Other rules still judge them: a suspension is a suspension whatever the calendar says.
    assert "suspension" not in report.unknown_by_rule


# -- 2. encoding --------------------------------------------------------------------------------


def test_a_stray_latin1_byte_garbles_no_name_and_a_cp1252_file_reads_right(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=250, seed=3, quirks=["latin1"])
    bad_line, bad_id = re.fullmatch(r"users.csv line (\d+) sourcedId (\S+)",
                                    summary.quirks["latin1"]).groups()  # fmt: skip
    cfg = settings(db_url, data, tmp_path / "out")

    reports = run_sync(engine, cfg)

    # The row is held back, and so is the guardian link that names the student it held.
    assert entity(reports, "users").quarantined == {"bad_encoding": 1, "unknown_person": 1}
    [q] = [q for q in quarantine_rows(engine) if q["reason"] == "bad_encoding"]
    assert (q["location"], q["record_key"]) == (f"users.csv:{bad_line}", bad_id)
    names = {
        r["sourcedId"]: (r["givenName"], r["familyName"])
        for r in csv.DictReader(
            io.StringIO((data / "oneroster" / "users.csv").read_bytes().decode("utf-8", "replace"))
        )
    }
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT student_id, first_name, last_name FROM students UNION ALL "
                 "SELECT contact_id, first_name, last_name FROM contacts")
        ).all()  # fmt: skip
    assert len(stored) > 300
    garbled = [k for k, f, last in stored if "Ã" in f or "\ufffd" in f or (f, last) != names[k]]
    assert garbled == []
    assert bad_id not in {k for k, _f, _l in stored}
    assert any(not f.isascii() for _k, f, _l in stored)  # José and Zoë made it through intact

    # A whole file in Windows-1252 (no UTF-8 anywhere) is read with the configured fallback.
    clean = tmp_path / "clean"
    generate_district(clean, students=60, seed=3)
    users = clean / "oneroster" / "users.csv"
    users.write_bytes(users.read_text(encoding="utf-8").encode("cp1252"))
    cp_engine_cfg = settings(db_url, clean, tmp_path / "out2")
    run_sync(engine, cp_engine_cfg, allow_deactivation=True)
    expected = {u["sourcedId"]: u["givenName"] for u in rows(users, "cp1252")}
    with engine.connect() as conn:
        found = conn.execute(text("SELECT student_id, first_name FROM students WHERE active"))
        got = {key: first for key, first in found}
    assert got and all(expected[k] == v for k, v in got.items())
    assert any(not v.isascii() for v in got.values())


# -- 3. mass deactivation -----------------------------------------------------------------------


def active_counts(engine: Engine) -> dict[str, int]:
    return {
        t: scalar(engine, f"SELECT COUNT(*) FROM {t} WHERE active")
        for t in ("students", "contacts", "student_contacts", "attendance_events")
    }


def test_a_header_only_file_changes_nothing_and_exits_non_zero_naming_file_and_guard(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=120, seed=5)
    config = config_file(tmp_path, db_url, data)
    first = invoke("--config", str(config), "sync")
    assert first.exit_code == 0, first.output
    before = active_counts(engine)

    generate_district(data, students=120, seed=5, quirks=["header_only_users"])
    refused = invoke("--config", str(config), "sync")

    assert refused.exit_code == EXIT_STREAM_REFUSED, refused.output
    text_out = one_line(refused.output)
    assert "users.csv" in text_out and "empty-file guard" in text_out
    assert "--allow-deactivation" in text_out
    assert active_counts(engine) == before
    cfg = settings(db_url, data, tmp_path / "out")
    assert run_evaluate(engine, cfg, AS_OF).cases_recovering == 0

    # An attendance file that lost a fifth of its rows trips the share guard (10% by default).
    generate_district(data, students=120, seed=5)
    att = data / "sis" / "attendance.csv"
    kept = rows(att)
    rewrite(att, kept[: len(kept) * 4 // 5])
    share = invoke("--config", str(config), "sync")
    assert share.exit_code == EXIT_STREAM_REFUSED, share.output
    assert re.search(r"attendance\.csv: would deactivate [\d,]+ of [\d,]+ active "
                     r"attendance_events.*deactivation guard", one_line(share.output))  # fmt: skip
    assert active_counts(engine) == before

    # Staff confirm: the same file deactivates what is gone.
    allowed = invoke("--config", str(config), "sync", "--allow-deactivation")
    assert allowed.exit_code == 0, allowed.output
    assert active_counts(engine)["attendance_events"] == len(kept) * 4 // 5


# -- 4. bad bytes -------------------------------------------------------------------------------


def test_bad_bytes_are_quarantined_rows_and_broken_quoting_refuses_only_its_file(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=250, seed=9,
                                quirks=["nul", "huge_field", "unclosed_quote"])  # fmt: skip
    # A given name longer than the column holds (PostgreSQL would fail the whole batch).
    users_path = data / "oneroster" / "users.csv"
    users = rows(users_path)
    long_one = next(u for u in users[100:] if u["givenName"] and "\x00" not in u["givenName"])
    long_one["givenName"] = "N" * 400
    rewrite(users_path, users)
    cfg = settings(db_url, data, tmp_path / "out")

    reports = run_sync(engine, cfg)

    assert all(r.error is None for r in reports)
    held = {(q["reason"], q["location"].split(":")[0]) for q in quarantine_rows(engine)}
    assert {
        ("nul_byte", "users.csv"),
        ("field_too_long", "users.csv"),
        ("field_too_long", "results.csv"),
        ("broken_quoting", "discipline.csv"),
    } <= held
    huge = next(
        q
        for q in quarantine_rows(engine)
        if q["location"].startswith("results.csv:") and q["reason"] == "field_too_long"
    )
    assert huge["location"] == f"results.csv:{summary.quirks['huge_field'].split()[2]}"
    assert len(huge["detail"]) < 500
    # The broken file is refused whole; the sources and files around it still ran.
    assert entity(reports, "discipline").refused and "quoting" in str(
        entity(reports, "discipline").refused
    )
    assert entity(reports, "attendance").inserted > 1000
    assert entity(reports, "results").inserted > 1000
    assert scalar(engine, "SELECT MAX(LENGTH(first_name)) FROM students") <= 128

    # A configured max_field_length makes a long field a bad record too.
    strict = settings(db_url, data, tmp_path / "out", roster={"max_field_length": 30})
    again = run_sync(engine, strict, allow_deactivation=True)
    assert entity(again, "lineItems").quarantined.get("field_too_long", 0) > 0


# -- 5. repeated keys and unknown teachers ------------------------------------------------------


def test_a_repeated_sourced_id_quarantines_every_copy_and_an_unknown_teacher_is_reported(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    summary = generate_district(data, students=120, seed=4, quirks=["duplicate_ids"])
    dup_id = summary.quirks["duplicate_ids"].split()[-1]
    enr_path = data / "oneroster" / "enrollments.csv"
    enr = rows(enr_path)
    teacher = next(e for e in enr if e["role"] == "teacher")
    enr.append(dict(teacher, sourcedId="enr-ghost", userSourcedId="no-such-teacher"))
    rewrite(enr_path, enr)
    cfg = settings(db_url, data, tmp_path / "out")

    reports = run_sync(engine, cfg)

    dups = [q for q in quarantine_rows(engine) if q["reason"] == "duplicate_key"]
    assert len(dups) == 2 and {q["record_key"] for q in dups} == {dup_id}
    assert scalar(engine, "SELECT COUNT(*) FROM students WHERE student_id = :s", s=dup_id) == 0
    assert scalar(engine, "SELECT COUNT(*) FROM students") == summary.students - 1
    # The knock-on: the student's enrollments name the quarantined row that caused them.
    knock = [q for q in quarantine_rows(engine)
             if q["reason"] == "unknown_student" and dup_id in q["detail"]]  # fmt: skip
    assert knock and all(f"#{dups[0]['id']}" in q["detail"] or f"#{dups[1]['id']}" in q["detail"]
                         for q in knock)  # fmt: skip
    assert entity(reports, "enrollments").quarantined["unknown_user"] == 1
    [ghost] = [q for q in quarantine_rows(engine) if q["reason"] == "unknown_user"]
    assert ghost["record_key"] == "enr-ghost" and "no-such-teacher" in ghost["detail"]


# -- 6. tolerance real exports need -------------------------------------------------------------


def test_space_separated_agents_case_and_optional_columns_and_missing_people(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    generate_district(clean, students=120, seed=8)
    data = tmp_path / "data"
    generate_district(data, students=120, seed=8, quirks=["space_agents"])
    ors = data / "oneroster"
    # A misspelled column nobody reads, a column in other case, a trailing empty column.
    roles_text = (ors / "roles.csv").read_text(encoding="utf-8").split("\n", 1)
    (ors / "roles.csv").write_text(
        roles_text[0].replace("dateLastModified", "dateLastModifed") + "\n" + roles_text[1],
        encoding="utf-8",
    )
    users_text = (ors / "users.csv").read_text(encoding="utf-8").split("\n", 1)
    (ors / "users.csv").write_text(
        users_text[0].replace("givenName", "GivenName") + "\n" + users_text[1], encoding="utf-8"
    )
    orgs = (ors / "orgs.csv").read_text(encoding="utf-8").splitlines()
    (ors / "orgs.csv").write_text("\n".join(line + "," for line in orgs) + "\n", encoding="utf-8")
    # 1.2 results.csv carries classSourcedId: standard, never warned about.
    results = rows(ors / "results.csv")
    rewrite(ors / "results.csv", [dict(r, classSourcedId="") for r in results])
    # A guardian nobody sent: the student's link to it is quarantined, not left dangling.
    users = rows(ors / "users.csv")
    student = next(u for u in users if u["grades"])
    student["agentSourcedIds"] += " ghost-guardian"
    rewrite(ors / "users.csv", users)
    cfg = settings(db_url, data, tmp_path / "out")

    reports = run_sync(engine, cfg)

    assert all(r.error is None and not r.refused() for r in reports)
    problems = [p for r in reports for s in r.entities.values() for p in s.problems]
    assert any("roles.csv: unknown column 'dateLastModifed'" in p and "did you mean" in p
               for p in problems)  # fmt: skip
    assert not any("classSourcedId" in p or "GivenName" in p for p in problems), problems
    assert scalar(engine, "SELECT COUNT(*) FROM user_roles") == len(rows(ors / "roles.csv"))
    links = scalar(engine, "SELECT COUNT(*) FROM student_contacts WHERE active")
    expected_links = {
        (u["sourcedId"], a)
        for u in rows(clean / "oneroster" / "users.csv")
        if u["grades"]
        for a in u["agentSourcedIds"].split(",")
    }
    assert links == len(expected_links) > 100
    [ghost] = [q for q in quarantine_rows(engine) if q["reason"] == "unknown_person"]
    assert ghost["record_key"] == "ghost-guardian" and student["sourcedId"] in ghost["detail"]
    assert entity(reports, "users").quarantined == {"unknown_person": 1}


# -- 7. unusable phone numbers ------------------------------------------------------------------


def test_an_unusable_phone_number_is_recorded_on_the_contact_and_counted(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=80, seed=6)
    path = data / "oneroster" / "users.csv"
    users = rows(path)
    guardians = [u for u in users if u["sms"] and not u["grades"] and "@" in u["email"]][:3]
    guardians[0]["sms"] = "call me"
    guardians[1]["sms"] = "555-CALL"
    guardians[2]["phone"] = "123"
    rewrite(path, users)
    config = config_file(tmp_path, db_url, data)

    result = invoke("--config", str(config), "sync")

    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT contact_id, phone_issue FROM contacts WHERE phone_issue IS NOT NULL")
        )
        issues = {contact: issue for contact, issue in found}
    assert issues == {
        guardians[0]["sourcedId"]: "sms:no_digits",
        guardians[1]["sourcedId"]: "sms:not_a_phone_number",
        guardians[2]["sourcedId"]: "phone:not_a_phone_number",
    }
    assert scalar(engine, "SELECT sms_phone FROM contacts WHERE contact_id = :c",
                  c=guardians[0]["sourcedId"]) is None  # fmt: skip
    assert "3 contacts have a phone field that is not a usable number" in one_line(result.output)


# -- 8. core subjects ---------------------------------------------------------------------------


def test_a_core_subject_matching_no_course_warns_and_a_list_of_names_or_codes_matches(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=300, seed=2)
    base_cfg = settings(db_url, data, tmp_path / "out")
    run_sync(engine, base_cfg)
    shipped = run_evaluate(engine, base_cfg, AS_OF).flagged_by_rule["core-course-failure"]
    assert shipped > 0
    for name in ("courses.csv", "classes.csv"):  # the package says Math, not Mathematics
        path = data / "oneroster" / name
        rewrite(path, [dict(r, subjects=r["subjects"].replace("Mathematics", "Math"))
                       for r in rows(path)])  # fmt: skip
    run_sync(engine, base_cfg)

    shrunk: EvaluationReport = run_evaluate(engine, base_cfg, AS_OF)

    assert shrunk.flagged_by_rule["core-course-failure"] < shipped
    assert any("'Mathematics'" in w and "matches no course" in w and "Math" in w
               for w in shrunk.warnings)  # fmt: skip
    config = config_file(tmp_path, db_url, data)
    checked = invoke("--config", str(config), "check-config", "--data")
    assert "'Mathematics' matches no course" in one_line(checked.output), checked.output
    for names in (["Mathematics", "Math"], ["02"]):  # by name, or by SCED subject code
        cfg = settings(db_url, data, tmp_path / "out", indicators={
            "core_subjects": ["English Language Arts", names]})  # fmt: skip
        report = run_evaluate(engine, cfg, AS_OF)
        assert report.flagged_by_rule["core-course-failure"] == shipped, names
        assert report.warnings == []


# -- visible and alerting -----------------------------------------------------------------------


def test_exit_codes_quarantine_commands_and_the_summary_point_at_problems(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=11, bad_rows=5)
    config = config_file(tmp_path, db_url, data)
    clean = invoke("--config", str(config), "sync")
    assert clean.exit_code == 0, clean.output
    out = one_line(clean.output)
    assert "guardians (contacts)" in out and "guardian links" in out
    assert "casebridge quarantine list" in out and "casebridge quarantine show ID" in out

    listed = invoke("--config", str(config), "quarantine", "list", "--csv")
    records = list(csv.DictReader(io.StringIO(listed.output)))
    assert len(records) >= 4  # the bad rows (one per kind) and any knock-on of them
    wanted = records[-1]
    file_name = wanted["location"].split(":")[0]
    by_reason = invoke("--config", str(config), "quarantine", "list", "--reason", wanted["reason"],
                       "--file", file_name, "--csv")  # fmt: skip
    narrowed = list(csv.DictReader(io.StringIO(by_reason.output)))
    assert wanted["id"] in {r["id"] for r in narrowed}
    assert all(r["reason"] == wanted["reason"] for r in narrowed)
    assert all(r["location"].startswith(f"{file_name}:") for r in narrowed)
    shown = invoke("--config", str(config), "quarantine", "show", records[0]["id"])
    assert shown.exit_code == 0 and records[0]["location"] in shown.output
    assert invoke("--config", str(config), "quarantine", "show", "999999").exit_code == 2

    # A file the manifest lists but that is not there: the stream is skipped, exit 3.
    (data / "oneroster" / "lineItems.csv").unlink()
    missing = invoke("--config", str(config), "sync")
    assert missing.exit_code == EXIT_STREAM_REFUSED, missing.output
    assert "lineItems.csv" in one_line(missing.output)
    # A source that cannot be read at all: exit 1 (it outranks a refused stream).
    shutil.rmtree(data / "sis")
    failed = invoke("--config", str(config), "sync")
    assert failed.exit_code == EXIT_SOURCE_FAILED, failed.output


def test_check_config_data_opens_every_source_and_finds_codes_and_schools(
    db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=12)
    att = data / "sis" / "attendance.csv"
    table = rows(att)
    table[3]["AttendanceCode"] = "ZZ"
    table[5]["SchoolCode"] = "999"
    rewrite(att, table)
    config = config_file(tmp_path, db_url, data)

    result = invoke("--config", str(config), "check-config", "--data")

    out = one_line(result.output)
    assert result.exit_code == 1, result.output
    assert "codes the code map does not cover" in out and "'ZZ' (1 rows)" in out
    assert "school codes that match no roster school" in out and "'999' (1 rows)" in out

    generate_district(data, students=60, seed=12)
    assert invoke("--config", str(config), "check-config", "--data").exit_code == 0


def test_moving_the_data_folder_re_reads_nothing(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=13)
    run_sync(engine, settings(db_url, data, tmp_path / "out"))
    moved = tmp_path / "moved-elsewhere"
    shutil.move(data, moved)

    reports = run_sync(engine, settings(db_url, moved, tmp_path / "out"))

    for r in reports:
        for name, s in r.entities.items():
            assert s.unchanged == s.read, name
