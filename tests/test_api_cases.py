"""Cases through the API, as a caller sees them: scopes, school limits, filters and paging, the
timeline with each referral's explanation, and changes that reach the staff tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from service.api.problems import PROBLEM_JSON
from service.clock import utcnow
from service.models import Case, CaseEvent, CaseReply, OutboxItem
from service.pipeline import run_dispatch, run_evaluate
from tests.api_world import GUARDIAN_E164, World, build_world
from tests.test_cases import sent


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    return build_world(engine, db_url, tmp_path)


def outbox_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(OutboxItem)).scalar_one())


def events(engine: Engine, case_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(CaseEvent.kind, CaseEvent.actor, CaseEvent.via, CaseEvent.detail)
                .where(CaseEvent.case_id == case_id)
                .order_by(CaseEvent.id)
            )
        )


def test_reading_needs_cases_read_and_changing_needs_cases_write(world: World) -> None:
    c = world.client
    case = world.case_of["s1"]
    reader = world.headers("dashboard", "cases:read")
    form = world.headers("referral form", "referrals:create")
    writer = world.headers("counselor tool", "cases:write")
    close = {"status": "closed", "close_reason": "resolved"}
    calls = [
        ("get", "/cases", None), ("get", f"/cases/{case}", None),
        ("patch", f"/cases/{case}", close), ("post", f"/cases/{case}/notes", {"text": "hi"}),
    ]  # fmt: skip
    for method, path, body in calls:
        anonymous = getattr(c, method)(path, json=body)
        assert anonymous.status_code == 401, path
        assert anonymous.mimetype == PROBLEM_JSON

    for method, path, body in calls:
        assert getattr(c, method)(path, json=body, headers=form).status_code == 403, path
    assert c.get("/cases", headers=reader).status_code == 200
    assert c.get(f"/cases/{case}", headers=reader).status_code == 200
    denied = c.patch(f"/cases/{case}", json=close, headers=reader)
    assert denied.status_code == 403 and "cases:write" in denied.get_json()["detail"]
    assert c.post(f"/cases/{case}/notes", json={"text": "x"}, headers=reader).status_code == 403
    # Writing does not imply reading: a tool that only closes cases cannot list them.
    assert c.get("/cases", headers=writer).status_code == 403
    assert c.patch(f"/cases/{case}", json=close, headers=writer).status_code == 200


def test_cases_filter_by_school_status_reason_and_assignee_and_page(world: World) -> None:
    who = world.headers("dashboard", "cases:read")

    def ids(query: str) -> list[int]:
        answer = world.get(f"/cases?{query}", who)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return [item["id"] for item in answer.get_json()["items"]]

    s1, s2, s3 = (world.case_of[s] for s in ("s1", "s2", "s3"))
    newest_first = sorted([s1, s2, s3], reverse=True)
    assert ids("") == newest_first
    assert ids("school=sch-2") == ids("school=102") == [s3]  # by sourcedId or number
    assert ids("reason=course_failure") == sorted([s2, s3], reverse=True)
    assert ids("reason=chronic_absence&school=101") == [s1]
    assert ids("assignee=cm-nguyen") == [s3]
    assert ids("status=closed") == []

    first = world.get("/cases?limit=2", who).get_json()
    assert (first["total"], first["next_offset"], len(first["items"])) == (3, 2, 2)
    last = world.get("/cases?limit=2&offset=2", who).get_json()
    assert ([i["id"] for i in last["items"]], last["next_offset"]) == (newest_first[2:], None)

    too_many = world.get("/cases?limit=201", who)
    assert too_many.status_code == 422 and too_many.mimetype == PROBLEM_JSON
    assert too_many.get_json()["invalid-params"][0]["name"] == "query.limit"
    # A misspelt filter is refused, not ignored (which would list every case).
    assert world.get("/cases?statu=open", who).status_code == 422


def test_a_token_limited_to_a_school_sees_and_changes_only_that_school(world: World) -> None:
    own, other = world.case_of["s1"], world.case_of["s3"]
    limited = world.headers("lincoln", "cases:read", "cases:write", schools=["101"])
    c = world.client

    listed = world.get("/cases", limited).get_json()
    assert {i["school_id"] for i in listed["items"]} == {"sch-1"} and listed["total"] == 2
    assert world.get("/cases?school=sch-2", limited).get_json()["total"] == 0
    assert world.get(f"/cases/{own}", limited).status_code == 200

    # Another school's case answers exactly like a case that does not exist.
    hidden = world.get(f"/cases/{other}", limited)
    missing = world.get("/cases/999999", limited)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_json()["title"] == missing.get_json()["title"]
    assert "Roosevelt" not in hidden.get_data(as_text=True)
    before = outbox_count(world.engine)
    close = {"status": "closed", "close_reason": "resolved"}
    assert c.patch(f"/cases/{other}", json=close, headers=limited).status_code == 404
    assert c.post(f"/cases/{other}/notes", json={"text": "x"}, headers=limited).status_code == 404
    with world.engine.connect() as conn:
        status, revision = conn.execute(
            select(Case.status, Case.revision).where(Case.id == other)
        ).one()
    assert (status, revision) == ("open", 1)
    assert outbox_count(world.engine) == before
    assert [e.kind for e in events(world.engine, other)] == ["opened", "reason_added"]


def test_a_case_shows_its_explained_referrals_deliveries_and_replies_without_content(
    world: World,
) -> None:
    case = world.case_of["s1"]
    run_dispatch(world.engine, world.settings)
    [text] = [m["message"]["body"] for m in sent(world.settings, "family-sms.jsonl")]
    with world.engine.begin() as conn:
        conn.execute(insert(CaseReply).values(
            case_id=case, contact_id="g1", answer="no_help", text="no, call me at 555-0199",
            message_sid="SM1", at=utcnow(),
        ))  # fmt: skip

    answer = world.get(f"/cases/{case}", world.headers("dashboard", "cases:read"))

    assert answer.status_code == 200
    body = answer.get_json()
    assert body["student"]["first_name"] == "Ana" and body["assignee_name"]
    [referral] = body["referrals"]
    assert (referral["rule_id"], referral["rule_version"], referral["rule_expression"]) == (
        "chronic-absence", 1, "chronically_absent",
    )  # fmt: skip
    explanation = referral["explanation"]
    assert explanation["indicators"]["chronically_absent"] is True
    assert explanation["indicators"]["absent_days"] == 8
    assert explanation["as_of"] == world.as_of.isoformat()
    assert explanation["summary"] and explanation["summary"][0].startswith("missed 8 of")
    assert [e["kind"] for e in body["timeline"]] == ["opened", "reason_added"]
    deliveries = {(d["target"], d["kind"]): d for d in body["deliveries"]}
    assert deliveries[("tasks", "task_upsert")]["latest_status"] == "delivered"
    assert deliveries[("sms", "family_notice")]["by_status"] == {"delivered": 1}
    assert body["family_replies"][0]["answer"] == "no_help"
    raw = answer.get_data(as_text=True)
    for secret in (text, GUARDIAN_E164, "555-0199", "Rosa"):
        assert secret not in raw, secret


def test_closing_reaches_the_staff_tool_and_holds_through_the_cooldown(world: World) -> None:
    case = world.case_of["s1"]
    run_dispatch(world.engine, world.settings)
    who = world.headers("Ms. Alvarez (counselor tool)", "cases:write", "cases:read")

    closed = world.client.patch(
        f"/cases/{case}", headers=who,
        json={"status": "closed", "close_reason": "resolved", "note": "met the family"},
    )  # fmt: skip

    assert closed.status_code == 200, closed.get_data(as_text=True)
    assert (closed.get_json()["status"], closed.get_json()["revision"]) == ("closed", 2)
    assert closed.get_json()["close_reason"] == "resolved"
    [event] = [e for e in events(world.engine, case) if e.kind == "closed"]
    assert (event.actor, event.via) == ("Ms. Alvarez (counselor tool)", "api")
    assert event.detail == {"reason": "resolved", "note": "met the family"}
    with world.engine.connect() as conn:
        queued = conn.execute(
            select(OutboxItem.idempotency_key).where(OutboxItem.status == "pending")
        ).scalars().all()  # fmt: skip
    assert queued == [f"task:tasks:case-{case}:rev-2"]
    run_dispatch(world.engine, world.settings)
    task = sent(world.settings, "tasks.jsonl")[-1]
    assert (task["op"], task["task"]["status"], task["task"]["revision"]) == ("update", "closed", 2)

    # The same absences still fire the rule tomorrow: a person's close is not undone by it.
    again = run_evaluate(world.engine, world.settings, world.as_of)
    assert (again.cases_reopened, again.cases_opened) == (0, 0)
    assert world.get(f"/cases/{case}", who).get_json()["status"] == "closed"

    # Closing what is closed changes nothing: no revision, no event, nothing queued.
    before = outbox_count(world.engine)
    same = world.client.patch(f"/cases/{case}", headers=who,
                              json={"status": "closed", "close_reason": "other"})  # fmt: skip
    assert (same.status_code, same.get_json()["revision"]) == (200, 2)
    assert outbox_count(world.engine) == before


def test_reopen_reassign_and_what_is_refused(world: World) -> None:
    case = world.case_of["s2"]
    who = world.headers("it", "cases:write", "cases:read")
    c = world.client

    def patch(body: Any) -> Any:
        return c.patch(f"/cases/{case}", headers=who, json=body)

    assert patch({"status": "closed", "close_reason": "moved"}).status_code == 200
    reopened = patch({"status": "open", "assignee_id": "cm-okafor"})
    assert reopened.status_code == 200
    assert (reopened.get_json()["status"], reopened.get_json()["assignee_id"]) == (
        "open", "cm-okafor",
    )  # fmt: skip
    assert reopened.get_json()["revision"] == 3  # one revision for both changes
    kinds = [(e.kind, e.detail) for e in events(world.engine, case)][-2:]
    assert kinds == [("reopened", {}), ("reassigned", {"from": "cm-rivera", "to": "cm-okafor"})]
    unassigned = patch({"assignee_id": None})
    assert (unassigned.status_code, unassigned.get_json()["assignee_id"]) == (200, None)

    unknown = patch({"assignee_id": "cm-nobody"})
    assert unknown.status_code == 422 and unknown.mimetype == PROBLEM_JSON
    assert unknown.get_json()["invalid-params"][0]["name"] == "body.assignee_id"
    no_reason = patch({"status": "closed"})
    assert no_reason.status_code == 422
    assert "close_reason" in no_reason.get_json()["detail"]
    assert patch({}).status_code == 422
    assert patch({"status": "open", "close_reason": "other"}).status_code == 422

    # One open case per student: a closed case cannot reopen beside a newer open one.
    assert patch({"status": "closed", "close_reason": "duplicate"}).status_code == 200
    with world.engine.begin() as conn:
        conn.execute(insert(Case).values(
            student_id="s2", school_id="sch-1", status="open", severity="low", revision=1,
            opened_at=utcnow(), updated_at=utcnow(), reopen_count=0,
        ))  # fmt: skip
    conflict = patch({"status": "open"})
    assert conflict.status_code == 409 and conflict.mimetype == PROBLEM_JSON


def test_a_note_joins_the_timeline_without_changing_the_case(world: World) -> None:
    case = world.case_of["s3"]
    who = world.headers("Mr. Diaz", "cases:write", "cases:read")
    before = outbox_count(world.engine)

    noted = world.client.post(
        f"/cases/{case}/notes", headers=who, json={"text": "Spoke with Cai's math teacher."}
    )

    assert noted.status_code == 201
    assert noted.get_json()["actor"] == "Mr. Diaz" and noted.get_json()["via"] == "api"
    detail = world.get(f"/cases/{case}", who).get_json()
    assert detail["revision"] == 1  # the staff task does not carry notes: nothing to resend
    note = detail["timeline"][-1]
    assert (note["kind"], note["actor"], note["detail"]) == (
        "note", "Mr. Diaz", {"text": "Spoke with Cai's math teacher."},
    )  # fmt: skip
    assert outbox_count(world.engine) == before
    empty = world.client.post(f"/cases/{case}/notes", headers=who, json={"text": ""})
    assert empty.status_code == 422
