"""Issue 7, items 9 to 13: what the API sources do with what real servers vary, on both databases.

Each test runs the project's own Ed-Fi- or OneRoster-shaped server with one of the behaviours
the specs leave open (no count header, Link headers, a refused resource, relative discovery URLs,
short-lived tokens, key changes, unreadable deletes, codes the map does not know yet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from connectors.sources.edfi import DEFAULT_RESOURCES
from service.pipeline import open_engine, run_sync
from tests.fixtures.edfi_server import EdFiServer
from tests.fixtures.grand_bend import synthetic_edfi
from tests.fixtures.oneroster_server import SCOPE_ROSTER_CORE, OneRosterServer, load_from_csv
from tests.test_edfi import counts as edfi_counts
from tests.test_edfi import edfi_source, expected_counts, settings_for_ods
from tests.test_oneroster_rest import counts as or_counts
from tests.test_oneroster_rest import csv_counts, rest_source, settings_with
from tools.synthetic import generate_district

EXCUSED = "uri://ed-fi.org/AttendanceEventCategoryDescriptor#Excused Absence"
FIELD_TRIP = "uri://district.org/AttendanceEventCategoryDescriptor#Field Trip"


@pytest.fixture(scope="module")
def small() -> dict[str, list[dict[str, Any]]]:
    return synthetic_edfi(120, seed=5)


@pytest.fixture
def ods(small: dict[str, list[dict[str, Any]]]) -> Iterator[EdFiServer]:
    srv = EdFiServer(small, token_ttl=3600)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("api") / "data"
    generate_district(data, students=31, seed=4)
    return data


def cursor_of(engine: Engine, source: str, resource: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT value FROM sync_cursors WHERE source = :s AND resource = :r"),
            {"s": source, "r": resource},
        ).scalar()
    return json.loads(value) if value else None


def open_quarantine(engine: Engine, reason: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM quarantine WHERE reason = :r AND resolved_at IS NULL"),
                {"r": reason},
            ).scalar_one()
        )


# -- item 9: OneRoster REST without X-Total-Count ------------------------------------------------


@pytest.mark.parametrize("link", [True, False], ids=["link-header", "no-link-header"])
def test_9_a_server_without_a_count_header_is_read_to_the_end(
    db_url: str, district: Path, tmp_path: Path, link: bool
) -> None:
    expected = csv_counts(f"sqlite:///{tmp_path / 'ref.db'}", district, tmp_path / "o1")
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.2"), count_header=False,
                             link_header=link)  # fmt: skip
    server.start()
    try:
        source = rest_source(server.base_url, page_size=10)  # 31 students: four pages of users
        settings = settings_with(db_url, district, tmp_path / "out", source)
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert or_counts(engine) == expected
        # Only once every page was read does the next sync ask for changes only.
        assert set(cursor_of(engine, "sis-api", "users") or {}) == {"since"}
        [again] = run_sync(engine, settings)
        assert again.error is None and again.total("read") == 0
    finally:
        server.stop()


def test_9_a_full_pull_short_of_the_stated_total_fails_and_stays_full(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.2"))
    server.start()
    original = server._page

    def overstated(path: str, collection: str, query: dict[str, list[str]]) -> Any:
        response = original(path, collection, query)
        if collection == "users":  # a server that states more users than it serves
            response.headers["X-Total-Count"] = str(int(response.headers["X-Total-Count"]) + 25)
        return response

    server._page = overstated  # type: ignore[method-assign]
    try:
        settings = settings_with(db_url, district, tmp_path / "out",
                                 rest_source(server.base_url, page_size=10))  # fmt: skip
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        users = report.entities["users"]
        assert any("of the" in p and "records the server stated" in p for p in users.problems)
        assert report.entities["enrollments"].read > 0  # the other streams went on
        assert open_quarantine(engine, "incomplete_pull") == 1
        # Not marked complete: the next sync pulls users in full again, not changes only.
        state = cursor_of(engine, "sis-api", "users")
        assert state is None or state.get("offset")
        server._page = original  # type: ignore[method-assign]
        [again] = run_sync(engine, settings)
        assert again.entities["users"].problems == []
        assert again.entities["users"].read > 0
        assert "offset" not in (cursor_of(engine, "sis-api", "users") or {"offset": 1})
    finally:
        server.stop()


def test_10_oneroster_gradebook_without_its_scope_is_a_stream_problem(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.2"),
                             grantable_scopes=[SCOPE_ROSTER_CORE])  # fmt: skip
    server.start()
    try:
        settings = settings_with(db_url, district, tmp_path / "out", rest_source(server.base_url))
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert report.entities["results"].failed == "resource_refused"
        assert report.entities["lineItems"].problems == ["lineItems: the server answered 403"]
        assert or_counts(engine)["students"] == len(
            [u for u in server.records("students") if u["status"] == "active"]
        )
    finally:
        server.stop()


# -- item 10: configurable Ed-Fi resources, a refused one is a stream problem ----------------


def test_10_a_refused_optional_resource_is_reported_while_the_others_sync(
    db_url: str, tmp_path: Path, small: dict[str, list[dict[str, Any]]]
) -> None:
    srv = EdFiServer(small, refused={"disciplineActions": 403, "grades": 404})
    srv.start()
    try:
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url))
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert report.entities["disciplineActions"].problems == [
            "disciplineActions: the server answered 403"
        ]
        assert report.entities["grades"].problems == ["grades: the server answered 404"]
        got, want = edfi_counts(engine), expected_counts(small)
        assert got["discipline_incidents"] == len(
            small["studentDisciplineIncidentBehaviorAssociations"]
        )
        assert {k: v for k, v in got.items() if k != "discipline_incidents"} == {
            k: v for k, v in want.items() if k != "discipline_incidents"
        }
        assert open_quarantine(engine, "resource_refused") == 2
        # Left out of the configuration, they are not asked for at all.
        resources = [r for r in DEFAULT_RESOURCES if r not in ("disciplineActions", "grades")]
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url,
                                                                  resources=resources))  # fmt: skip
        before = len(srv.requests)
        [again] = run_sync(engine, settings)
        assert again.error is None
        assert set(again.entities).isdisjoint({"grades", "disciplineActions"})
        assert not any(p.endswith(("/grades", "/disciplineActions"))
                       for p in [r.path for r in srv.requests[before:]])  # fmt: skip
    finally:
        srv.stop()


def test_10_a_refused_required_resource_fails_the_source(
    db_url: str, tmp_path: Path, small: dict[str, list[dict[str, Any]]]
) -> None:
    srv = EdFiServer(small, refused={"students": 403})
    srv.start()
    try:
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url))
        [report] = run_sync(open_engine(settings), settings)
        assert report.error is not None and "403" in report.error
    finally:
        srv.stop()


# -- item 11: discovery, token URLs, token lifetime -------------------------------------------


def test_11_relative_discovery_urls_and_five_second_tokens(
    db_url: str, tmp_path: Path, small: dict[str, list[dict[str, Any]]]
) -> None:
    # Slow pages: the pull outlives several 5-second tokens.
    srv = EdFiServer(small, token_ttl=5, relative_urls=True, page_delay=0.2)
    srv.start()
    try:
        assert not srv._discovery()["urls"]["oauth"].startswith("http")
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url, page_size=10))
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert edfi_counts(engine) == expected_counts(small)
        data_calls = len(srv.paths(lambda r: "/ed-fi/" in r.path or "/changeQueries/" in r.path))
        print(f"5-second tokens: {srv.token_requests} token calls for {data_calls} data calls")
        # Renewed at a share of the lifetime, not 60 s before expiry (= before every request).
        assert data_calls > 100
        assert srv.token_requests * 10 < data_calls
    finally:
        srv.stop()


def test_11_token_url_from_the_config_and_a_bad_one_is_not_retried(
    db_url: str, tmp_path: Path, ods: EdFiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source = edfi_source(ods.base_url, token_url="/oauth/token")
    settings = settings_for_ods(db_url, tmp_path, source)
    engine = open_engine(settings)
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    bad = edfi_source(ods.base_url, token_url="ftp://ods.invalid/oauth/token")
    settings = settings_for_ods(db_url, tmp_path, bad)
    capsys.readouterr()
    [failed] = run_sync(engine, settings)
    assert failed.error is not None and "check the configured URL" in failed.error
    assert "http.retry" not in capsys.readouterr().out  # a configuration error: never retried


# -- item 12: deletes and key changes -----------------------------------------------------------


def test_12_an_unreadable_delete_is_quarantined_and_the_cursor_moves_on(
    db_url: str, tmp_path: Path, ods: EdFiServer
) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(ods.base_url))
    engine = open_engine(settings)
    run_sync(engine, settings)
    ods.add_delete("students", {"somethingElse": 1})
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert report.entities["students"].quarantined == {"missing_value": 1}
    [again] = run_sync(engine, settings)
    assert again.error is None and again.total("read") == 0  # not stuck on it
    assert open_quarantine(engine, "missing_value") == 1


def _history(engine: Engine, student: str) -> dict[str, int]:
    q = {
        "students": "SELECT COUNT(*) FROM students WHERE student_id = :s AND active",
        "enrollments": "SELECT COUNT(*) FROM enrollments WHERE user_id = :s AND active",
        "attendance": "SELECT COUNT(*) FROM attendance_events WHERE student_id = :s AND active",
        "links": "SELECT COUNT(*) FROM student_contacts WHERE student_id = :s AND active",
        "cases": "SELECT COUNT(*) FROM cases WHERE student_id = :s",
        "referrals": "SELECT COUNT(*) FROM referrals WHERE student_id = :s",
        "outbox": "SELECT COUNT(*) FROM outbox WHERE student_id = :s",
        "disclosures": "SELECT COUNT(*) FROM disclosures WHERE student_id = :s",
    }
    with engine.connect() as conn:
        return {k: int(conn.execute(text(v), {"s": student}).scalar_one()) for k, v in q.items()}


def _case_history(engine: Engine, student: str) -> None:
    """A case, a referral, an outbox item and a disclosure about the student."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        case = conn.execute(
            text("INSERT INTO cases (student_id, status, severity, revision, opened_at, "
                 "updated_at, reopen_count) VALUES (:s, 'open', 'high', 1, :n, :n, 0) "
                 "RETURNING id"), {"s": student, "n": now},
        ).scalar_one()  # fmt: skip
        conn.execute(
            text("INSERT INTO referrals (case_id, student_id, origin, reason, severity, "
                 "resource_categories, evidence, created_at) VALUES (:c, :s, 'rule', "
                 "'chronic_absence', 'high', '[]', '{}', :n)"), {"c": case, "s": student, "n": now},
        )  # fmt: skip
        item = conn.execute(
            text("INSERT INTO outbox (idempotency_key, kind, target, case_id, student_id, "
                 "payload, status, attempts, next_attempt_at, created_at) VALUES (:k, 'task', "
                 "'file', :c, :s, '{}', 'delivered', 1, :n, :n) RETURNING id"),
            {"k": f"task-{case}", "c": case, "s": student, "n": now},
        ).scalar_one()  # fmt: skip
        conn.execute(
            text("INSERT INTO disclosures (student_id, recipient, recipient_kind, "
                 "data_categories, basis, outbox_id, disclosed_at) VALUES (:s, 'file', "
                 "'staff_tool', '[]', 'school official', :o, :n)"),
            {"s": student, "o": item, "n": now},
        )  # fmt: skip


