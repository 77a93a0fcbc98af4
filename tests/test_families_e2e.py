"""A synthetic district's family messages through the local Twilio-shaped server and a real SMTP
server, then the whole outbox replayed as if every send had crashed after the provider took it:
nothing reaches a family twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, text

from service.config import parse_settings
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import raw_config_for
from tests.fixtures.twilio_server import TwilioServer
from tests.test_families_email import Inbox, free_port, smtp_channel
from tests.test_families_sms import twilio_channel
from tests.test_outbox import items
from tools.synthetic import generate_district


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
    data = tmp_path / "data"
    generate_district(data, students=60, seed=21)
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
