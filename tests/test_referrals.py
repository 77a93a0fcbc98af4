"""Person-based referrals through the API, as a referrer, a counselor and a family would notice:
a referral opens or joins a case like a rule does, the caller who posts learns nothing about the
student, the referrer hears received / assigned / closed, the family hears resources only when
the referrer agreed, and staff resolve what could not be matched."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import settings_for, write_config
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, func, select, text

from connectors.status import StatusReport
from service.api import create_app
from service.api.auth import create_token
from service.api.problems import PROBLEM_JSON
from service.cli import main
from service.config import Settings
from service.models import (
    Case,
    Disclosure,
    OutboxItem,
    PersonReferral,
    Referral,
    StudentDemographics,
)
from service.pipeline import run_dispatch, run_evaluate, run_sync
from service.referrals import place_received
from service.tool_status import apply_report
from tests.builders import TinyDistrict
from tests.test_cases import sent

TEACHER = {"name": "Dana Whitfield", "role": "teacher", "relationship": "math teacher",
           "email": "dwhitfield@district.example.org"}  # fmt: skip
NOTE = "Falls asleep in class and said there is no food at home since the move."


def district(root: Path) -> TinyDistrict:
    d = TinyDistrict(root)
    d.school("sch-1", "101", "Lincoln High")
    d.school("sch-2", "102", "Roosevelt Middle")
    d.student("s1", "1001", guardians=("g1", "g2"), given="Lucía", family="Gómez",
              birth=date(2011, 3, 4))  # fmt: skip
    d.guardian("g1", ("s1",), language="es", sms="(212) 555-0101", given="Rosa", family="Gómez")
    d.guardian("g2", ("s1",), email="luis.gomez@example.org", given="Luis", family="Gómez")
    # Two students a name, school and birth date cannot tell apart.
    d.student("s2", "1002", given="Mateo", family="Ruiz", birth=date(2010, 6, 1))
    d.student("s3", "1003", given="Mateo", family="Ruiz", birth=date(2010, 6, 1))
    d.student("s4", "2001", school="sch-2", grade="07", given="Noah", family="Smith",
              birth=date(2013, 1, 9))  # fmt: skip
    d.write()
    return d


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return settings_for(
        db_url, district(tmp_path / "data").root, tmp_path / "out",
        referrals={"assigned_status_delay_hours": 0},
    )  # fmt: skip


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Flask:
    run_sync(engine, settings)
    return create_app(settings, engine)


def bearer(engine: Engine, *scopes: str, schools: list[str] | None = None) -> dict[str, str]:
    _, token = create_token(engine, "test " + " ".join(scopes), scopes, schools)
    return {"Authorization": f"Bearer {token}"}


def form(student: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "referrer": TEACHER,
        "student": student or {"local_id": "1001"},
        "concerns": ["basic_needs", "attendance"],
        "note": NOTE,
        "urgency": "soon",
        "family_contact_consent": True,
    }
    body.update(overrides)
    return body


def post(client: FlaskClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    response = client.post("/referrals", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response


def worker_pass(client: FlaskClient) -> int:
    """What `casebridge worker` does before each delivery pass: put the referrals whose student
    was found on their cases. The POST only records them."""
    app = client.application
    return place_received(app.config["CASEBRIDGE_ENGINE"], app.config["CASEBRIDGE_SETTINGS"])


def counselor_refers_lucia(engine: Engine, settings: Settings) -> None:
    """Another referral about s1 (student number 1001), recorded as the API would."""
    from service import referrals

    submission = referrals.Submission(
        referrer_name="Sam Ortiz", referrer_role="counselor", relationship="counselor",
        referrer_email=None, concerns=["attendance"], note="", urgency="routine",
        family_contact_ok=False, student=referrals.StudentNamed("1001", None, None, None, None),
    )  # fmt: skip
    referrals.receive(engine, settings, referrals.Caller(None, "form", None), submission)


def person_referrals(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(PersonReferral).order_by(PersonReferral.id)))


def items(engine: Engine, kind: str | None = None) -> list[Any]:
    q = select(OutboxItem).order_by(OutboxItem.id)
    if kind:
        q = q.where(OutboxItem.kind == kind)
    with engine.connect() as conn:
        return list(conn.execute(q))


def the_case(engine: Engine, student_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Case).where(Case.student_id == student_id)).one()


# -- the "must show" ---------------------------------------------------------------------


def test_a_referral_opens_a_case_whose_task_shows_who_referred_and_why(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    post(client, bearer(engine, "referrals:create"), form(urgency="urgent"))
    with engine.connect() as conn:  # recorded; the worker puts it on the case
        assert conn.execute(select(func.count()).select_from(Case)).scalar() == 0
    assert worker_pass(client) == 1

    case = the_case(engine, "s1")
    # Opened like a rule's case: revision 1, least-loaded case manager of school 101, urgent.
    assert (case.status, case.revision, case.severity) == ("open", 1, "high")
    assert case.assignee_id in ("cm-rivera", "cm-okafor")
    [task] = items(engine, "task_upsert")
    assert (task.case_id, task.payload) == (case.id, {"case_id": case.id, "revision": 1})

    run_dispatch(engine, settings)
    [written] = sent(settings, "tasks.jsonl")
    [reason] = written["task"]["reasons"]
    assert reason["origin"] == "person" and reason["note"] == NOTE
    lines = [e["text"] for e in reason["evidence_summary"]]
    today = written["task"]["opened_on"]
    assert lines[0] == f"referred by Dana Whitfield (teacher; math teacher) on {today}"
    assert lines[1:] == ["concerns: basic needs, attendance", "urgency: urgent"]
    assert "dwhitfield" not in json.dumps(written)  # the referrer's address stays with us
    with engine.connect() as conn:
        [disclosed] = conn.execute(
            select(Disclosure.data_categories).where(Disclosure.recipient_kind == "staff_tool")
        ).scalars()
    assert {"referral", "referral_note"} <= set(disclosed)


def test_no_token_is_401_and_the_wrong_scope_is_403_problem_json(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    missing = client.post("/referrals", json=form())
    wrong = client.post("/referrals", json=form(), headers=bearer(engine, "cases:read"))

    assert (missing.status_code, missing.mimetype) == (401, PROBLEM_JSON)
    assert (wrong.status_code, wrong.mimetype) == (403, PROBLEM_JSON)
    assert "referrals:create" in wrong.get_json()["detail"]
    assert person_referrals(engine) == [] and items(engine) == []
    # The token is checked before the input: without one, a malformed post learns nothing
    # about what the route takes.
    malformed = client.post("/referrals", json={"student": {}})
    assert malformed.status_code == 401 and "student" not in malformed.get_data(as_text=True)
    wrong_scope = client.post(
        "/referrals", json={"student": {}}, headers=bearer(engine, "cases:read")
    )
    assert wrong_scope.status_code == 403


def test_name_school_and_birth_date_match_whatever_the_case_and_accents(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    named = {"first_name": "LUCIA", "last_name": "gomez", "school": "lincoln high",
             "birth_date": "2011-03-04"}  # fmt: skip
    post(client, bearer(engine, "referrals:create"), form(named))
    # A name that differs in more than case and accents is somebody else.
    post(client, bearer(engine, "referrals:create"),
         form({**named, "first_name": "Lucy"}, concerns=["health"]))  # fmt: skip

    found, other = person_referrals(engine)
    assert (found.state, found.student_id) == ("matched", "s1")
    assert found.match == "name_school_birth_date"
    assert (other.state, other.student_id, other.match) == ("unmatched", None, "no_match")


def test_ambiguous_goes_to_the_queue_and_a_resolved_referral_opens_the_case(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    staff, reader = bearer(engine, "cases:write", "cases:read"), bearer(engine, "cases:read")
    named = {"first_name": "Mateo", "last_name": "Ruiz", "school": "101",
             "birth_date": "2010-06-01"}  # fmt: skip
    referral_id = post(client, bearer(engine, "referrals:create"), form(named)).get_json()["id"]
    assert items(engine, "task_upsert") == []

    queue = client.get("/referrals/unmatched", headers=reader).get_json()
    [waiting] = queue["items"]
    assert (waiting["id"], waiting["match"]) == (referral_id, "ambiguous")
    assert waiting["school_id"] == "sch-1"
    assert waiting["identification"]["first_name"] == "Mateo" and waiting["note"] == NOTE
    # Reading is not resolving.
    denied = client.post(f"/referrals/{referral_id}/resolve", json={"student_id": "s3"},
                         headers=reader)  # fmt: skip
    assert denied.status_code == 403

    done = client.post(
        f"/referrals/{referral_id}/resolve", json={"student_id": "s3"}, headers=staff
    )
    assert done.status_code == 200, done.get_data(as_text=True)
    assert (done.get_json()["state"], done.get_json()["match"]) == ("matched", "staff")
    case = the_case(engine, "s3")
    assert done.get_json()["case_id"] == case.id and case.revision == 1
    assert [t.case_id for t in items(engine, "task_upsert")] == [case.id]
    assert client.get("/referrals/unmatched", headers=reader).get_json()["items"] == []
    again = client.post(f"/referrals/{referral_id}/resolve", json={"reject": "duplicate"},
                        headers=staff)  # fmt: skip
    assert (again.status_code, again.mimetype) == (409, PROBLEM_JSON)


def test_a_second_referral_joins_the_open_case_and_the_task_update_is_queued(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    post(client, token, form())
    counselor = {"name": "Sam Ortiz", "role": "counselor", "relationship": "school counselor"}
    worker_pass(client)
    post(client, token, form(referrer=counselor, concerns=["mental_health"], urgency="urgent"))
    worker_pass(client)

    [case] = [the_case(engine, "s1")]
    assert (case.revision, case.severity) == (2, "high")  # urgent raised the open case
    assert [t.payload["revision"] for t in items(engine, "task_upsert")] == [1, 2]
    with engine.connect() as conn:
        reasons = conn.execute(select(func.count()).where(Referral.case_id == case.id)).scalar()
    assert reasons == 2


def test_the_family_hears_resources_only_with_consent_never_the_concern_or_referrer(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    post(client, token, form(family_contact_consent=False))
    worker_pass(client)
    assert items(engine, "family_notice") == []

    post(client, token, form(referrer={**TEACHER, "name": "Kim Lee"}, concerns=["basic_needs"]))
    worker_pass(client)
    notices = items(engine, "family_notice")
    assert sorted(n.contact_id for n in notices) == ["g1", "g2"]
    run_dispatch(engine, settings)
    bodies = [m["message"]["body"] for f in ("family-sms.jsonl", "family-email.jsonl")
              for m in sent(settings, f) if m["message"]["to"] != TEACHER["email"]]  # fmt: skip
    assert len(bodies) == 2 and all("Northside Food Pantry" in b for b in bodies)
    for body in bodies:
        for word in ("Whitfield", "Kim Lee", "teacher", "food at home", "basic", "attendance",
                     "concern", "referr"):  # fmt: skip
            assert word.lower() not in body.lower(), (word, body)


def test_a_safety_concern_never_triggers_a_family_notice(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    post(client, bearer(engine, "referrals:create"), form(concerns=["safety", "basic_needs"]))
    worker_pass(client)

    assert the_case(engine, "s1").status == "open"
    assert items(engine, "family_notice") == []


def test_the_answer_is_the_same_shape_whether_or_not_the_student_matched(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    matched = post(client, token, form())
    unmatched = post(client, token, form({"local_id": "no-such-student"}))
    elsewhere = post(client, bearer(engine, "referrals:create", schools=["sch-2"]), form())

    def masked(response: Any) -> str:
        body = response.get_data(as_text=True)
        for value in response.get_json()["id"], response.get_json()["status_token"]:
            body = body.replace(value, "X" * len(value))
        return body

    answers = [matched, unmatched, elsewhere]
    assert len({masked(r) for r in answers}) == 1
    assert len({len(r.get_data()) for r in answers}) == 1
    assert len({tuple(sorted(r.headers.keys())) for r in answers}) == 1
    assert {r.get_json()["status"] for r in answers} == {"received"}
    # A token limited to sch-2 did not find the sch-1 student: no second reason on the case.
    states = [(r.state, r.student_id) for r in person_referrals(engine)]
    assert states == [("matched", "s1"), ("unmatched", None), ("unmatched", None)]


def test_staff_see_only_their_schools(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    referral_id = post(client, bearer(engine, "referrals:create"), form()).get_json()["id"]
    mine, theirs = (
        bearer(engine, "cases:read", schools=["101"]),
        bearer(engine, "cases:read", schools=["sch-2"]),
    )

    assert client.get(f"/referrals/{referral_id}", headers=mine).status_code == 200
    hidden = client.get(f"/referrals/{referral_id}", headers=theirs)
    missing = client.get("/referrals/ref_nosuchreferral00", headers=theirs)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_data() == missing.get_data()
    assert client.get("/referrals", headers=theirs).get_json()["items"] == []
    listed = client.get("/referrals?origin=person&state=matched", headers=mine).get_json()
    assert [i["id"] for i in listed["items"]] == [referral_id] and listed["total"] == 1


def test_the_status_token_shows_the_status_and_a_wrong_one_is_404(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    receipt = post(client, bearer(engine, "referrals:create"), form()).get_json()
    url, token = receipt["status_url"], receipt["status_token"]
    assert url == f"/referrals/{receipt['id']}/status"
    assert client.get(url, headers={"Status-Token": token}).get_json()["status"] == "received"
    worker_pass(client)  # on the case, with its case manager

    shown = client.get(url, headers={"Status-Token": token})
    assert shown.status_code == 200 and shown.get_json()["status"] == "assigned"
    assert client.get(f"{url}?token={token}").get_json()["status"] == "assigned"
    wrong = client.get(url, headers={"Status-Token": token[:-3] + "abc"})
    other = client.get("/referrals/ref_AAAAAAAAAAAAAAAA/status", headers={"Status-Token": token})
    none = client.get(url)
    odd = client.get("/referrals/ref_é/status", headers={"Status-Token": token})
    assert wrong.status_code == other.status_code == none.status_code == odd.status_code == 404
    assert wrong.mimetype == PROBLEM_JSON and wrong.get_data() == other.get_data()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_sha256 FROM referral_status_tokens")).scalars()
        assert token not in list(stored)

    case = the_case(engine, "s1")
    with engine.begin() as conn:  # a counselor completes the task in their tool
        apply_report(conn, settings, StatusReport(f"case-{case.id}", "completed", "tasks"))
    assert client.get(url, headers={"Status-Token": token}).get_json()["status"] == "closed"


def test_assigned_shows_only_after_the_delay(engine: Engine, db_url: str, tmp_path: Path) -> None:
    delayed = settings_for(db_url, district(tmp_path / "data").root, tmp_path / "out")
    run_sync(engine, delayed)
    client = create_app(delayed, engine).test_client()
    matched = post(client, bearer(engine, "referrals:create"), form()).get_json()
    worker_pass(client)

    status = client.get(matched["status_url"], headers={"Status-Token": matched["status_token"]})
    assert status.get_json()["status"] == "received"  # assigned already, told tomorrow
    [assigned] = [i for i in items(engine, "referrer_status") if i.payload["state"] == "assigned"]
    created = assigned.created_at.replace(tzinfo=None)
    hours = (assigned.next_attempt_at.replace(tzinfo=None) - created).total_seconds() / 3600
    assert 23.9 < hours <= 24


def test_the_referrer_is_told_received_assigned_closed_by_email_and_nothing_more(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    receipt = post(client, bearer(engine, "referrals:create"), form()).get_json()
    no_email = {**TEACHER, "email": None, "name": "Pat Quinn"}
    post(client, bearer(engine, "referrals:create"), form(referrer=no_email, concerns=["health"]))
    run_dispatch(engine, settings)
    case = the_case(engine, "s1")
    with engine.begin() as conn:
        apply_report(conn, settings, StatusReport(f"case-{case.id}", "completed", "tasks"))
    run_dispatch(engine, settings)

    to_referrer = [m for m in sent(settings, "family-email.jsonl")
                   if m["message"]["to"] == TEACHER["email"]]  # fmt: skip
    keys = [m["idempotency_key"] for m in to_referrer]
    assert keys == [f"referrer:{receipt['id']}:status-{s}"
                    for s in ("received", "assigned", "closed")]  # fmt: skip
    for message in to_referrer:
        text_ = message["message"]["subject"] + message["message"]["body"]
        assert receipt["id"] in text_
        for word in ("Lucía", "Gómez", "1001", "food", "basic", "attendance", "Lincoln"):
            assert word not in text_, word
    with engine.connect() as conn:
        told = conn.execute(
            select(Disclosure.student_id, Disclosure.data_categories)
            .where(Disclosure.recipient_kind == "referrer")
        ).all()  # fmt: skip
    assert [tuple(t) for t in told] == [("s1", ["referral_status"])] * 2  # assigned, closed


def test_the_rate_limit_answers_429_problem_json(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    limited = settings_for(db_url, district(tmp_path / "data").root, tmp_path / "out",
                           api={"referral_rate_limit": "2 per minute"})  # fmt: skip
    run_sync(engine, limited)
    client = create_app(limited, engine).test_client()
    token = bearer(engine, "referrals:create")
    answers = [client.post("/referrals", json=form(concerns=[c]), headers=token).status_code
               for c in ("health", "family", "other")]  # fmt: skip

    assert answers == [201, 201, 429]
    refused = client.post("/referrals", json=form(), headers=token)
    assert (refused.status_code, refused.mimetype) == (429, PROBLEM_JSON)
    assert len(person_referrals(engine)) == 2


def test_a_repeated_post_is_one_referral(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    first = post(client, token, form()).get_json()
    again = post(client, token, form()).get_json()  # the same referrer, student, concerns, day
    keyed = post(client, {**token, "Idempotency-Key": "form-42"}, form(concerns=["health"]))
    retried = post(client, {**token, "Idempotency-Key": "form-42"}, form(concerns=["health"]))
    worker_pass(client)

    assert again["id"] == first["id"] and retried.get_json()["id"] == keyed.get_json()["id"]
    assert again["status_token"] != first["status_token"]  # each answer's token works
    status = client.get(again["status_url"], headers={"Status-Token": again["status_token"]})
    assert status.status_code == 200
    assert len(person_referrals(engine)) == 2
    with engine.connect() as conn:  # two reasons on the case, not four
        assert conn.execute(select(func.count()).select_from(Referral)).scalar() == 2


def test_a_changed_note_or_urgency_the_same_day_is_a_new_referral(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    first = post(client, token, form()).get_json()
    later = post(client, token, form(note="Now says they slept in the car.", urgency="urgent"))
    worker_pass(client)

    assert later.get_json()["id"] != first["id"]
    notes = [r.note for r in person_referrals(engine)]
    assert notes == [NOTE, "Now says they slept in the car."]  # nothing a teacher wrote is lost
    assert the_case(engine, "s1").severity == "high"


def test_an_idempotency_key_reused_for_another_referral_is_422(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    token = {**bearer(engine, "referrals:create"), "Idempotency-Key": "form-7"}
    post(client, token, form())

    other = client.post("/referrals", json=form(concerns=["health"]), headers=token)

    assert other.status_code == 422 and other.mimetype == PROBLEM_JSON
    assert other.get_json()["invalid-params"][0]["name"] == "header.Idempotency-Key"
    assert len(person_referrals(engine)) == 1


def test_unknown_concerns_and_missing_student_are_422_without_echoing_the_input(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    bad = client.post("/referrals", json=form(concerns=["witchcraft"]), headers=token)
    nobody = client.post("/referrals", json=form({"school": "Lincoln High"}), headers=token)

    assert (bad.status_code, bad.mimetype) == (422, PROBLEM_JSON)
    assert bad.get_json()["invalid-params"][0]["name"] == "body.concerns"
    assert (nobody.status_code, nobody.mimetype) == (422, PROBLEM_JSON)
    assert NOTE not in nobody.get_data(as_text=True)
    assert nobody.get_json()["invalid-params"][0]["name"] == "body.student"
    status = client.get("/referrals/ref_x/status", headers={"Status-Token": "t" * 200})
    assert status.get_json()["invalid-params"][0]["name"] == "header.Status-Token"
    assert person_referrals(engine) == []


# -- how referrals live with evaluation and imports ------------------------------------------------


def test_a_case_a_person_referred_does_not_close_by_itself(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    client = app.test_client()
    post(client, bearer(engine, "referrals:create"), form())
    worker_pass(client)
    for day in (date(2026, 11, 20), date(2026, 12, 20)):  # no rule fires, weeks pass
        run_evaluate(engine, settings, day)

    case = the_case(engine, "s1")
    assert (case.status, case.recovered_since) == ("open", None)


def test_birth_dates_come_from_demographics_for_students_only(
    engine: Engine, settings: Settings
) -> None:
    run_sync(engine, settings)
    with engine.connect() as conn:
        births = dict(conn.execute(select(StudentDemographics.student_id,
                                          StudentDemographics.birth_date)).all())  # fmt: skip
    assert births == {"s1": date(2011, 3, 4), "s2": date(2010, 6, 1), "s3": date(2010, 6, 1),
                      "s4": date(2013, 1, 9)}  # fmt: skip


def test_a_referral_reaches_the_tool_and_the_referrer_through_the_cli_dispatch(
    app: Flask, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    post(app.test_client(), bearer(engine, "referrals:create"), form())
    config = write_config(tmp_path / "district.yaml", db_url, tmp_path / "data", tmp_path / "out",
                          referrals={"assigned_status_delay_hours": 0})  # fmt: skip

    result = CliRunner().invoke(main, ["--config", str(config), "dispatch"])

    assert result.exit_code == 0, result.output
    tasks = (tmp_path / "out" / "tasks.jsonl").read_text(encoding="utf-8")
    assert "referred by Dana Whitfield" in tasks
    emails = (tmp_path / "out" / "family-email.jsonl").read_text(encoding="utf-8")
    assert len(re.findall(r"referrer:ref_[\w-]+:status-(received|assigned)", emails)) == 2


def test_two_referrals_racing_to_open_the_same_students_case_share_one(
    app: Flask, engine: Engine, settings: Settings
) -> None:
    """Another worker places a second referral about the student, opening the case, while this
    one is between reading the open cases and their reasons (READ COMMITTED): this one rolls
    back and joins that case."""
    if engine.dialect.name != "postgresql":
        pytest.skip("one writer at a time on SQLite: the race needs PostgreSQL")

    client = app.test_client()
    post(client, bearer(engine, "referrals:create"), form())
    raced: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def other_worker_places(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if raced or "FOR UPDATE" not in statement or "FROM cases" not in statement:
            return
        raced.append(0)
        counselor_refers_lucia(engine, settings)
        # Skips the first referral (this worker holds it) and places its own.
        raced.append(place_received(engine, settings))

    try:
        placed = worker_pass(client)
    finally:
        event.remove(engine, "after_cursor_execute", other_worker_places)

    assert raced == [0, 1] and placed == 1
    case = the_case(engine, "s1")  # one case (the index allows one open case per student)
    assert case.revision == 2
    assert [r.case_id for r in person_referrals(engine)] == [case.id, case.id]
    assert worker_pass(client) == 0  # nothing placed twice


def test_a_referral_that_cannot_be_placed_goes_to_the_queue_and_holds_up_no_other(
    app: Flask, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import referrals

    client = app.test_client()
    token = bearer(engine, "referrals:create")
    broken_id = post(client, token, form()).get_json()["id"]
    post(client, token, form({"local_id": "2001"}, concerns=["health"]))
    real = referrals.person_reason

    def fails_for_one(settings: Settings, row: Any, *args: Any) -> Any:
        if row.public_id == broken_id:  # a defect that only this referral's data sets off
            raise ValueError("cannot make a reason of this referral")
        return real(settings, row, *args)

    monkeypatch.setattr(referrals, "person_reason", fails_for_one)

    assert worker_pass(client) == 1

    broken, fine = person_referrals(engine)
    assert (broken.state, broken.match, broken.case_id) == ("unmatched", "placement_failed", None)
    assert fine.case_id == the_case(engine, "s4").id
    reader = bearer(engine, "cases:read")
    queue = client.get("/referrals/unmatched", headers=reader).get_json()["items"]
    assert [i["match"] for i in queue] == ["placement_failed"]  # a person sees it
    assert worker_pass(client) == 0


def test_metrics_show_referrals_waiting_for_a_worker_and_for_staff(
    app: Flask, engine: Engine
) -> None:
    client = app.test_client()
    token = bearer(engine, "referrals:create")
    post(client, token, form())
    post(client, token, form({"local_id": "no-such-student"}))

    def waiting() -> dict[str, str]:
        text_ = client.get("/metrics").get_data(as_text=True)
        found = re.findall(r'^casebridge_person_referrals\{state="(\w+)"\} (\S+)$', text_, re.M)
        return dict(found)

    assert waiting() == {"waiting_for_worker": "1.0", "unmatched": "1.0"}
    worker_pass(client)
    assert waiting() == {"waiting_for_worker": "0.0", "unmatched": "1.0"}


def test_an_evaluation_that_meets_a_case_a_worker_just_opened_runs_again_and_joins_it(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """The nightly evaluation reads the open cases, then a worker places a referral about a
    student the evaluation is about to flag (opening the case). The evaluation's own case for
    that student hits the one-open-case index: it runs again and joins the case."""
    if engine.dialect.name != "postgresql":
        pytest.skip("one writer at a time on SQLite: the race needs PostgreSQL")

    d = district(tmp_path / "data")
    days = d.school_days("sch-1", 40)
    for day in days[2:10]:
        d.absent("1001", day)
    d.write()
    settings = settings_for(db_url, d.root, tmp_path / "out", as_of=days[19].isoformat())
    run_sync(engine, settings)
    raced: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def worker_places(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if raced or not statement.lstrip().startswith("SELECT cases.id, cases.student_id"):
            return
        raced.append(0)
        counselor_refers_lucia(engine, settings)
        raced.append(place_received(engine, settings))

    try:
        report = run_evaluate(engine, settings)
    finally:
        event.remove(engine, "after_cursor_execute", worker_places)

    assert raced == [0, 1]
    assert report.cases_opened == 0  # the worker's case, joined
    case = the_case(engine, "s1")
    with engine.connect() as conn:
        origins = sorted(
            conn.execute(select(Referral.origin).where(Referral.case_id == case.id)).scalars()
        )
    assert origins == ["person", "rule"]
