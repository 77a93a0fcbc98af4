"""The closed loop: a follow-up text some days after the notice, and the family's answer kept
on the case; "no" brings other resources."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from werkzeug.serving import make_server

from service.api import create_app
from service.config import Settings
from service.delivery import Deliverer
from service.models import CaseReply
from service.outbox import dispatch
from service.pipeline import run_dispatch
from tests.fixtures.twilio_server import TwilioServer
from tests.test_families_sms import (
    EMAIL_FILE,
    LUIS,
    ROSA,
    inbound,
    ready,
    twilio_channel,
)
from tests.test_outbox import items


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    server = TwilioServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def loop(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, twilio: TwilioServer
) -> Iterator[tuple[str, Settings]]:
    policy = {"sending_window": None, "follow_up_days": 7, "resources_per_message": 1}
    settings, _, _ = ready(
        engine, make_settings, tmp_path / "data", [twilio_channel(twilio), EMAIL_FILE],
        policy=policy,
    )  # fmt: skip
    server = make_server("127.0.0.1", 0, create_app(settings, engine), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", settings
    server.shutdown()


def at(engine: Engine, settings: Settings, when: datetime) -> None:
    dispatch(engine, Deliverer(engine, settings, clock=lambda: when), settings.outbox)


def replies(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(CaseReply.contact_id, CaseReply.answer, CaseReply.text).order_by(CaseReply.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_follow_up_asks_days_later_and_a_no_brings_other_resources(
    loop: tuple[str, Settings], engine: Engine, twilio: TwilioServer
) -> None:
    app, settings = loop
    run_dispatch(engine, settings)
    first = {i.contact_id: i.result["resource_ids"] for i in items(engine, "family_notice")}
    assert first["g1"] == ["ride-to-school"]
    assert len(twilio.messages) == 2
    run_dispatch(engine, settings)  # not due yet: nothing asked
    assert len(twilio.messages) == 2

    later = datetime.now(UTC) + timedelta(days=8)
    at(engine, settings, later)

    [question] = [m for m in twilio.sent_to(ROSA) if "Responda 1" in m.body]
    assert "¿le ayudaron los recursos" in question.body  # her language
    assert any("Reply 1 for yes" in m.body for m in twilio.sent_to(LUIS))

    inbound(app, "2", "SM" + "a" * 32, sender=ROSA)
    inbound(app, "what is this about?", "SM" + "b" * 32, sender=LUIS)
    inbound(app, "1", "SM" + "c" * 32, sender=LUIS)
    assert replies(engine) == [
        ("g1", "no_help", "2"),
        ("g2", "unrecognised", "what is this about?"),  # kept for a person to read
        ("g2", "got_help", "1"),
    ]

    at(engine, settings, later + timedelta(minutes=5))
    notices = [i for i in items(engine, "family_notice") if i.contact_id == "g1"]
    assert [i.status for i in notices] == ["delivered", "delivered"]
    assert notices[1].result["resource_ids"] == ["northside-food-pantry"]  # another resource
    assert "Northside Food Pantry" in twilio.sent_to(ROSA)[-1].body
    # No new notice for the family that said it got help.
    assert len([i for i in items(engine, "family_notice") if i.contact_id == "g2"]) == 1


def test_no_follow_up_for_a_family_that_stopped(
    loop: tuple[str, Settings], engine: Engine, twilio: TwilioServer
) -> None:
    app, settings = loop
    run_dispatch(engine, settings)
    inbound(app, "STOP", "SM" + "d" * 32, sender=LUIS)
    at(engine, settings, datetime.now(UTC) + timedelta(days=8))
    assert [m.to for m in twilio.messages if "Reply 1" in m.body] == []
    [luis] = [i for i in items(engine, "follow_up") if i.contact_id == "g2"]
    assert (luis.status, luis.reason) == ("suppressed", "opted_out")
