"""Families by text: the real `twilio` library against a local Twilio-shaped server, and the
app's webhooks over real HTTP. Every assertion is about what reached a phone or what the
database now says about a family's consent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

from service.api import create_app
from service.cli import main
from service.config import Settings
from service.models import ConsentEvent, ContactPreference, InboundMessage, MessageStatus
from service.pipeline import run_dispatch, run_evaluate, run_sync
from service.ratelimit import take_slot
from tests.builders import TinyDistrict
from tests.conftest import ROOT, raw_config_for
from tests.fixtures.http_server import Fault
from tests.fixtures.twilio_server import ACCOUNT_SID, AUTH_TOKEN, TwilioServer
from tests.test_outbox import items, lines

PUBLIC = "https://casebridge.district.example.org"
ROSA, LUIS = "+12125550101", "+12125550102"


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    server = TwilioServer()
    server.start()
    yield server
    server.stop()


def twilio_channel(server: TwilioServer, **options: Any) -> dict[str, Any]:
    return {
        "name": "sms", "kind": "twilio_sms", "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN, "from_number": "+15005550006", "public_url": PUBLIC,
        "api_base_url": server.base_url, "rate_per_second": 200, "timeout_seconds": 5,
        "district_contact": "(212) 555-0199", **options,
    }  # fmt: skip


EMAIL_FILE = {"name": "email", "kind": "file", "medium": "email", "path": "family-email.jsonl"}


def family(root: Path, planted: bool = False) -> tuple[TinyDistrict, list[date]]:
    """Ana, 9 absences; Rosa reads Spanish, Luis English; both have a phone and an email."""
    d = TinyDistrict(root)
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", guardians=("g1", "g2"), given="Ana")
    d.guardian("g1", ("s1",), language="es", sms="(212) 555-0101", email="rosa@example.org")
    d.guardian("g2", ("s1",), sms="(212) 555-0102", email="luis@example.org", given="Luis")
    for day in days[2:11]:
        d.absent("1001", day)
    if planted:  # what must never reach a family: a grade, an incident
        d.grade("s1", "Mathematics", 41.5, "F")
        d.incident("inc-1", "1001", days[30], behavior="FIGHT")
    d.write()
    return d, days


def ready(
    engine: Engine, make_settings: Callable[..., Settings], root: Path, channels: list[Any],
    planted: bool = False, **overrides: Any,
) -> tuple[Settings, TinyDistrict, list[date]]:  # fmt: skip
    d, days = family(root, planted)
    settings = make_settings(d.root, channels=channels, **overrides)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    return settings, d, days


def due_now(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))


def notices(engine: Engine) -> dict[str, Any]:
    return {i.contact_id: i for i in items(engine, "family_notice")}


def preference(engine: Engine, contact: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(ContactPreference.__table__).where(ContactPreference.contact_id == contact)
        ).mappings().first()  # fmt: skip


# -- sending ---------------------------------------------------------------------------------


def test_each_family_gets_one_text_in_its_language_and_never_the_reason(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio), EMAIL_FILE],
        planted=True,
    )  # fmt: skip
    report = run_dispatch(engine, settings)

    [rosa] = twilio.sent_to(ROSA)
    [luis] = twilio.sent_to(LUIS)
    assert "Recursos gratuitos" in rosa.body and "Responda STOP" in rosa.body
    assert "Free resources" in luis.body
    for body in (rosa.body, luis.body):
        # No grade, absence count or incident: once phone numbers are taken out, no digit and
        # no word about why is left.
        assert not re.search(r"\d", re.sub(r"\+\d{11}", "", body)), body
        assert not re.search(r"absen|ausen|fight|suspen|grade|math|41", body, re.IGNORECASE)
    by_contact = notices(engine)
    assert by_contact["g1"].result["language"] == "es"
    assert by_contact["g1"].external_id == rosa.sid  # the message id Twilio issued
    assert by_contact["g2"].result["segments"] <= 2
    # Accented Spanish descriptions would make it UCS-2 and four segments: they are left out.
    assert (by_contact["g1"].result["segments"], by_contact["g1"].result["encoding"]) == (
        2, "GSM-7",
    )  # fmt: skip
    assert len(by_contact["g2"].result["resource_ids"]) == 3  # all three fit in two segments
    assert report.by_target["sms"] == 2
    assert lines(settings.resolve(settings.output_dir) / "family-email.jsonl") == []


def test_a_text_stays_within_the_segment_limit_by_naming_fewer_resources(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio)],
        policy={"sending_window": None, "sms_max_segments": 1},
    )  # fmt: skip
    run_dispatch(engine, settings)

    # Two resources would take two segments: one is named. The one left out is not counted as
    # sent, so a later message may still offer it.
    assert len(twilio.sent_to(LUIS)) == 1
    assert len(notices(engine)["g2"].result["resource_ids"]) == 1


def test_an_invalid_number_is_remembered_and_the_notice_goes_by_email(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    twilio.state.fail_numbers[LUIS] = 21211
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio), EMAIL_FILE]
    )
    run_dispatch(engine, settings)

    assert twilio.sent_to(LUIS) == [] and len(twilio.sent_to(ROSA)) == 1
    emails = lines(settings.resolve(settings.output_dir) / "family-email.jsonl")
    assert [m["message"]["to"] for m in emails] == ["luis@example.org"]
    assert notices(engine)["g2"].status == "delivered"
    assert preference(engine, "g2")["sms_unusable_phone"] == LUIS
    attempts = twilio.state.create_attempts

    # The next notice goes straight to email: Twilio is not asked about that number again.
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET status = 'pending', idempotency_key = "
                          "idempotency_key || '-again' WHERE contact_id = 'g2'"))  # fmt: skip
        conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))
    again = make_settings(
        settings.base_dir, channels=[twilio_channel(twilio), EMAIL_FILE],
        policy={"sending_window": None, "resource_repeat_days": 0},
    )  # fmt: skip
    run_dispatch(engine, again)
    assert twilio.state.create_attempts == attempts
    assert len(lines(settings.resolve(settings.output_dir) / "family-email.jsonl")) == 2


def test_a_carrier_opt_out_is_recorded_and_never_retried(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    twilio.state.fail_numbers[LUIS] = 21610
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [twilio_channel(twilio)])
    run_dispatch(engine, settings)
    due_now(engine)
    run_dispatch(engine, settings)

    luis = notices(engine)["g2"]
    assert (luis.status, luis.reason, luis.attempts) == ("suppressed", "opted_out", 1)
    assert "21610" in (luis.last_error or "")
    assert preference(engine, "g2")["all_opted_out_at"] is not None  # a STOP stops everything
    with engine.connect() as conn:
        [event] = conn.execute(select(ConsentEvent.__table__)).mappings().all()
    assert (event["contact_id"], event["via"], event["evidence"]["provider_code"]) == (
        "g2", "carrier_opt_out", "21610",
    )  # fmt: skip
    assert twilio.state.create_attempts == 2  # Rosa's text, and Luis's single refused one


def test_too_many_requests_is_retried_later_and_sent_once(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    twilio.faults.append(Fault("Messages.json", status=429, times=2))
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [twilio_channel(twilio)])
    first = run_dispatch(engine, settings)
    assert first.retried == 2 and twilio.messages == []
    due_now(engine)
    second = run_dispatch(engine, settings)

    assert second.delivered == 2
    assert sorted(m.to for m in twilio.messages) == [ROSA, LUIS]


def test_a_timeout_after_twilio_accepted_is_reconciled_not_resent(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    # Twilio stores the message, then answers too late for our timeout.
    twilio.faults.append(Fault("Messages.json", kind="delay", delay=2.0, times=1))
    channel = twilio_channel(twilio, timeout_seconds=0.5)
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [channel])
    run_dispatch(engine, settings)
    assert sorted(i.status for i in notices(engine).values()) == ["delivered", "sending"]
    while len(twilio.messages) < 2:  # the slow request still lands at Twilio
        threading.Event().wait(0.05)

    due_now(engine)
    report = run_dispatch(engine, settings)

    assert report.reconciled == 1 and report.delivered == 1
    assert len(twilio.sent_to(ROSA)) == 1 and len(twilio.sent_to(LUIS)) == 1
    assert {i.status for i in notices(engine).values()} == {"delivered"}


def test_sigkill_after_twilio_accepted_sends_no_second_text(
    db_url: str, tmp_path: Path, twilio: TwilioServer
) -> None:
    d, days = family(tmp_path / "data")
    out = tmp_path / "out"
    overrides = {"channels": [twilio_channel(twilio)], "outbox": {"lease_seconds": 1}}
    raw = raw_config_for(db_url, d.root, out, **overrides)
    config = tmp_path / "district.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    from service.config import parse_settings
    from service.pipeline import open_engine

    settings = parse_settings(raw, str(config), d.root)
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])

    worker: dict[str, subprocess.Popen[str]] = {}
    killed = threading.Event()

    def power_cut(_message: Any) -> None:  # Twilio stored it; the sender dies before the 201
        if not killed.is_set():
            killed.set()
            os.kill(worker["p"].pid, signal.SIGKILL)

    twilio.state.after_store = power_cut
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "service.cli", "--config", str(config), "dispatch"]
    worker["p"] = subprocess.Popen(cmd, env=env, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    worker["p"].communicate(timeout=120)
    assert worker["p"].returncode == -9
    assert [i.status for i in items(engine, "family_notice")].count("sending") == 1
    assert len(twilio.messages) == 1

    threading.Event().wait(1.2)  # the dead worker's lease runs out
    twilio.state.after_store = None
    finished = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert len(twilio.sent_to(ROSA)) == 1 and len(twilio.sent_to(LUIS)) == 1
    assert {i.status for i in items(engine, "family_notice")} == {"delivered"}


def test_workers_share_one_send_rate_per_sender(engine: Engine) -> None:
    # Five slots taken at the same instant (by any workers) are spread 0.2 s apart at 5/s.
    waits = [take_slot(engine, "twilio:AC1:+1500", 5.0, clock=lambda: 1000.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert take_slot(engine, "twilio:AC1:+1600", 5.0, clock=lambda: 1000.0) == 0.0
    # A sender idle for a while starts again at once.
    assert take_slot(engine, "twilio:AC1:+1500", 5.0, clock=lambda: 2000.0) == 0.0


# -- webhooks ---------------------------------------------------------------------------------


@pytest.fixture
def app_url(engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
            twilio: TwilioServer) -> Iterator[tuple[str, Settings]]:  # fmt: skip
    """The app on a real local port, configured with the Twilio channel."""
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio), EMAIL_FILE]
    )
    server = make_server("127.0.0.1", 0, create_app(settings, engine), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    twilio.state.callback_base = url
    yield url, settings
    server.shutdown()


def inbound(app: str, body: str, sid: str, sender: str = LUIS, token: str = AUTH_TOKEN) -> Any:
    import requests

    path = "/webhooks/twilio/sms/inbound"
    params = {"MessageSid": sid, "From": sender, "To": "+15005550006", "Body": body,
              "AccountSid": ACCOUNT_SID}  # fmt: skip
    signature = RequestValidator(token).compute_signature(PUBLIC + path, params)
    return requests.post(app + path, data=params, headers={"X-Twilio-Signature": signature},
                         timeout=10)  # fmt: skip


def test_stop_then_a_new_referral_sends_nothing_on_any_channel(
    app_url: tuple[str, Settings], engine: Engine, twilio: TwilioServer, tmp_path: Path
) -> None:
    app, settings = app_url
    answer = inbound(app, "STOP", "SM" + "1" * 32)
    assert answer.status_code == 200
    assert "<Message>" not in answer.text  # Twilio's own opt-out reply is the one confirmation
    pref = preference(engine, "g2")
    assert pref["all_opted_out_at"] is not None
    assert pref["evidence"]["text"] == "STOP" and pref["evidence"]["message_sid"] == "SM" + "1" * 32

    run_dispatch(engine, settings)  # the notice queued by the referral
    # A new referral: Ana is suspended, the case gets a new revision and new notices.
    _, days = family(tmp_path / "data", planted=True)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[45])
    run_dispatch(engine, settings)

    assert twilio.sent_to(LUIS) == []
    emails = lines(settings.resolve(settings.output_dir) / "family-email.jsonl")
    assert [m for m in emails if m["message"]["to"] == "luis@example.org"] == []
    luis = [i for i in items(engine, "family_notice") if i.contact_id == "g2"]
    assert len(luis) >= 2 and {(i.status, i.reason) for i in luis} == {("suppressed", "opted_out")}
    assert len(twilio.sent_to(ROSA)) >= 1  # the other guardian still hears from us


def test_plain_language_stop_in_spanish_confirms_once_and_start_resumes(
    app_url: tuple[str, Settings], engine: Engine
) -> None:
    app, _ = app_url
    first = inbound(app, "Por favor para de enviar mensajes", "SM" + "2" * 32, sender=ROSA)
    retried = inbound(app, "Por favor para de enviar mensajes", "SM" + "2" * 32, sender=ROSA)
    again = inbound(app, "para de enviar", "SM" + "3" * 32, sender=ROSA)

    assert "no recibirá más mensajes" in first.text  # in her language
    assert "<Message>" not in retried.text and "<Message>" not in again.text  # one at most
    assert preference(engine, "g1")["all_opted_out_at"] is not None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM inbound_messages")).scalar() == 2

    inbound(app, "START", "SM" + "4" * 32, sender=ROSA)
    pref = preference(engine, "g1")
    assert pref["all_opted_out_at"] is None and pref["sms_opted_out_at"] is None
    with engine.connect() as conn:
        actions = conn.execute(
            select(ConsentEvent.action).where(ConsentEvent.contact_id == "g1")
            .order_by(ConsentEvent.id)
        ).scalars().all()  # fmt: skip
    assert actions == ["opt_out", "opt_out", "opt_in"]  # every request kept as evidence


def test_help_answers_with_the_district_contact(app_url: tuple[str, Settings]) -> None:
    app, _ = app_url
    answer = inbound(app, "HELP", "SM" + "5" * 32)
    assert "(212) 555-0199" in answer.text and "Reply STOP" in answer.text


def test_a_forged_signature_is_rejected_and_changes_nothing(
    app_url: tuple[str, Settings], engine: Engine
) -> None:
    app, _ = app_url
    answer = inbound(app, "STOP", "SM" + "6" * 32, token="not-the-auth-token")
    assert answer.status_code == 403
    assert preference(engine, "g2") is None
    with engine.connect() as conn:
        assert conn.execute(select(InboundMessage.provider_id)).first() is None


def test_status_callbacks_only_move_forward_through_duplicates_and_reordering(
    app_url: tuple[str, Settings], engine: Engine, twilio: TwilioServer
) -> None:
    _, settings = app_url
    twilio.state.callback_statuses = ()  # the test posts them, in its own order
    run_dispatch(engine, settings)
    message = twilio.sent_to(LUIS)[0]

    for status in ("delivered", "sent", "queued", "delivered"):  # late, stale, duplicate
        assert twilio.post_callback(message, status) == 204

    with engine.connect() as conn:
        row = conn.execute(
            select(MessageStatus.status, MessageStatus.rank)
            .where(MessageStatus.provider_id == message.sid)
        ).one()  # fmt: skip
    assert row.status == "delivered"


def test_a_carrier_opt_out_reported_by_a_status_callback_stops_texts(
    app_url: tuple[str, Settings], engine: Engine, twilio: TwilioServer
) -> None:
    _, settings = app_url
    twilio.state.callback_statuses = ()
    run_dispatch(engine, settings)
    message = twilio.sent_to(LUIS)[0]
    assert preference(engine, "g2") is None or preference(engine, "g2")["sms_opted_out_at"] is None

    assert twilio.post_callback(message, "undelivered", error_code=21610) == 204

    pref = preference(engine, "g2")
    assert pref["all_opted_out_at"] is not None
    assert pref["evidence"]["provider_code"] == "21610"
    assert pref["evidence"]["message_sid"] == message.sid


def test_status_callbacks_posted_by_twilio_after_a_send_are_recorded(
    app_url: tuple[str, Settings], engine: Engine, twilio: TwilioServer
) -> None:
    _, settings = app_url
    run_dispatch(engine, settings)
    while len(twilio.state.callbacks_posted) < 4:  # sent + delivered for each of two texts
        threading.Event().wait(0.05)
    assert {code for _, _, code in twilio.state.callbacks_posted} == {204}
    with engine.connect() as conn:
        states = conn.execute(select(MessageStatus.status)).scalars().all()
    assert states == ["delivered", "delivered"]


# -- configuration -----------------------------------------------------------------------------


def test_check_config_warns_when_a_translation_triples_the_segments(tmp_path: Path) -> None:
    raw = raw_config_for("sqlite://", tmp_path, tmp_path)
    raw["templates"]["family_notice"]["es"] = (
        "{{ school }}: ¿Cómo está? Queremos apoyar a {{ student_first_name }} y a su familia "
        "con recursos gratuitos, cerca de usted y sin costo alguno, porque nos importa: "
        "{{ resources_text }}. Responda STOP para no recibir más mensajes de texto."
    )
    config = tmp_path / "district.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "templates.family_notice.es" in result.output
    assert "UCS-2" in result.output


def test_a_twilio_channel_needs_exactly_one_sender(tmp_path: Path) -> None:
    raw = raw_config_for("sqlite://", tmp_path, tmp_path)
    raw["channels"] = [{"name": "sms", "kind": "twilio_sms", "account_sid": "AC1",
                        "auth_token": "${TWILIO_AUTH_TOKEN:-x}", "public_url": PUBLIC}]  # fmt: skip
    config = tmp_path / "district.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    assert result.exit_code == 2
    assert "exactly one of messaging_service_sid and from_number" in result.output


def test_a_text_that_cannot_name_every_resource_links_a_page_with_all_of_them(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> None:
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio)],
        policy={"sending_window": None, "sms_max_segments": 2},
        resource_page={"public_url": "https://cb.example.org", "expires_days": 30},
    )  # fmt: skip
    run_dispatch(engine, settings)

    rosa = twilio.sent_to(ROSA)[0].body  # Spanish: one resource fits in two segments
    found = re.search(r"Otros recursos: https://cb\.example\.org(/r/[\w-]+)$", rosa)
    assert found, rosa
    client = create_app(settings, engine).test_client()
    page = client.get(found.group(1))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Recursos gratuitos cerca de usted" in html
    assert "Ride to School program" in html and "Northside Food Pantry" in html
    assert "alimentos gratis martes y sábado" in html  # her language, accents and all
    assert "Ana" not in html and "Lopez" not in html  # no student, no family

    with engine.begin() as conn:  # a month later
        conn.execute(text("UPDATE resource_links SET expires_at = created_at"))
    assert client.get(found.group(1)).status_code == 410
    assert client.get("/r/not-a-token").status_code == 404
