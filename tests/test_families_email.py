"""Family email through a real local SMTP server (aiosmtpd), and the one-click unsubscribe."""

from __future__ import annotations

import email
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import Engine, select

from service.api import create_app
from service.config import Settings
from service.models import ConsentEvent
from service.pipeline import run_dispatch
from tests.test_families_sms import due_now, notices, preference, ready
from tests.test_outbox import items

PUBLIC = "https://casebridge.district.example.org"
SECRET = "unsubscribe-secret-for-tests-only"


def free_port() -> int:
    # aiosmtpd needs a real port: with 0, clients cannot learn where it listens.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.refuse: dict[str, str] = {}  # address -> SMTP reply

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:  # fmt: skip
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Message]:
        return [m for rcpts, m in self.messages if address in rcpts]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def smtp_channel(port: int, **options: Any) -> dict[str, Any]:
    return {
        "name": "email", "kind": "smtp_email", "host": "127.0.0.1", "port": port,
        "security": "none", "from_address": "families@district.example.org",
        "from_name": "Lincoln High", "public_url": PUBLIC, "unsubscribe_secret": SECRET,
        **options,
    }  # fmt: skip


def parts(message: Message) -> dict[str, str]:
    out = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[part.get_content_subtype()] = payload.decode(part.get_content_charset() or "utf-8")
    return out


def test_each_family_gets_multipart_email_in_its_language_with_one_click_unsubscribe(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],
) -> None:  # fmt: skip
    inbox, port = smtp
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [smtp_channel(port)])
    run_dispatch(engine, settings)

    [rosa] = inbox.to("rosa@example.org")
    [luis] = inbox.to("luis@example.org")
    assert rosa["Subject"] == "Recursos gratuitos de su escuela"
    assert rosa["Content-Language"] == "es"
    assert set(parts(rosa)) == {"plain", "html"}
    assert "Recursos gratuitos" in parts(rosa)["plain"] and "<p>" in parts(rosa)["html"]
    assert luis["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = luis["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{PUBLIC}/unsubscribe/email/") and "luis" not in link
    by_contact = notices(engine)
    assert by_contact["g2"].external_id == luis["Message-ID"]  # derived from the outbox key
    assert luis["Message-ID"] != rosa["Message-ID"]

    # The mail client's one-click POST, no login: email stops, texts are not affected.
    client = create_app(settings, engine).test_client()
    path = link.removeprefix(PUBLIC)
    assert client.get(path).status_code == 200
    assert preference(engine, "g2") is None  # a GET (a link scanner) changes nothing
    answer = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    pref = preference(engine, "g2")
    assert pref["email_opted_out_at"] is not None and pref["sms_opted_out_at"] is None
    with engine.connect() as conn:
        [event] = conn.execute(select(ConsentEvent.__table__)).mappings().all()
    assert (event["via"], event["evidence"]["via"]) == ("unsubscribe_link", "one_click")

    # A forged or damaged token is refused and changes nothing.
    assert client.post(path[:-3] + "xyz", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert preference(engine, "g1") is None


def test_a_refused_recipient_is_dead_lettered_not_retried(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],
) -> None:  # fmt: skip
    inbox, port = smtp
    inbox.refuse["luis@example.org"] = "550 5.1.1 No such user"
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [smtp_channel(port)])
    run_dispatch(engine, settings)
    due_now(engine)
    run_dispatch(engine, settings)

    luis = notices(engine)["g2"]
    assert (luis.status, luis.attempts) == ("dead", 1) and "550" in (luis.last_error or "")
    assert len(inbox.to("rosa@example.org")) == 1


def test_a_server_that_is_down_is_retried_later(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings, _, _ = ready(engine, make_settings, tmp_path / "data", [smtp_channel(free_port())])
    report = run_dispatch(engine, settings)
    assert report.retried == 2
    assert {i.status for i in items(engine, "family_notice")} == {"pending"}


def test_starttls_and_login_against_a_server_with_its_own_certificate(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr[:200]!r}")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(data, LoginPassword) and data.password == b"s3cret"
        if ok:
            logins.append(data.login.decode())
        return AuthResult(success=ok)

    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
        authenticator=authenticator, auth_required=True,
    )  # fmt: skip
    controller.start()
    try:
        channel = smtp_channel(port, security="starttls", username="casebridge",
                               password="s3cret", ca_file=str(cert))  # fmt: skip
        settings, _, _ = ready(engine, make_settings, tmp_path / "data", [channel])
        report = run_dispatch(engine, settings)
    finally:
        controller.stop()
    assert report.delivered == 3  # the staff task and two emails
    assert logins and set(logins) == {"casebridge"}
    assert len(inbox.messages) == 2
