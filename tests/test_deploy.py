"""The long-running commands as an operator runs them: `all-in-one`, `serve`, `scheduler`.

Each runs as a real subprocess on a temporary configuration, is asked over HTTP what a load
balancer would ask, and is stopped with SIGTERM as `docker stop` or systemd would. Deadlines
only keep a broken run from hanging CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

import tests.plugins.kinds  # noqa: F401  (registers the test-only kinds in this process)
from service.config import parse_settings
from service.pipeline import open_engine, run_evaluate, run_sync
from tests.conftest import ROOT, raw_config_for
from tests.test_outbox import CLI, PLUGIN_ENV, lines, sms_channel, write
from tools.synthetic import generate_district

DEADLINE = 90  # seconds; only stops a hang


class Running:
    """A casebridge subprocess whose output lines are collected as they come."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "--config", str(config), *args], cwd=ROOT, text=True,
            env={**os.environ, **PLUGIN_ENV, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._collect, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _collect(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.stdout + self.stderr)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader threads drain the pipes
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.output()}")
            found.extend(m for m in map(re.compile(pattern).search, self.stdout + self.stderr) if m)
            return bool(found)

        wait_for(f"a line matching {pattern!r}", seen)
        return found[0]

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except ValueError:
            return exc.code, {}


def access_lines(output: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in output:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "http.request":
            records.append(record)
    return records


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Whatever a test started is killed if the test fails before stopping it."""
    started: list[Running] = []
    yield started
    for r in started:
        r.kill()


def test_all_in_one_serves_delivers_and_stops_cleanly_on_sigterm(
    db_url: str, tmp_path: Path, running: list[Running]
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    generate_district(data, students=60, seed=21)
    raw = raw_config_for(
        db_url, data, out,
        channels=[sms_channel(delay_seconds=1.0)],  # slow texts: the stop comes mid-batch
        schedules={"heartbeat_seconds": 1, "dispatch_interval_seconds": 1},
    )  # fmt: skip
    config = write(tmp_path / "district.yaml", raw)
    settings = parse_settings(raw, str(config), tmp_path)
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    texts_queued = scalar(engine, "SELECT COUNT(*) FROM outbox WHERE kind = 'family_notice'")
    assert texts_queued >= 5, "the district should give the worker a batch of texts to send"

    aio = Running(config, "all-in-one", "--port", "0")
    running.append(aio)
    base = aio.wait_for_line(r"API on (http://127\.0\.0\.1:\d+)").group(1)

    status, health = get(f"{base}/healthz")
    assert (status, health["status"]) == (200, "ok")
    leader: dict[str, Any] = {}

    def scheduler_leads() -> bool:
        status, ready = get(f"{base}/readyz")
        leader.update(ready.get("checks", {}).get("scheduler") or {})
        return status == 200 and str(leader.get("leader", "")).endswith(f":{aio.proc.pid}")

    wait_for("/readyz with this process's scheduler heartbeat", scheduler_leads)
    assert leader["fresh"] is True
    wait_for("the worker's first text", lambda: len(lines(out / "test-sms.jsonl")) >= 1)

    assert aio.terminate() == 0, aio.output()

    assert "stopped cleanly" in aio.output()
    # The worker finished the text in hand and gave the rest of its batch back at once: nothing
    # left claimed (another worker need not wait out the lease), nothing half-sent, none lost.
    assert scalar(engine, "SELECT COUNT(*) FROM outbox WHERE claim_token IS NOT NULL") == 0
    assert scalar(engine, "SELECT COUNT(*) FROM outbox WHERE status = 'sending'") == 0
    sent = lines(out / "test-sms.jsonl")
    delivered = scalar(
        engine, "SELECT COUNT(*) FROM outbox WHERE kind = 'family_notice' AND status = 'delivered'"
    )
    assert len(sent) == delivered
    assert len({r["idempotency_key"] for r in sent}) == len(sent)
    waiting = scalar(
        engine, "SELECT COUNT(*) FROM outbox WHERE kind = 'family_notice' AND status = 'pending'"
    )
    assert waiting > 0, "the stop waited for the whole batch instead of the text in hand"
    assert lines(out / "tasks.jsonl"), "staff tasks went out through the same worker"
    requests = access_lines(aio.stdout)
    assert {"path": "/healthz", "status": 200} in [
        {"path": r["path"], "status": r["status"]} for r in requests
    ]
    engine.dispose()


def test_a_stop_that_cannot_finish_in_time_exits_1_instead_of_hanging(
    tmp_path: Path, running: list[Running]
) -> None:
    """A delivery stuck past --shutdown-timeout: the process still ends, and says why."""
    url = f"sqlite:///{tmp_path / 'cb.db'}"
    data, out = tmp_path / "data", tmp_path / "out"
    generate_district(data, students=30, seed=21)
    raw = raw_config_for(url, data, out, channels=[sms_channel(delay_seconds=600)])
    config = write(tmp_path / "district.yaml", raw)
    settings = parse_settings(raw, str(config), tmp_path)
    from service import db

    db.upgrade(url)
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)

    aio = Running(config, "all-in-one", "--port", "0", "--shutdown-timeout", "1")
    running.append(aio)
    aio.wait_for_line(r"API on http://")
    in_flight = "SELECT COUNT(*) FROM outbox WHERE status = 'sending' AND kind = 'family_notice'"
    wait_for("a text in flight", lambda: scalar(engine, in_flight) == 1)

    assert aio.terminate() == 1, aio.output()
    time.sleep(0.2)  # the reader threads drain the pipes
    assert "still running at the stop deadline: casebridge-worker" in aio.output()
    assert "stopped cleanly" not in aio.output()
    # The text in flight stays `sending`: the next worker reconciles it, never resends blindly.
    assert scalar(engine, in_flight) == 1
    engine.dispose()


@pytest.mark.parametrize("command", ["serve", "all-in-one"])
def test_the_api_refuses_an_old_schema_and_all_in_one_upgrade_fixes_it(
    tmp_path: Path, command: str, running: list[Running]
) -> None:
    empty = f"sqlite:///{tmp_path / 'new.db'}"
    config = write(tmp_path / "district.yaml", raw_config_for(empty, tmp_path, tmp_path / "out"))

    refused = Running(config, command, *(["--port", "0"] if command == "all-in-one" else []))
    running.append(refused)
    assert refused.proc.wait(timeout=DEADLINE) == 2
    time.sleep(0.2)  # the reader threads drain the pipes
    assert "casebridge db upgrade" in refused.output()
    assert "Listening at" not in refused.output() and "API on" not in refused.output()

    if command == "all-in-one":  # the evaluation path: migrate, then serve
        aio = Running(config, "all-in-one", "--port", "0", "--upgrade")
        running.append(aio)
        base = aio.wait_for_line(r"API on (http://127\.0\.0\.1:\d+)").group(1)
        assert get(f"{base}/healthz")[0] == 200
        assert aio.terminate() == 0, aio.output()


def test_serve_runs_gunicorn_logs_json_without_tokens_and_stops_on_sigterm(
    db_url: str, tmp_path: Path, running: list[Running]
) -> None:
    config = write(tmp_path / "district.yaml", raw_config_for(db_url, tmp_path, tmp_path / "out"))
    api = Running(config, "serve", "--bind", "127.0.0.1:0", "--workers", "1", "--threads", "2")
    running.append(api)
    base = api.wait_for_line(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)

    wait_for("/healthz", lambda: get(f"{base}/healthz")[0] == 200)
    assert get(f"{base}/readyz")[0] == 200  # schema current, no scheduler has led yet
    token = "k3Jd9sPq0ZxYt7LmNb2VcR5wQ8eH1uAf"
    get(f"{base}/unsubscribe/sms/{token}?utm=x")
    wait_for("three access log lines", lambda: len(access_lines(api.stdout)) >= 3)

    assert api.terminate() == 0, api.output()
    logged = {(r["method"], r["path"], r["status"]) for r in access_lines(api.stdout)}
    assert ("GET", "/healthz", 200) in logged
    assert ("GET", "/readyz", 200) in logged
    assert any(path == "/unsubscribe/sms/:token" for _, path, _ in logged), logged
    assert token not in api.output()


def test_serve_access_log_off_writes_no_request_lines(
    tmp_path: Path, running: list[Running]
) -> None:
    url = f"sqlite:///{tmp_path / 'cb.db'}"
    from service import db

    db.upgrade(url)
    config = write(tmp_path / "district.yaml", raw_config_for(url, tmp_path, tmp_path / "out"))
    api = Running(config, "serve", "--bind", "127.0.0.1:0", "--workers", "1",
                  env={"CASEBRIDGE_ACCESS_LOG": "off"})  # fmt: skip
    running.append(api)
    base = api.wait_for_line(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)
    wait_for("/healthz", lambda: get(f"{base}/healthz")[0] == 200)
    assert api.terminate() == 0, api.output()
    assert access_lines(api.stdout) == []


def test_the_scheduler_role_stops_on_sigterm(tmp_path: Path, running: list[Running]) -> None:
    url = f"sqlite:///{tmp_path / 'cb.db'}"
    from service import db

    db.upgrade(url)
    raw = raw_config_for(url, tmp_path, tmp_path / "out", schedules={"heartbeat_seconds": 0.5})
    config = write(tmp_path / "district.yaml", raw)
    engine = open_engine(parse_settings(raw, str(config), tmp_path))
    scheduler = Running(config, "scheduler")
    running.append(scheduler)
    wait_for(
        "the scheduler's heartbeat",
        lambda: scalar(engine, "SELECT holder FROM scheduler_heartbeat") is not None,
    )
    assert scheduler.terminate() == 0, scheduler.output()
    engine.dispose()


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **headers},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read() or b"{}")


def test_all_in_one_on_the_demo_data_takes_a_referral_and_its_task_reaches_the_tool(
    db_url: str, tmp_path: Path, running: list[Running]
) -> None:
    """Issue 10's must-show: a referral posted with a valid token opens a case whose task goes
    out; without a token or with the wrong scope the same post is a 401 / 403 problem."""
    if not db_url.startswith("sqlite"):
        pytest.skip("all-in-one is the embedded SQLite setup")
    from service.api.auth import create_token

    data, out = ROOT / "config" / "sample-data", tmp_path / "out"
    raw = raw_config_for(db_url, data, out, schedules={"dispatch_interval_seconds": 1})
    config = write(tmp_path / "district.yaml", raw)
    settings = parse_settings(raw, str(config), data)
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    with engine.connect() as conn:  # a student without a case yet
        student, local_id = conn.execute(text(
            "SELECT student_id, local_id FROM students WHERE active AND local_id IS NOT NULL AND "
            "student_id NOT IN (SELECT student_id FROM cases) ORDER BY student_id LIMIT 1"
        )).one()  # fmt: skip
    _, form_token = create_token(engine, "referral form", ["referrals:create"])
    _, reader = create_token(engine, "counselor", ["cases:read"])

    aio = Running(config, "all-in-one", "--port", "0")
    running.append(aio)
    base = aio.wait_for_line(r"API on (http://127\.0\.0\.1:\d+)").group(1)
    body = {
        "referrer": {"name": "Dana Whitfield", "role": "teacher", "relationship": "math teacher"},
        "student": {"local_id": local_id}, "concerns": ["basic_needs"],
        "note": "Says there is no food at home.", "urgency": "soon",
        "family_contact_consent": True,
    }  # fmt: skip
    missing = post_json(f"{base}/referrals", body, {})
    wrong = post_json(f"{base}/referrals", body, {"Authorization": f"Bearer {reader}"})
    created = post_json(f"{base}/referrals", body, {"Authorization": f"Bearer {form_token}"})

    assert missing[:2] == (401, "application/problem+json")
    assert wrong[:2] == (403, "application/problem+json")
    assert created[0] == 201 and created[2]["status"] == "received"

    def task_delivered() -> bool:
        case_id = scalar(engine, f"SELECT id FROM cases WHERE student_id = '{student}'")
        return case_id is not None and any(
            r.get("case_id") == case_id or f"case-{case_id}:" in r.get("idempotency_key", "")
            for r in lines(out / "tasks.jsonl")
        )

    wait_for("the referral's case task in the staff tool", task_delivered)
    assert aio.terminate() == 0, aio.output()
    assert scalar(engine, "SELECT COUNT(*) FROM person_referrals WHERE case_id IS NULL") == 0
    engine.dispose()