def test_12_a_changed_student_unique_id_carries_the_same_person_forward(
    db_url: str, tmp_path: Path, ods: EdFiServer
) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(ods.base_url))
    engine = open_engine(settings)
    run_sync(engine, settings)
    attending = {r["studentReference"]["studentUniqueId"]
                 for r in ods.records("studentSchoolAttendanceEvents")}  # fmt: skip
    student = next(s for s in ods.records("students") if s["studentUniqueId"] in attending)
    old = student["studentUniqueId"]
    _case_history(engine, old)
    before = _history(engine, old)
    assert before["attendance"] > 0 and before["enrollments"] > 0
    total_before = edfi_counts(engine)
    ods.change_student_key(student["id"], "NEW-" + old)
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert report.entities["students"].deactivated == 0
    assert _history(engine, "NEW-" + old) == before
    assert _history(engine, old) == dict.fromkeys(before, 0)
    assert edfi_counts(engine) == total_before  # nothing added beside, nothing deactivated
    with engine.connect() as conn:
        resource_ids = (
            conn.execute(
                text("SELECT resource_id FROM students WHERE student_id = :s"), {"s": "NEW-" + old}
            )
            .scalars()
            .all()
        )
    assert resource_ids == [student["id"]]


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_12_an_attendance_category_change_updates_the_event_in_place(
    db_url: str, tmp_path: Path, ods: EdFiServer, full: bool
) -> None:
    settings = settings_for_ods(db_url, tmp_path, edfi_source(ods.base_url))
    engine = open_engine(settings)
    run_sync(engine, settings)
    events = [e for e in ods.records("studentSchoolAttendanceEvents")
              if e["attendanceEventCategoryDescriptor"] != EXCUSED][:5]  # fmt: skip
    for event in events:
        ods.change_key("studentSchoolAttendanceEvents", event["id"],
                       {"attendanceEventCategoryDescriptor": EXCUSED})  # fmt: skip
    before = edfi_counts(engine)["attendance_events"]
    [report] = run_sync(engine, settings, full=full)
    assert report.error is None, report.error
    assert edfi_counts(engine)["attendance_events"] == before
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT category, active FROM attendance_events WHERE resource_id IN "
                 f"({', '.join(repr(e['id']) for e in events)})")  # ids are hex: safe to inline
        ).all()  # fmt: skip
    assert sorted((c, bool(a)) for c, a in rows) == [("excused", True)] * 5


