"""The outbox for operators (`admin`): list by status and target without content or addresses,
retry dead items, resolve uncertain ones, as `casebridge outbox retry / resolve` would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from service.api.problems import PROBLEM_JSON
from service.models import Disclosure, OutboxItem
from service.pipeline import run_dispatch
from tests.api_world import GUARDIAN_E164, World, build_world


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    w = build_world(engine, db_url, tmp_path)
    run_dispatch(w.engine, w.settings)  # 3 tasks and 1 text delivered
    return w


def item(engine: Engine, item_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OutboxItem.__table__).where(OutboxItem.id == item_id)).one()


def set_item(engine: Engine, item_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(OutboxItem).where(OutboxItem.id == item_id).values(**values))


def ids_by(engine: Engine, kind: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(OutboxItem.id).where(OutboxItem.kind == kind).order_by(OutboxItem.id)
            ).scalars()
        )


def test_only_admin_tokens_reach_the_outbox(world: World) -> None:
    reader = world.headers("dashboard", "cases:read", "cases:write")
    c = world.client
    for call in (
        lambda h: c.get("/outbox", headers=h),
        lambda h: c.post("/outbox/1/retry", headers=h),
        lambda h: c.post("/outbox/1/resolve", headers=h, json={"outcome": "drop"}),
    ):
        assert call({}).status_code == 401
        denied = call(reader)
        assert denied.status_code == 403 and "admin" in denied.get_json()["detail"]
    assert c.get("/outbox", headers=world.headers("it", "admin")).status_code == 200


def test_the_list_filters_and_shows_no_content_and_no_address(world: World) -> None:
    admin = world.headers("it", "admin")
    [notice] = ids_by(world.engine, "family_notice")
    task = ids_by(world.engine, "task_upsert")[0]
    answer = "planner: POST answered 400: {'title': 'Support case: Ana Lopez'}"
    set_item(world.engine, task, status="dead", reason="permanent error", attempts=1,
             last_error=answer)  # fmt: skip

    everything = world.get("/outbox", admin).get_json()
    dead = world.get("/outbox?status=dead", admin).get_json()
    texts = world.get("/outbox?target=sms", admin).get_json()

    assert everything["total"] == 4
    [row] = dead["items"]
    assert (row["id"], row["status"], row["last_error_class"]) == (task, "dead", "PermanentError")
    assert row["idempotency_key"].startswith("task:tasks:case-")
    assert [i["id"] for i in texts["items"]] == [notice]
    assert texts["items"][0]["contact_id"] == "g1"
    raw = world.get("/outbox", admin).get_data(as_text=True)
    for secret in ("Ana", "Lopez", GUARDIAN_E164, "body", "Support case"):
        assert secret not in raw, secret
    assert world.get("/outbox?status=lost", admin).status_code == 422


def test_retry_sends_a_dead_item_again_and_refuses_others(world: World) -> None:
    admin = world.headers("it", "admin")
    c = world.client
    delivered = ids_by(world.engine, "task_upsert")[0]
    # A new revision of a task, which the tool kept refusing until it ran out of attempts.
    reassign = {"assignee_id": "cm-okafor"}
    case = world.case_of["s2"]
    who = world.headers("counselor", "cases:write")
    assert c.patch(f"/cases/{case}", headers=who, json=reassign).status_code == 200
    dead = ids_by(world.engine, "task_upsert")[-1]
    set_item(world.engine, dead, status="dead", reason="attempts exhausted", attempts=8,
             last_error="tasks: timeout")  # fmt: skip
    assert run_dispatch(world.engine, world.settings).delivered == 0

    retried = c.post(f"/outbox/{dead}/retry", headers=admin)

    assert retried.status_code == 200
    assert (retried.get_json()["status"], retried.get_json()["attempts"]) == ("pending", 0)
    assert item(world.engine, dead).reason == "retried by operator"
    assert run_dispatch(world.engine, world.settings).delivered == 1
    refused = c.post(f"/outbox/{delivered}/retry", headers=admin)
    assert refused.status_code == 409 and refused.mimetype == PROBLEM_JSON
    assert "delivered" in refused.get_json()["detail"]
    assert c.post("/outbox/999999/retry", headers=admin).status_code == 404


def test_resolve_settles_an_uncertain_item_like_the_cli(world: World) -> None:
    admin = world.headers("on-call", "admin")
    c = world.client
    [notice] = ids_by(world.engine, "family_notice")
    first_task, second_task = ids_by(world.engine, "task_upsert")[:2]
    with world.engine.connect() as conn:
        disclosures = conn.execute(select(func.count()).select_from(Disclosure)).scalar_one()
    set_item(world.engine, notice, status="needs_review", reason="reconcile: unknown",
             last_error="twilio: timeout")  # fmt: skip
    set_item(world.engine, first_task, status="needs_review", reason="reconcile: unknown")

    checked = {"outcome": "sent", "note": "Twilio console shows it delivered"}
    sent = c.post(f"/outbox/{notice}/resolve", headers=admin, json=checked)
    dropped = c.post(f"/outbox/{first_task}/resolve", headers=admin, json={"outcome": "drop"})

    assert (sent.status_code, sent.get_json()["status"]) == (200, "delivered")
    assert sent.get_json()["reason"] == "resolved by operator: sent"  # the note stays inside
    kept = item(world.engine, notice).reason
    assert "Twilio console" in kept and "on-call via api" in kept
    with world.engine.connect() as conn:  # it went out: the disclosure is recorded again
        after = conn.execute(select(func.count()).select_from(Disclosure)).scalar_one()
    assert after == disclosures + 1
    assert (dropped.status_code, dropped.get_json()["status"]) == (200, "dead")
    again = c.post(f"/outbox/{second_task}/resolve", headers=admin, json={"outcome": "sent"})
    assert again.status_code == 409  # delivered already: nothing to resolve
    wrong = c.post(f"/outbox/{notice}/resolve", headers=admin, json={"outcome": "maybe"})
    assert wrong.status_code == 422 and wrong.mimetype == PROBLEM_JSON
    missing = c.post("/outbox/999999/resolve", headers=admin, json={"outcome": "drop"})
    assert missing.status_code == 404
