"""Logs a district can ship: JSON lines for the service roles, one run_id per unit of work,
the case an item is about, and no address or phone number even when a library logs one."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from sqlalchemy import Engine

import tests.plugins.kinds  # noqa: F401  (registers test_recording, as a plugin would)
from service import logging as cb_logging
from service.api import create_app
from service.cli import main
from tests.conftest import settings_for, write_config
from tests.test_privacy import tiny_district


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def failing_tasks_config(db_url: str, tmp_path: Path, **overrides: Any) -> Path:
    """The tiny district (three students, three cases) with a staff tool that fails every task,
    so each outbox item logs an error while it is being delivered."""
    tiny_district(tmp_path / "data")
    return write_config(
        tmp_path / "district.yaml", db_url, tmp_path / "data", tmp_path / "out",
        destinations=[{"name": "tasks", "kind": "test_recording", "fail_cases": [1, 2, 3]}],
        channels=[], templates=None, **overrides,
    )  # fmt: skip


def test_every_line_of_a_cli_run_has_its_run_id_and_an_item_line_its_case(
    db_url: str, tmp_path: Path
) -> None:
    config = failing_tasks_config(db_url, tmp_path)

    result = cli(config, "--log-level", "DEBUG", "--log-json", "run")

    lines = json_lines(result.stderr)
    assert lines, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        json.dumps(line) for line in lines
    ], "every log line is one JSON object"
    assert {line.get("run_id") for line in lines} != {None}
    assert len({line["run_id"] for line in lines}) == 1, "one command, one run_id"
    assert {line["command"] for line in lines} == {"run"}
    failures = [line for line in lines if line["event"] == "outbox.unexpected_error"]
    assert sorted(line["case_id"] for line in failures) == [1, 2, 3]
    assert all(isinstance(line["outbox_id"], int) for line in failures)
    # Lines that are not about one item carry no case.
    finished = next(line for line in lines if line["event"] == "evaluate.finished")
    assert "case_id" not in finished


def test_service_roles_log_json_by_default_and_each_worker_pass_is_a_run(
    db_url: str, tmp_path: Path
) -> None:
    # A failed task is due again within a second: the next pass retries it.
    config = failing_tasks_config(db_url, tmp_path, outbox={"base_delay_seconds": 0.5})
    assert cli(config, "sync").exit_code == 0
    interactive = cli(config, "--log-level", "INFO", "evaluate")
    assert interactive.stderr.strip() and not json_lines(interactive.stderr)  # readable

    started = json_lines(cli(config, "worker", "--once").stderr)  # INFO and JSON by default

    assert started and all(line["run_id"] and line["command"] == "worker" for line in started)
    # The lines of the delivery pass (not the start-up's schema check) are the pass's run.
    first = [line for line in started if "job" in line]
    assert first and {line["job"] for line in first} == {"dispatch"}
    assert sorted({line["case_id"] for line in first}) == [1, 2, 3]
    time.sleep(1.0)
    second = [x for x in json_lines(cli(config, "worker", "--once").stderr) if "job" in x]
    assert second and len({line["run_id"] for line in first}) == 1
    assert {line["run_id"] for line in first}.isdisjoint({line["run_id"] for line in second})


def test_an_api_request_logs_under_the_run_id_it_returns(
    db_url: str, tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_district(tmp_path / "data")
    twilio = {"name": "sms", "kind": "twilio_sms", "account_sid": "AC" + "0" * 32,
              "auth_token": "t" * 32, "from_number": "+15005550006",
              "public_url": "https://casebridge.example.org"}  # fmt: skip
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out", channels=[twilio])
    cb_logging.configure("INFO", json=True)
    client = create_app(settings, engine).test_client()

    unsigned = client.post("/webhooks/twilio/sms/inbound", data={"From": "+12125550101"})
    other = client.get("/healthz")

    assert unsigned.status_code == 403
    [line] = [
        x for x in json_lines(capsys.readouterr().err) if x["event"] == "webhook.bad_signature"
    ]
    assert line["run_id"] == unsigned.headers["X-Request-Id"]
    assert line["request"] == "POST /webhooks/twilio/<name>/inbound"
    assert other.headers["X-Request-Id"] != unsigned.headers["X-Request-Id"]


def test_addresses_are_scrubbed_from_our_lines_and_from_any_librarys(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cb_logging.configure("DEBUG", json=True)
    log = structlog.get_logger("service.example")

    log.info(
        "contact.checked", name="Ana Lopez", birth_date="2012-03-17", contact_id="g1",
        detail="call (212) 555-0101 or ana.lopez@example.org", guardian_phone="2125550101",
    )  # fmt: skip
    logging.getLogger("somelib.http").debug(
        "GET /messages?To=%s&Email=%s", "%2B12125550101", "rosa%40example.org"
    )
    logging.getLogger("somelib.http").info("sent to +12125550102 and luis@example.org")

    err = capsys.readouterr().err
    ours, lib_debug, lib_info = json_lines(err)
    assert ours["name"] == ours["birth_date"] == ours["guardian_phone"] == "[redacted]"
    assert ours["contact_id"] == "g1"  # ids stay: they are how a person finds the record
    assert ours["detail"] == "call [redacted] or [redacted]"
    assert lib_debug["event"] == "GET /messages?To=[redacted]&Email=[redacted]"
    assert lib_info["event"] == "sent to [redacted] and [redacted]"
    # Scrubbed as the record is created: every handler sees the clean text, pytest's too.
    for needle in ("555-0101", "5550101", "5550102", "example.org", "Ana Lopez", "2012-03-17"):
        assert needle not in err and needle not in caplog.text, needle
    # Dates, times, ids and counts are not phone numbers.
    assert cb_logging.scrub("slot 2026-11-20T08:00:00+00:00 item 1234567 took 1763630400.5") == (
        "slot 2026-11-20T08:00:00+00:00 item 1234567 took 1763630400.5"
    )
