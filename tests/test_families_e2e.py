"""The demo district's family messages through the local Twilio-shaped server and a real SMTP
server, then the whole outbox replayed as if every send had crashed after the provider took it:
nothing reaches a family twice; and a family that texts STOP hears nothing more on any channel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, text
from twilio.request_validator import RequestValidator

from service.api import create_app
from service.config import parse_settings
from service.intents import family_notices
from service.outbox import enqueue
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import ROOT, raw_config_for
from tests.fixtures.twilio_server import TwilioServer
from tests.test_families_email import Inbox, free_port, smtp_channel
from tests.test_families_sms import ACCOUNT_SID, AUTH_TOKEN, PUBLIC, twilio_channel
from tests.test_outbox import items


@pytest.fixture
def peers() -> Iterator[tuple[TwilioServer, Inbox, int]]:
    twilio = TwilioServer()
    twilio.start()
    inbox, port = Inbox(), free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    yield twilio, inbox, port
    smtp.stop()
    twilio.stop()


def test_a_district_replayed_after_a_crash_everywhere_sends_nothing_twice(
    db_url: str, tmp_path: Path, peers: tuple[TwilioServer, Inbox, int]
) -> None:
    twilio, inbox, port = peers
    data = ROOT / "config" / "sample-data"  # the demo district, as shipped
    channels = [twilio_channel(twilio), smtp_channel(port)]
    raw = raw_config_for(db_url, data, tmp_path / "out", channels=channels)
    settings = parse_settings(raw, "e2e.yaml", data)
    engine: Engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)

    first = run_dispatch(engine, settings)
    texts, mails = len(twilio.messages), len(inbox.messages)
    assert texts > 0 and mails > 0, first
    delivered = [i for i in items(engine, "family_notice") if i.status == "delivered"]
    assert len(delivered) == texts + mails
    assert max(Counter(m.to for m in twilio.messages).values()) == 1

    # Again, as the nightly job would: the same intents are not queued twice.
    run_evaluate(engine, settings)
    run_dispatch(engine, settings)
    assert (len(twilio.messages), len(inbox.messages)) == (texts, mails)

    # Every family message back to `sending`, as if each worker died after the provider took it.
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE outbox SET status = 'sending', next_attempt_at = created_at, "
            "sending_at = created_at WHERE kind = 'family_notice' AND status = 'delivered'"
        ))  # fmt: skip
    replay = run_dispatch(engine, settings)

    assert (len(twilio.messages), len(inbox.messages)) == (texts, mails)  # nothing twice
    assert replay.reconciled == texts + mails
    by_status = Counter((i.result or {}).get("medium") + ":" + i.status
                        for i in items(engine, "family_notice") if i.result)  # fmt: skip
    # Twilio's message list shows each text: delivered. SMTP cannot be asked: a person checks.
    assert by_status["sms:delivered"] == texts
    assert by_status["email:needs_review"] == mails

    # A guardian with a phone and an email texts STOP; then a new referral wants to tell them.
    texted = next(
        i for i in items(engine, "family_notice")
        if (i.result or {}).get("medium") == "sms" and _email_of(engine, i.contact_id)
    )  # fmt: skip
    phone = texted.result["to"]
    client = create_app(settings, engine).test_client()
    path = "/webhooks/twilio/sms/inbound"
    params = {"MessageSid": "SM" + "7" * 32, "From": phone, "To": "+15005550006",
              "Body": "STOP", "AccountSid": ACCOUNT_SID}  # fmt: skip
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, params)
    assert (
        client.post(path, data=params, headers={"X-Twilio-Signature": signature}).status_code == 200
    )
    with engine.begin() as conn:  # what evaluation queues when a new reason joins the case
        revision = conn.execute(
            text("SELECT revision FROM cases WHERE id = :c"), {"c": texted.case_id}
        ).scalar_one()
        conn.execute(text("UPDATE cases SET revision = :r WHERE id = :c"),
                     {"r": revision + 1, "c": texted.case_id})  # fmt: skip
        enqueue(conn, family_notices(texted.case_id, texted.student_id, revision + 1,
                                     [texted.contact_id], ["counseling"]))  # fmt: skip
    before = (len(twilio.messages), len(inbox.messages))
    after_stop = run_dispatch(engine, settings)

    assert (len(twilio.messages), len(inbox.messages)) == before  # not by text, not by email
    assert after_stop.suppressed == {"opted_out": 1}
    [latest] = [i for i in items(engine, "family_notice")
                if i.contact_id == texted.contact_id and i.status == "suppressed"]  # fmt: skip
    assert latest.reason == "opted_out"


def _email_of(engine: Engine, contact_id: str | None) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT email FROM contacts WHERE contact_id = :c"), {"c": contact_id}
        ).scalar()