# -- item 13: a code map change retries what was quarantined for it -------------------------------


def test_13_a_new_descriptor_map_retries_quarantined_records_on_a_normal_sync(
    db_url: str, tmp_path: Path, small: dict[str, list[dict[str, Any]]]
) -> None:
    srv = EdFiServer(small)
    events = srv.records("studentSchoolAttendanceEvents")[:4]
    for event in events:
        srv.update("studentSchoolAttendanceEvents", event["id"],
                   attendanceEventCategoryDescriptor=FIELD_TRIP)  # fmt: skip
    srv.start()
    try:
        settings = settings_for_ods(db_url, tmp_path, edfi_source(srv.base_url))
        engine = open_engine(settings)
        [first] = run_sync(engine, settings)
        assert first.entities["studentSchoolAttendanceEvents"].quarantined == {"unknown_code": 4}
        assert open_quarantine(engine, "unknown_code") == 4
        codes = tmp_path / "district-descriptors.yaml"
        codes.write_text("attendance_event_category:\n  Field Trip: present\n")
        source = edfi_source(srv.base_url, descriptor_map=str(codes))
        settings = settings_for_ods(db_url, tmp_path, source)
        [second] = run_sync(engine, settings)  # a normal, incremental sync
        assert second.error is None, second.error
        assert second.entities["students"].read == 0  # it really was incremental
        assert open_quarantine(engine, "unknown_code") == 0
        with engine.connect() as conn:
            present = conn.execute(
                text("SELECT COUNT(*) FROM attendance_events WHERE active AND code = 'Field Trip'")
            ).scalar_one()
        assert present == 4
    finally:
        srv.stop()


def test_13_oneroster_rest_records_fixed_at_the_source_close_their_quarantine(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.2"))
    student = server.records("students")[0]["sourcedId"]
    server.update("users", student, status="pending")  # not a OneRoster status: quarantined
    server.start()
    try:
        settings = settings_with(db_url, district, tmp_path / "out", rest_source(server.base_url))
        engine = open_engine(settings)
        [first] = run_sync(engine, settings)
        assert sum(first.entities["users"].quarantined.values()) == 1
        server.update("users", student, status="active",
                      when=datetime(2100, 1, 1, tzinfo=UTC))  # fmt: skip
        [second] = run_sync(engine, settings)
        assert second.entities["users"].read == 1
        with engine.connect() as conn:
            still = conn.execute(
                text("SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL "
                     "AND entity = 'users'")
            ).scalar_one()  # fmt: skip
        assert still == 0
    finally:
        server.stop()
