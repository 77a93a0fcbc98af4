"""The demo district's cases in four staff tools at once: a signed webhook receiver, Microsoft
Planner, a Google Sheets tracker and Zendesk, each a local server speaking its wire format.

What a counselor would notice: exactly one task per case in every tool, whatever failed on the
way (429s, 5xx bursts, answers lost after the tool acted, an ETag conflict); the task updated when
a new reason joins the case; closed when the case closes; nothing new when the whole outbox is
replayed; and a row marked done in the sheet closes the case everywhere.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, delete, select, update
from standardwebhooks.webhooks import Webhook

from service.api import create_app
from service.config import Settings, parse_settings
from service.models import Case, CaseEvent, DeliveryLink, Disclosure, OutboxItem
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from service.tool_status import poll_tools
from tests.conftest import ROOT, example_config, raw_config_for
from tests.fixtures.http_server import Fault
from tests.fixtures.tool_servers import (
    PlannerServer,
    SheetsServer,
    WebhookReceiver,
    ZendeskServer,
)

DEMO_DATA = ROOT / "config" / "sample-data"
STATUS_SECRET = "whsec_" + base64.b64encode(b"planner-flow-status-secret-01").decode()
SECRET = "whsec_" + base64.b64encode(b"end-to-end-webhook-secret-0123").decode()
NO_WAIT = {"base_delay_seconds": 0, "max_delay_seconds": 0}
SERVICE_ACCOUNT = "casebridge@district-project.iam.gserviceaccount.com"
FAST = {"max_attempts": 4, "breaker_failures": 20}


@dataclass
class Tools:
    hooks: WebhookReceiver
    planner: PlannerServer
    sheets: SheetsServer
    zendesk: ZendeskServer
    private_pem: str

    def destinations(self) -> list[dict[str, Any]]:
        return [
            {"name": "hooks", "kind": "webhook", "url": f"{self.hooks.base_url}/hooks",
             "secret": SECRET, **FAST},
            {"name": "planner", "kind": "planner", "tenant_id": "tenant-1",
             "client_id": "app-1", "client_secret": "graph-secret",
             "login_base_url": self.planner.base_url,
             "graph_base_url": f"{self.planner.base_url}/v1.0",
             "plan_id": "plan-A", "bucket_id": "bucket-new",
             "routes": [{"schools": ["102"], "plan_id": "plan-B", "bucket_id": "bucket-b"}],
             "status_secret": STATUS_SECRET, **FAST},
            {"name": "sheets", "kind": "google_sheets", "spreadsheet_id": "sheet-1",
             "client_email": SERVICE_ACCOUNT, "private_key": self.private_pem,
             "token_url": f"{self.sheets.base_url}/token", "base_url": self.sheets.base_url,
             "requests_per_second": None, **FAST},
            {"name": "zendesk", "kind": "zendesk", "base_url": self.zendesk.base_url,
             "email": "cb@district.example.org", "api_token": "zd-tok", **FAST},
        ]  # fmt: skip


@pytest.fixture
def tools() -> Iterator[Tools]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    servers = Tools(
        WebhookReceiver(SECRET), PlannerServer(page_size=5),
        SheetsServer(key.public_key(), SERVICE_ACCOUNT), ZendeskServer(), pem,
    )  # fmt: skip
    for server in (servers.hooks, servers.planner, servers.sheets, servers.zendesk):
        server.start()
    yield servers
    for server in (servers.hooks, servers.planner, servers.sheets, servers.zendesk):
        server.stop()


def configured(db_url: str, data: Path, out: Path, tools: Tools, **overrides: Any) -> Settings:
    raw = raw_config_for(db_url, data, out, destinations=tools.destinations(), channels=[],
                         outbox=NO_WAIT, **overrides)  # fmt: skip
    return parse_settings(raw, "t.yaml", data)


def cases(engine: Engine, status: str | None = None) -> set[str]:
    with engine.connect() as conn:
        q = select(Case.id)
        if status:
            q = q.where(Case.status == status)
        return {f"case-{i}" for i in conn.execute(q).scalars()}


def planner_tasks(tools: Tools) -> dict[str, dict[str, Any]]:
    out = {}
    for task in tools.planner.tasks.values():
        subject = task["title"].rsplit("[", 1)[1].rstrip("]")
        assert subject not in out, f"two Planner tasks for {subject}"
        out[subject] = {**task, "details": tools.planner.details[task["id"]]["description"]}
    return out


def sheet_rows(tools: Tools) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in tools.sheets.rows[1:]:
        assert row[0] not in out, f"two rows for {row[0]}"
        out[row[0]] = row
    return out


def zendesk_tickets(tools: Tools) -> dict[str, dict[str, Any]]:
    out = {}
    for ticket in tools.zendesk.tickets.values():
        assert ticket["external_id"] not in out, f"two tickets for {ticket['external_id']}"
        out[ticket["external_id"]] = ticket
    return out


def assert_one_item_per_case_everywhere(tools: Tools, expected: set[str]) -> None:
    assert set(tools.hooks.tasks()) == expected
    assert set(planner_tasks(tools)) == expected
    assert set(sheet_rows(tools)) == expected
    assert set(zendesk_tickets(tools)) == expected
    assert tools.sheets.appends == 0  # values.append is never used


def test_demo_cases_land_once_in_every_tool_follow_the_case_and_survive_a_replay(
    db_url: str, tmp_path: Path, tools: Tools
) -> None:
    data = DEMO_DATA  # the district `make demo` runs
    settings = configured(db_url, data, tmp_path / "out", tools)
    engine = open_engine(settings)
    assert not [r.error for r in run_sync(engine, settings) if r.error]
    run_evaluate(engine, settings)
    opened = cases(engine, "open")
    assert len(opened) >= 8

    # Everything that goes wrong on the wire, once each.
    tools.planner.faults.append(Fault("/planner/tasks", status=429, retry_after=1))
    tools.sheets.faults += [Fault("/values/", status=503, times=2)]
    tools.zendesk.faults.append(Fault("/tickets.json", status=500, times=1))
    tools.planner.lose_response("POST", "/planner/tasks")  # created; the answer is lost
    tools.zendesk.lose_response("POST", "/tickets.json")
    tools.sheets.lose_response("PUT", "/values/")
    tools.hooks.lose_response("POST", "/hooks")

    report = run_dispatch(engine, settings)

    assert report.dead == 0 and report.needs_review == 0
    assert report.delivered == 4 * len(opened)
    assert_one_item_per_case_everywhere(tools, opened)
    assert tools.planner.creates == len(opened)  # the lost create was found, not repeated
    assert report.reconciled == 1  # ...by asking Planner (find), then updating that task
    assert len(tools.zendesk.tickets) == len(opened) and tools.hooks.rejected == 0
    plans = {t["planId"] for t in tools.planner.tasks.values()}
    assert plans == {"plan-A", "plan-B"}  # routed by school
    assert all(t.get("assignments") for t in tools.planner.tasks.values())  # by email
    # The counselor reads evidence in human units, not indicator floats.
    chronic = [s for s, t in tools.hooks.tasks().items()
               if any(r["rule_id"] == "chronic-absence" for r in t["reasons"])]  # fmt: skip
    assert chronic
    text = planner_tasks(tools)[chronic[0]]["details"]
    assert "missed " in text and " school days (" in text and "0.0" not in text
    assert "Ride to School program" in text  # a suggested resource, with why
    with engine.connect() as conn:
        categories = (
            conn.execute(
                select(Disclosure.data_categories).where(
                    Disclosure.recipient == "staff tool planner"
                )
            )
            .scalars()
            .all()
        )
    assert len(categories) == len(opened)
    assert all("support_offered" in c for c in categories)
    assert any("attendance" in c for c in categories)

    # A new reason joins every chronic-absence case; someone edited one task in Planner.
    watch = {
        "id": "attendance-watch",
        "when": "chronically_absent and absent_days >= 1",
        "reason": "attendance_watch",
        "severity": "medium",
        "resources": ["tutoring"],
    }
    rules = [*example_config()["rules"], watch]
    settings = configured(db_url, data, tmp_path / "out", tools, rules=rules)
    tools.planner.tokens.clear()  # both tokens revoked: a 401, one fresh token, carry on
    tools.sheets.tokens.clear()
    touched = planner_tasks(tools)[chronic[0]]["id"]
    tools.planner.edit_in_planner(touched, percentComplete=50)
    run_evaluate(engine, settings)
    report = run_dispatch(engine, settings)

    assert report.delivered == 4 * len(chronic) and report.dead == 0
    assert_one_item_per_case_everywhere(tools, opened)
    assert tools.planner.conflicts == 1  # 412, re-read, patched with the fresh ETag
    assert tools.planner.count("POST", "/oauth2/v2.0/token") == 2
    assert tools.sheets.count("POST", "/token") == 2
    for subject in chronic:
        assert "attendance watch" in planner_tasks(tools)[subject]["details"]
        assert "attendance watch" in sheet_rows(tools)[subject][9]
        assert (
            "attendance watch"
            in tools.zendesk.comments[int(zendesk_tickets(tools)[subject]["id"])][-1]
        )
        assert {r["reason"] for r in tools.hooks.tasks()[subject]["reasons"]} >= {
            "chronic_absence", "attendance_watch"}  # fmt: skip

    # Replay the whole outbox, with every stored link lost too: nothing new anywhere.
    counts = (len(tools.hooks.events), tools.planner.creates, len(tools.sheets.rows),
              len(tools.zendesk.tickets))  # fmt: skip
    with engine.begin() as conn:
        conn.execute(delete(DeliveryLink))
        conn.execute(update(OutboxItem).values(status="pending", attempts=0, reason=None,
                                               next_attempt_at=OutboxItem.created_at))  # fmt: skip
    run_dispatch(engine, settings)
    assert counts == (len(tools.hooks.events), tools.planner.creates, len(tools.sheets.rows),
                      len(tools.zendesk.tickets))  # fmt: skip
    assert_one_item_per_case_everywhere(tools, opened)

    # A counselor marks one row done in the sheet: the case closes, in every tool.
    done = sorted(opened)[0]
    tools.sheets.edit_cell(done, 1, "Done")
    assert poll_tools(engine, settings) == {"closed": 1}
    # Until the tools show the closed case, what they say is not news (Sheets and Planner).
    assert poll_tools(engine, settings) == {"waiting_for_update": 2}
    run_dispatch(engine, settings)
    assert poll_tools(engine, settings) == {}
    with engine.connect() as conn:
        closed = conn.execute(select(Case.status, Case.close_reason)
                              .where(Case.id == int(done.split("-")[1]))).one()  # fmt: skip
        history = conn.execute(select(CaseEvent.kind, CaseEvent.via)
                               .where(CaseEvent.via.is_not(None))).all()  # fmt: skip
    assert tuple(closed) == ("closed", "closed_in_tool")
    assert history == [("closed", "sheets")]
    assert planner_tasks(tools)[done]["percentComplete"] == 100
    assert zendesk_tickets(tools)[done]["status"] == "solved"
    assert tools.hooks.tasks()[done]["status"] == "closed"
    assert sheet_rows(tools)[done][1:3] == ["closed", "closed"]

    # Another counselor completes a task in Planner: polled, the case closes, with who did it.
    finished = sorted(opened)[1]
    tools.planner.edit_in_planner(planner_tasks(tools)[finished]["id"], percentComplete=100,
                                  completedBy={"user": {"id": "u-rivera"}})  # fmt: skip
    assert poll_tools(engine, settings) == {"closed": 1}
    run_dispatch(engine, settings)
    with engine.connect() as conn:
        history = conn.execute(select(CaseEvent.kind, CaseEvent.via, CaseEvent.actor)
                               .where(CaseEvent.via.is_not(None))
                               .order_by(CaseEvent.id)).all()  # fmt: skip
    assert history == [("closed", "sheets", None), ("closed", "planner", "u-rivera")]
    assert zendesk_tickets(tools)[finished]["status"] == "solved"
    assert sheet_rows(tools)[finished][1] == "closed"

    # A case is reassigned from a tool (signed status report): Planner shows only the new one.
    moved = next(
        s
        for s in sorted(opened)[2:]
        if (tools.hooks.tasks()[s]["assignee"] or {}).get("staff_id") == "cm-rivera"
    )
    before = set(planner_tasks(tools)[moved]["assignments"])
    report_body = json.dumps({"type": "task.status", "data": {
        "task_id": moved, "action": "reassigned", "actor": "principal@district.example.org",
        "assignee": "dokafor@district.example.org"}}).encode()  # fmt: skip
    now = datetime.now(UTC)
    signed = {"webhook-id": "flow-1", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(STATUS_SECRET).sign("flow-1", now,
                                                                report_body.decode()),
              "Content-Type": "application/json"}  # fmt: skip
    answer = (
        create_app(settings, engine)
        .test_client()
        .post("/tools/planner/status", data=report_body, headers=signed)
    )
    assert answer.json == {"outcome": "reassigned", "duplicate": False}
    run_dispatch(engine, settings)
    assert before == {"u-rivera"}
    assert set(planner_tasks(tools)[moved]["assignments"]) == {"u-okafor"}
    assert tools.hooks.tasks()[moved]["assignee"]["name"] == "Daniel Okafor"

    # Every other case recovers and closes: every tool shows it closed, still one item each.
    settings = configured(db_url, data, tmp_path / "out", tools, rules=[],
                          cases={"recovery_days": 0})  # fmt: skip
    run_evaluate(engine, settings)
    run_evaluate(engine, settings)
    assert cases(engine, "open") == set()
    run_dispatch(engine, settings)
    assert_one_item_per_case_everywhere(tools, opened)
    assert {t["percentComplete"] for t in planner_tasks(tools).values()} == {100}
    assert {t["status"] for t in zendesk_tickets(tools).values()} == {"solved"}
    assert {t["status"] for t in tools.hooks.tasks().values()} == {"closed"}
    assert {r[1] for r in sheet_rows(tools).values()} == {"closed"}
