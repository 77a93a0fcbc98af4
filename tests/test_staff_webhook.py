"""Signed webhooks out (Standard Webhooks) and signed status reports in.

Every assertion is what a counselor would notice: one task per case in the receiving tool, the
case closed or reassigned when someone did it in their tool, and who did it in the history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Engine, select
from standardwebhooks.webhooks import Webhook

from connectors.destinations import signing
from service.api import create_app
from service.cli import main
from service.config import Settings, parse_settings
from service.models import Case, CaseEvent, OutboxItem
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import ROOT, raw_config_for
from tests.fixtures.http_server import Fault
from tests.fixtures.tool_servers import WebhookReceiver
from tools.synthetic import generate_district

SECRET = "whsec_" + base64.b64encode(b"casebridge-test-secret-0123456789").decode()
STATUS_SECRET = "whsec_" + base64.b64encode(b"status-back-secret-abcdefghijkl").decode()


NO_WAIT = {"base_delay_seconds": 0, "max_delay_seconds": 0}  # retries due at once


@pytest.fixture
def district(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=21)
    return data


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET)
    server.start()
    yield server
    server.stop()


def webhook_destination(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "hooks", "kind": "webhook", "url": url, "secret": SECRET,
            "status_secret": STATUS_SECRET, **extra}  # fmt: skip


def evaluated(
    db_url: str, data: Path, out: Path, destinations: list[dict[str, Any]], **overrides: Any
) -> tuple[Settings, Engine]:
    raw = raw_config_for(db_url, data, out, destinations=destinations, channels=[], **overrides)
    settings = parse_settings(raw, "t.yaml", data)
    engine = open_engine(settings)
    assert not [r.error for r in run_sync(engine, settings) if r.error]
    run_evaluate(engine, settings)
    return settings, engine


def open_cases(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        ids = conn.execute(select(Case.id).where(Case.status == "open")).scalars()
        return {f"case-{i}" for i in ids}


def test_our_signature_is_the_standard_webhooks_signature() -> None:
    body = json.dumps({"type": "case.task", "data": {"task_id": "case-1"}}).encode()
    now = int(time.time())
    ours = signing.headers(SECRET, "task:hooks:case-1:rev-1", body, now)
    # The library verifies what we sign...
    assert Webhook(SECRET).verify(body, ours)["data"]["task_id"] == "case-1"
    # ...and we verify what the library signs, byte for byte.
    theirs = Webhook(SECRET).sign("msg-1", datetime.fromtimestamp(now, UTC), body.decode())
    assert theirs == signing.sign(SECRET, "msg-1", now, body)
    headers = {"webhook-id": "msg-1", "webhook-timestamp": str(now), "webhook-signature": theirs}
    assert signing.verify(SECRET, headers, body) == "msg-1"
    with pytest.raises(signing.SignatureError):
        signing.verify(SECRET, headers, body + b" ")
    with pytest.raises(signing.SignatureError, match="tolerance"):
        signing.verify(SECRET, headers, body, now=now + 301)


def test_every_case_arrives_once_verified_despite_429_5xx_and_a_lost_response(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    hooks = webhook_destination(url, max_attempts=4, breaker_failures=10)
    settings, engine = evaluated(db_url, district, tmp_path / "out", [hooks], outbox=NO_WAIT)
    cases = open_cases(engine)
    assert len(cases) > 3
    receiver.faults += [
        Fault("/hooks", status=429, retry_after=1),
        Fault("/hooks", status=503, times=2),
        Fault("/hooks", status=502, times=1),
    ]
    receiver.lose_response("POST", "/hooks", times=2)  # accepted, but we never hear so

    report = run_dispatch(engine, settings)

    # Four failures in a row use up one delivery's attempts: the outbox retries that item once.
    assert report.delivered == len(cases) and report.dead == 0 and report.retried == 1
    assert set(receiver.tasks()) == cases  # one task per case, no case missing
    assert len(receiver.events) == len(cases)  # the lost responses' retries were dropped
    assert receiver.rejected == 0  # every request verified with the library's Webhook.verify
    posted = receiver.count("POST", "/hooks")
    assert posted == len(cases) + 1 + 2 + 1 + 2  # each fault and loss cost one retry, no more
    task = next(iter(receiver.tasks().values()))
    assert task["student"]["name"] and task["reasons"] and task["status"] == "open"
    schema = json.loads((ROOT / "docs" / "webhook-task.schema.json").read_text(encoding="utf-8"))
    for event in receiver.events:  # the documented payload is the payload sent
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())


def signed_status(payload: dict[str, Any], msg_id: str, secret: str = STATUS_SECRET,
                  at: datetime | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    body = json.dumps(payload).encode()
    moment = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())  # the tool's own library
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def test_a_tool_reports_a_task_completed_and_reassigned_and_the_case_follows(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    settings, engine = evaluated(db_url, district, tmp_path / "out", [webhook_destination(url)])
    run_dispatch(engine, settings)
    with engine.connect() as conn:  # a case the reassignment below really moves
        case_id = conn.execute(
            select(Case.id)
            .where(Case.status == "open", Case.assignee_id != "cm-nguyen")
            .order_by(Case.id)
        ).scalars().first()  # fmt: skip
    subject = f"case-{case_id}"
    client = create_app(settings, engine).test_client()

    done = {"type": "task.status", "data": {"task_id": subject, "action": "completed",
                                            "actor": "arivera@district.example.org"}}  # fmt: skip
    schema = json.loads((ROOT / "docs" / "tool-status.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(done, schema)
    body, headers = signed_status(done, "evt-1")
    first = client.post("/tools/hooks/status", data=body, headers=headers)
    again = client.post("/tools/hooks/status", data=body, headers=headers)  # redelivered

    assert first.status_code == 200 and first.json == {"outcome": "closed", "duplicate": False}
    assert again.status_code == 200 and again.json == {"outcome": "closed", "duplicate": True}
    with engine.connect() as conn:
        case = conn.execute(select(Case.status, Case.close_reason, Case.revision)
                            .where(Case.id == case_id)).one()  # fmt: skip
        events = conn.execute(select(CaseEvent.kind, CaseEvent.actor, CaseEvent.via)
                              .where(CaseEvent.case_id == case_id, CaseEvent.via.is_not(None))
                              ).all()  # fmt: skip
        queued = conn.execute(select(OutboxItem.idempotency_key)
                              .where(OutboxItem.case_id == case_id,
                                     OutboxItem.status == "pending")).scalars().all()  # fmt: skip
    assert (case.status, case.close_reason) == ("closed", "closed_in_tool")
    assert events == [("closed", "arivera@district.example.org", "hooks")]  # once, with who
    assert queued == [f"task:hooks:{subject}:rev-{case.revision}"]
    run_dispatch(engine, settings)
    assert receiver.tasks()[subject]["status"] == "closed"  # every tool hears of the close

    moved = {"type": "task.status", "data": {"task_id": subject, "action": "reassigned",
             "actor": "principal@district.example.org",
             "assignee": "lnguyen@district.example.org"}}  # fmt: skip
    reopened = {
        "type": "task.status",
        "data": {"task_id": subject, "action": "reopened", "actor": "arivera@district.example.org"},
    }
    assert (
        client.post(
            "/tools/hooks/status",
            data=signed_status(reopened, "evt-2")[0],
            headers=signed_status(reopened, "evt-2")[1],
        ).json["outcome"]
        == "reopened"
    )
    body, headers = signed_status(moved, "evt-3")
    assert client.post("/tools/hooks/status", data=body, headers=headers).json == {
        "outcome": "reassigned", "duplicate": False}  # fmt: skip
    with engine.connect() as conn:
        assignee = conn.execute(select(Case.assignee_id).where(Case.id == case_id)).scalar()
    assert assignee == "cm-nguyen"
    run_dispatch(engine, settings)
    assert receiver.tasks()[subject]["assignee"]["name"] == "Linh Nguyen"


def test_unsigned_stale_or_forged_status_reports_change_nothing(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    settings, engine = evaluated(db_url, district, tmp_path / "out", [webhook_destination(url)])
    subject = sorted(open_cases(engine))[0]
    client = create_app(settings, engine).test_client()
    done = {"type": "task.status", "data": {"task_id": subject, "action": "completed"}}

    forged = signed_status(done, "evt-9", secret=SECRET)  # the outbound secret, not this one
    stale = signed_status(done, "evt-10", at=datetime.now(UTC) - timedelta(minutes=6))
    body, headers = signed_status(done, "evt-11")
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}

    assert client.post("/tools/hooks/status", data=forged[0], headers=forged[1]).status_code == 401
    assert client.post("/tools/hooks/status", data=stale[0], headers=stale[1]).status_code == 401
    assert client.post("/tools/hooks/status", data=body, headers=unsigned).status_code == 401
    assert client.post("/tools/nowhere/status", data=body, headers=headers).status_code == 404
    assert subject in open_cases(engine)


def test_a_failing_tool_is_paused_and_the_other_tools_still_get_their_tasks(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    hooks = webhook_destination(url, max_attempts=1, breaker_failures=3, breaker_pause_seconds=600)
    files = {"name": "tasks", "kind": "file", "path": "tasks.jsonl"}
    settings, engine = evaluated(db_url, district, tmp_path / "out", [hooks, files])
    cases = open_cases(engine)
    receiver.faults.append(Fault("/hooks", status=503, times=10_000))  # the tool is down

    report = run_dispatch(engine, settings)

    assert report.by_target["tasks"] == len(cases)  # the file tool got every task
    assert report.by_target["hooks"] == 0 and report.dead == 0
    assert receiver.count("POST", "/hooks") == 3  # paused after three failures, not hammered
    with engine.connect() as conn:
        waiting = conn.execute(
            select(OutboxItem.next_attempt_at, OutboxItem.last_error).where(
                OutboxItem.target == "hooks"
            )
        ).all()
    assert len(waiting) == len(cases)
    pause_ends = datetime.now(UTC) + timedelta(seconds=500)
    after_pause = [w for w in waiting if w.next_attempt_at.replace(tzinfo=UTC) > pause_ends]
    # The two failures before the pause retry on the usual backoff; the rest wait it out.
    assert len(after_pause) == len(cases) - 2
    assert sum("paused" in (w.last_error or "") for w in waiting) == len(cases) - 3


def zendesk_signed(event: dict[str, Any], invocation: str, secret: str = "zd-signing",
                   at: datetime | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """A Zendesk webhook delivery, signed the way Zendesk signs (timestamp + body)."""
    body = json.dumps(event).encode()
    stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mac = hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    return body, {
        "X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        "X-Zendesk-Webhook-Invocation-Id": invocation,
        "Content-Type": "application/json",
    }


def test_a_zendesk_trigger_solving_or_reassigning_a_ticket_updates_the_case(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    zendesk = {"name": "zendesk", "kind": "zendesk", "base_url": "http://127.0.0.1:9",
               "email": "cb@district.example.org", "api_token": "t",
               "webhook_signing_secret": "zd-signing"}  # fmt: skip
    settings, engine = evaluated(db_url, district, tmp_path / "out", [zendesk])
    subject = sorted(open_cases(engine))[0]
    client = create_app(settings, engine).test_client()
    solved = {"external_id": subject, "status": "solved", "actor": "arivera@district.example.org"}

    body, headers = zendesk_signed(solved, "inv-1")
    first = client.post("/tools/zendesk/status", data=body, headers=headers)
    again = client.post("/tools/zendesk/status", data=body, headers=headers)  # Zendesk retries
    forged = zendesk_signed(solved, "inv-2", secret="not-the-secret")
    stale = zendesk_signed(solved, "inv-3", at=datetime.now(UTC) - timedelta(minutes=10))

    assert first.json == {"outcome": "closed", "duplicate": False}
    assert again.json == {"outcome": "closed", "duplicate": True}
    for refused in (forged, stale):
        assert client.post("/tools/zendesk/status", data=refused[0],
                           headers=refused[1]).status_code == 401  # fmt: skip
    assert subject not in open_cases(engine)

    with engine.connect() as conn:
        current = conn.execute(select(Case.assignee_id).where(Case.id == int(subject[5:]))).scalar()
    other = "dokafor" if current != "cm-okafor" else "arivera"
    moved = {"event": "assignee_changed", "external_id": subject, "status": "solved",
             "assignee_email": f"{other}@district.example.org",
             "actor": "lead@district.org"}  # fmt: skip
    body, headers = zendesk_signed(moved, "inv-4")
    assert client.post("/tools/zendesk/status", data=body, headers=headers).json == {
        "outcome": "reassigned", "duplicate": False}  # fmt: skip
    with engine.connect() as conn:
        history = conn.execute(select(CaseEvent.kind, CaseEvent.actor, CaseEvent.via)
                               .where(CaseEvent.via == "zendesk")
                               .order_by(CaseEvent.id)).all()  # fmt: skip
    assert history == [("closed", "arivera@district.example.org", "zendesk"),
                       ("reassigned", "lead@district.org", "zendesk")]  # fmt: skip


def test_a_tool_that_refuses_us_dead_letters_then_is_listed_and_re_driven_from_the_cli(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    hooks = webhook_destination(url)
    settings, engine = evaluated(db_url, district, tmp_path / "out", [hooks])
    cases = open_cases(engine)
    receiver.faults.append(Fault("/hooks", status=403, times=len(cases)))  # a revoked key

    report = run_dispatch(engine, settings)
    assert report.dead == len(cases) and receiver.tasks() == {}

    raw = raw_config_for(db_url, district, tmp_path / "out", destinations=[hooks], channels=[])
    config = write(tmp_path / "d.yaml", raw)
    listed = CliRunner().invoke(main, ["--config", str(config), "outbox", "list", "--dead"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("hooks") >= len(cases) and "403" in listed.output
    retried = CliRunner().invoke(main, ["--config", str(config), "outbox", "retry", "--status",
                                        "dead"])  # fmt: skip
    assert f"{len(cases)} item(s) queued again" in retried.output

    report = run_dispatch(engine, settings)  # the key was fixed at the tool's end
    assert report.delivered == len(cases) and set(receiver.tasks()) == cases


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_case_closed_in_a_tool_stays_closed_at_the_next_evaluation_unless_something_new_fires(
    db_url: str, district: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    url = f"{receiver.base_url}/hooks"
    settings, engine = evaluated(db_url, district, tmp_path / "out", [webhook_destination(url)])
    subject = sorted(open_cases(engine))[0]
    case_id = int(subject[5:])
    client = create_app(settings, engine).test_client()
    done = {"type": "task.status", "data": {"task_id": subject, "action": "completed"}}
    body, headers = signed_status(done, "evt-close")
    assert (
        client.post("/tools/hooks/status", data=body, headers=headers).json["outcome"] == "closed"
    )

    run_evaluate(engine, settings)  # the next night: the same reasons still fire

    with engine.connect() as conn:
        student = conn.execute(select(Case.student_id).where(Case.id == case_id)).scalar()
        rows = conn.execute(select(Case.id, Case.status).where(Case.student_id == student)).all()
    assert rows == [(case_id, "closed")]  # not reopened, and no second case either

    raw = raw_config_for(db_url, district, tmp_path / "out", channels=[],
                         destinations=[webhook_destination(url)])  # fmt: skip
    raw["rules"] = [*raw["rules"], {"id": "any-enrollment", "when": "enrolled_days >= 0",
                                    "reason": "watch_list", "severity": "low"}]  # fmt: skip
    run_evaluate(engine, parse_settings(raw, "t.yaml", district))  # a reason new to the case

    with engine.connect() as conn:
        rows = conn.execute(select(Case.id, Case.status, Case.reopen_count)
                            .where(Case.student_id == student)).all()  # fmt: skip
    assert rows == [(case_id, "open", 1)]
