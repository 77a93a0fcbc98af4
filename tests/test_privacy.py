"""FERPA/privacy: logs carry no PII, family messages carry no reasons, every disclosure is logged.

The whole pipeline runs with DEBUG logging. Logs must hold no student or guardian name, email
or phone number. A family text or email names the school and free resources, never why the
student was referred (phones and inboxes are shared). Every delivered outbox item leaves a
34 CFR 99.32 disclosure record.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import structlog
from builders import TinyDistrict
from conftest import example_config, settings_for
from sqlalchemy import select

from service import logging as cb_logging
from service.config import Settings
from service.models import Disclosure, OutboxItem, Referral
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tools.synthetic import generate_district

FORBIDDEN_WORDS = re.compile(
    r"absent|absence|attendance|grade|failing|suspension|discipline|behavior"
    r"|ausencia|calificaci[oó]n|suspensi[oó]n",
    re.IGNORECASE,
)
PERCENTAGE = re.compile(r"\d\s*%|percent|por ?ciento", re.IGNORECASE)
STOP_LINE = {"en": "Reply STOP to opt out.", "es": "Responda STOP para no recibir mensajes."}
GUARDIAN_ROLES = {"parent", "guardian", "relatedContact"}


@dataclass
class Pii:
    """Everything that identifies a student or guardian in the input data."""

    names: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)

    def add(self, given: str, family: str, email: str, *phones: str) -> None:
        self.names |= {n for n in (given, family) if n}
        if email:
            self.emails.add(email)
        for phone in phones:
            if phone:
                self.phones.add(phone)
                self.phones.add(re.sub(r"\D", "", phone)[-10:])  # national digits too


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # configure() bound pytest's capture stream; later tests must not


def debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    """What `--log-level DEBUG` does; call it in the test body, while capfd captures."""
    # configure() calls logging.basicConfig(level=DEBUG), a no-op under pytest (the root
    # logger already has handlers): set that level here and read the records from caplog.
    caplog.set_level(logging.DEBUG)
    cb_logging.configure("DEBUG")


def run_pipeline(settings: Settings) -> None:
    engine = open_engine(settings)
    try:
        reports = run_sync(engine, settings)
        assert not [r.error for r in reports if r.error]
        evaluation = run_evaluate(engine, settings)
        assert evaluation.cases_opened > 0
        dispatch = run_dispatch(engine, settings)
        assert dispatch.delivered > 0 and dispatch.dead == 0
    finally:
        engine.dispose()


def all_logs(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    out, err = capfd.readouterr()
    return "\n".join((out, err, caplog.text))


def assert_no_pii_in(logs: str, pii: Pii) -> None:
    assert "evaluate.finished" in logs, "the pipeline's logs were not captured"
    leaked = sorted(n for n in pii.names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", logs))
    leaked += sorted(v for v in pii.emails | pii.phones if v in logs)
    assert not leaked, f"personal data in the logs: {leaked}"


def family_messages(out_dir: Path) -> list[dict[str, Any]]:
    records = []
    for medium in ("sms", "email"):
        path = out_dir / f"family-{medium}.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                records.append(json.loads(line))
    return records


def assert_family_messages_reveal_no_reason(settings: Settings, out_dir: Path) -> None:
    records = family_messages(out_dir)
    assert {r["medium"] for r in records} == {"sms", "email"}, "need both media to check"
    resource_names = [r.name for r in settings.resources]
    for record in records:
        message = record["message"]
        readable = " ".join(str(message.get(k, "")) for k in ("subject", "body"))
        whole = json.dumps(record, ensure_ascii=False)
        for text_ in (readable, whole):
            assert not FORBIDDEN_WORDS.search(text_), f"reason revealed to family: {text_}"
            assert not PERCENTAGE.search(text_), f"a percentage sent to family: {text_}"
        assert any(name in message["body"] for name in resource_names), message["body"]
        if record["medium"] == "sms":
            stop = STOP_LINE.get(message["language"], STOP_LINE["en"])
            assert message["body"].rstrip().endswith(stop), message["body"]


def assert_one_disclosure_per_delivery(settings: Settings) -> None:
    engine = open_engine(settings, upgrade=False)
    try:
        with engine.connect() as conn:
            delivered = conn.execute(
                select(OutboxItem.id).where(OutboxItem.status == "delivered")
            ).scalars()
            delivered_ids = sorted(delivered)
            rows = conn.execute(select(Disclosure.outbox_id, Disclosure.basis)).all()
            referrals = conn.execute(select(Referral.reason)).scalars().all()
    finally:
        engine.dispose()
    assert referrals, "no referral: nothing to keep private"
    assert delivered_ids
    assert sorted(r.outbox_id for r in rows) == delivered_ids
    assert all("34 CFR" in r.basis for r in rows), [r.basis for r in rows]


def tiny_district(root: Path) -> tuple[TinyDistrict, Pii]:
    """Three students, one per reason, each with a guardian in a different language/medium."""
    d = TinyDistrict(root)
    d.school("sch-1", "101", "Lincoln High")
    days = d.school_days("sch-1", 60)
    absent = d.student("stu-1", "1001", guardians=("gua-1",), given="Xiomara", family="Quintanilla")
    failing = d.student(
        "stu-2", "1002", guardians=("gua-2",), given="Bartholomew", family="Fairweather"
    )
    suspended = d.student(
        "stu-3", "1003", guardians=("gua-3",), given="Evangelina", family="Castellanos"
    )
    absent.email = "xiomara.quintanilla@students.example.org"
    for day in days[10:22]:  # 12 of 60 days: 20% absent
        d.absent("1001", day)
    d.grade("stu-2", "Mathematics", 41.0, "F")
    d.grade("stu-3", "Mathematics", 88.0, "B")
    d.incident("inc-1", "1003", date(2026, 11, 2), action="OSS", behavior="FIGHT")
    g1 = d.guardian("gua-1", ("stu-1",), sms="+12025550142", given="Thaddeus", family="Okonkwo")
    g2 = d.guardian(
        "gua-2",
        ("stu-2",),
        language="es",
        email="penelope.fairweather@example.net",
        given="Penélope",
        family="Fairweather",
    )
    g3 = d.guardian(
        "gua-3",
        ("stu-3",),
        language="es",
        sms="+13125550177",
        email="rigoberto.castellanos@example.net",
        given="Rigoberto",
        family="Castellanos",
    )
    g1.phone = "+12025550199"
    d.write()
    pii = Pii()
    for p in (absent, failing, suspended, g1, g2, g3):
        pii.add(p.given, p.family, p.email, p.sms, p.phone)
    return d, pii


def generated_pii(data: Path) -> Pii:
    ors = data / "oneroster"
    with (ors / "roles.csv").open(encoding="utf-8", newline="") as fh:
        roles = {r["userSourcedId"]: r["role"] for r in csv.DictReader(fh)}
    pii = Pii()
    with (ors / "users.csv").open(encoding="utf-8", newline="") as fh:
        for u in csv.DictReader(fh):
            if roles.get(u["sourcedId"]) in GUARDIAN_ROLES | {"student"}:
                pii.add(u["givenName"], u["familyName"], u["email"], u["sms"], u["phone"])
                if u.get("preferredGivenName"):
                    pii.names.add(u["preferredGivenName"])
    return pii


def test_tiny_district_keeps_pii_out_of_logs_and_reasons_out_of_messages(
    db_url: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, pii = tiny_district(tmp_path / "data")
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    debug_logging(caplog)

    run_pipeline(settings)

    assert_no_pii_in(all_logs(capfd, caplog), pii)
    assert_family_messages_reveal_no_reason(settings, tmp_path / "out")
    assert_one_disclosure_per_delivery(settings)
    # The staff task, unlike the family message, does carry the reasons.
    tasks = (tmp_path / "out" / "tasks.jsonl").read_text(encoding="utf-8")
    for reason in ("chronic_absence", "course_failure", "suspension"):
        assert reason in tasks


def test_generated_district_keeps_pii_out_of_logs_and_reasons_out_of_messages(
    db_url: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 40 students, seed 2: guardians reached by SMS and email, in English and Spanish; a few
    # malformed rows exercise the quarantine path's logging too.
    generate_district(tmp_path / "data", students=40, seed=2, bad_rows=6)
    pii = generated_pii(tmp_path / "data")
    assert len(pii.names) > 20 and pii.emails and pii.phones
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    debug_logging(caplog)

    run_pipeline(settings)

    assert_no_pii_in(all_logs(capfd, caplog), pii)
    assert_family_messages_reveal_no_reason(settings, tmp_path / "out")
    assert_one_disclosure_per_delivery(settings)
    languages = {m["message"]["language"] for m in family_messages(tmp_path / "out")}
    assert languages == {"en", "es"}


def test_shipped_templates_are_checked_in_every_language() -> None:
    # Guard for the STOP check above: every shipped notice language has an opt-out line.
    notices = example_config()["templates"]["family_notice"]
    assert set(notices) == set(STOP_LINE)
    for lang, template in notices.items():
        assert template.rstrip().endswith(STOP_LINE[lang])


# -- the whole run, real channels, webhooks, every logger at DEBUG -------------------------------

PLANTED_GIVEN = ["Zenobia", "Thelonius", "Marisol", "Oluwaseun", "Bartholomew", "Evangelina",
                 "Xiomara", "Ignatius", "Perpetua", "Leopoldo", "Anastasia",
                 "Cornelius"]  # fmt: skip
PLANTED_FAMILY = ["Quackenbush", "Villasenor", "Okonkwo-Reyes", "Fairweather", "Castellanos",
                  "Wojciechowski", "Abernathy", "Thistlewood", "Nakagawa", "Oyelaran",
                  "Zurbriggen", "Montgomery-Pike"]  # fmt: skip


@dataclass
class Planted(Pii):
    birth_dates: set[str] = field(default_factory=set)


def plant(data: Path) -> tuple[Planted, list[str]]:
    """Known names, birth dates, phones and emails in a generated district's users.csv.

    Every student gets a birth date (`metadata.birthDate`); the first students and their
    guardians get the names above, and the guardians phones and emails written the ways SIS
    exports write them. One planted student's row is repeated, so its copies are quarantined
    with their birth dates. Returns what was planted and the planted guardians' E.164 numbers.
    """
    users = data / "oneroster" / "users.csv"
    with users.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = [*(reader.fieldnames or []), "metadata.birthDate"]
        rows = list(reader)
    with (data / "oneroster" / "roles.csv").open(encoding="utf-8", newline="") as fh:
        roles = {r["userSourcedId"]: r["role"] for r in csv.DictReader(fh)}
    planted, numbers = Planted(), []
    students = [r for r in rows if roles.get(r["sourcedId"]) == "student"]
    by_id = {r["sourcedId"]: r for r in rows}
    for n, student in enumerate(students):
        born = date(2010 + n % 5, 1 + n % 12, 1 + (7 * n) % 28)
        student["metadata.birthDate"] = born.isoformat()
        planted.birth_dates |= {born.isoformat(), born.strftime("%m/%d/%Y"), f"{born:%Y%m%d}"}
        if n >= len(PLANTED_GIVEN):
            continue
        student["givenName"], student["familyName"] = PLANTED_GIVEN[n], PLANTED_FAMILY[n]
        student["preferredGivenName"] = ""
        planted.add(PLANTED_GIVEN[n], PLANTED_FAMILY[n], student["email"])
        for g, agent in enumerate(a for a in student["agentSourcedIds"].split(",") if a):
            guardian = by_id[agent]
            given = PLANTED_GIVEN[(n + 5 + g) % len(PLANTED_GIVEN)] + "a"
            guardian["givenName"], guardian["familyName"] = given, PLANTED_FAMILY[n]
            number = f"312555{n:02d}{g}{n % 10}"
            area, exchange, line = number[:3], number[3:6], number[6:]
            guardian["sms"] = (f"({area}) {exchange}-{line}", f"{area}.{exchange}.{line}",
                               f"+1 {area} {exchange} {line}")[n % 3]  # fmt: skip
            guardian["email"] = f"{given.lower()}.{PLANTED_FAMILY[n].lower()}@family.example.net"
            numbers.append(f"+1{number}")
            planted.add(given, PLANTED_FAMILY[n], guardian["email"], guardian["sms"], f"+1{number}")
    rows.append({**students[-1], "metadata.birthDate": "2011-02-14"})  # a repeated key
    planted.birth_dates |= {"2011-02-14", "02/14/2011", "20110214"}
    with users.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    return planted, numbers


def every_logger_at_debug() -> None:
    """The root and every library logger at DEBUG, so nothing is hidden by a level.

    Two are left out on purpose: `sqlalchemy` (SQL echo prints result rows; casebridge never
    turns it on and SQLAlchemy keeps it at WARNING) and `mail.log`, the logger of aiosmtpd, the
    test's stand-in for the district's mail server: another system's logs, which print each
    message it receives."""
    cb_logging.configure("DEBUG", json=True)
    for name in ["twilio", "twilio.http_client", "urllib3", "urllib3.connectionpool",
                 "requests", "werkzeug", "flask", "apscheduler", "alembic",
                 *logging.root.manager.loggerDict]:  # fmt: skip
        if not name.startswith(("sqlalchemy", "mail.log")):
            logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def test_full_run_with_twilio_smtp_and_webhooks_logs_no_student_pii_at_debug(
    db_url: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    from twilio.request_validator import RequestValidator

    from connectors.channels.twilio_sms import e164
    from service.api import create_app
    from service.pipeline import open_engine
    from tests.fixtures.http_server import Fault
    from tests.fixtures.twilio_server import AUTH_TOKEN, TwilioServer
    from tests.test_families_email import Inbox, free_port, smtp_channel
    from tests.test_families_sms import PUBLIC, twilio_channel

    started = time.monotonic()
    generate_district(tmp_path / "data", students=40, seed=2, bad_rows=6)
    planted, numbers = plant(tmp_path / "data")
    everyone = generated_pii(tmp_path / "data")
    twilio, inbox, port = TwilioServer(), Inbox(), free_port()
    twilio.start()
    from aiosmtpd.controller import Controller

    mail = Controller(inbox, hostname="127.0.0.1", port=port)
    mail.start()
    try:
        # The first text is cut off mid-request (reconciled by listing Twilio's messages to
        # that number); every third number is invalid (those notices go by email instead).
        twilio.faults.append(Fault("Messages.json", kind="drop"))
        for number in sorted(e164(p, "US") or "" for p in everyone.phones)[::3]:
            twilio.state.fail_numbers[number] = 21211
        settings = settings_for(
            db_url, tmp_path / "data", tmp_path / "out",
            channels=[twilio_channel(twilio), smtp_channel(port)],
            outbox={"base_delay_seconds": 0, "max_attempts": 4},
        )  # fmt: skip
        caplog.set_level(logging.DEBUG)
        every_logger_at_debug()
        engine = open_engine(settings)
        try:
            assert not [r.error for r in run_sync(engine, settings) if r.error]
            assert run_evaluate(engine, settings).cases_opened > 0
            report = run_dispatch(engine, settings)
            app = create_app(settings, engine).test_client()
            validator = RequestValidator(AUTH_TOKEN)

            def twilio_post(path: str, form: dict[str, str]) -> int:
                signature = validator.compute_signature(PUBLIC + path, form)
                answer = app.post(path, data=form, headers={"X-Twilio-Signature": signature})
                return answer.status_code

            sent = twilio.messages[0]
            assert twilio_post("/webhooks/twilio/sms/status", {
                "MessageSid": sent.sid, "MessageStatus": "delivered", "To": sent.to,
                "From": sent.sender, "AccountSid": "AC" + "0" * 32,
            }) == 204  # fmt: skip
            stop = f"This is {PLANTED_GIVEN[0]}'s mom, please stop texting me"
            assert twilio_post("/webhooks/twilio/sms/inbound", {
                "MessageSid": "SM" + "1" * 32, "From": numbers[0], "To": sent.sender,
                "Body": stop,
            }) == 200  # fmt: skip
        finally:
            engine.dispose()
    finally:
        mail.stop()
        twilio.stop()

    assert report.delivered > 0 and report.by_target["sms"] and report.by_target["email"]
    assert report.reconciled or any(r.method == "GET" for r in twilio.requests)
    assert inbox.messages, "no email reached the SMTP server"
    logs = all_logs(capfd, caplog)
    # The capture really holds the libraries' lines, and the scrubber had work to do there.
    assert "urllib3.connectionpool" in logs and "twilio.http_client" in logs
    assert "[redacted]" in logs
    assert_no_pii_in(logs, planted)
    assert_no_pii_in(logs, everyone)
    born = sorted(d for d in planted.birth_dates if d in logs)
    assert not born, f"birth dates in the logs: {born}"
    print(f"full-run log test: {time.monotonic() - started:.1f}s, {len(logs):,} characters of logs")
