"""Retention: what is past its time goes, the record of disclosures and consent evidence stay.

The district ran a whole pipeline (cases, staff tasks, family texts, disclosures); then time is
moved back on some of it, and `casebridge retention run` is asked what it would purge, then
purges. The parent's export of disclosures still lists what left the system about a student
whose case was purged.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, insert, select, update

from service.cli import main
from service.clock import utcnow
from service.consent import record_opt_out
from service.models import (
    Case,
    CaseEvent,
    CaseReply,
    ConsentEvent,
    Disclosure,
    InboundMessage,
    OutboxItem,
    PersonReferral,
    QuarantinedRecord,
    Referral,
    ReferralStatusToken,
)
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import settings_for, write_config
from tests.test_privacy import tiny_district

NAME_AND_BIRTH = {"givenName": "Xiomara", "familyName": "Quintanilla", "birthDate": "2011-04-02"}


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def lines_of(output: str) -> dict[str, int]:
    """The retention table's rows: what -> rows purged (or kept)."""
    out = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 5 and cells[-2].isdigit():
            out[cells[-3]] = int(cells[-2])
    return out


def district_after_a_year(db_url: str, tmp_path: Path) -> tuple[Path, Engine, dict[str, Any]]:
    """Three cases (one per student), tasks and family texts delivered; then case 1 is made to
    have closed 400 days ago and case 2 ten days ago; old and new family texts, answers and
    quarantined records beside them."""
    tiny_district(tmp_path / "data")
    config = write_config(tmp_path / "district.yaml", db_url, tmp_path / "data", tmp_path / "out")
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    assert run_dispatch(engine, settings).delivered > 0
    now = utcnow()
    long_ago, lately = now - timedelta(days=400), now - timedelta(days=10)
    with engine.begin() as conn:
        cases = dict(conn.execute(select(Case.student_id, Case.id)).all())
        old, recent = cases["stu-1"], cases["stu-2"]
        conn.execute(
            update(Case)
            .where(Case.id == old)
            .values(status="closed", closed_at=long_ago, close_reason="recovered")
        )
        conn.execute(
            update(Case)
            .where(Case.id == recent)
            .values(status="closed", closed_at=lately, close_reason="recovered")
        )
        conn.execute(update(OutboxItem).values(created_at=long_ago))
        notice = conn.execute(
            select(OutboxItem.id).where(
                OutboxItem.case_id == old, OutboxItem.kind == "family_notice"
            )
        ).scalar_one()
        conn.execute(update(OutboxItem).where(OutboxItem.id == notice).values(
            last_error="Twilio 400 code 21211: The 'To' number +12025550142 is not valid",
            result=OutboxItem.result))  # fmt: skip
        # A channel that kept the rendered text (the built-in ones keep only a digest).
        other = conn.execute(select(OutboxItem.id, OutboxItem.result).where(
            OutboxItem.case_id == recent, OutboxItem.kind == "family_notice")).first()  # fmt: skip
        assert other is not None
        conn.execute(update(OutboxItem).where(OutboxItem.id == other.id).values(
            result={**other.result, "body": "Xiomara: free tutoring at the library"}))  # fmt: skip
        for sid, at, body in (("SMold", long_ago, "Bartholomew's dad here, who is this?"),
                              ("SMnew", lately, "is this about Evangelina?")):  # fmt: skip
            conn.execute(insert(InboundMessage).values(
                provider_id=sid, channel="sms", from_address="+13125550177", body=body,
                action="other", contact_ids=["gua-3"], received_at=at))  # fmt: skip
        conn.execute(insert(CaseReply).values(
            case_id=recent, contact_id="gua-2", answer="unrecognised", message_sid="SMold",
            text="Penélope says thanks", at=long_ago))  # fmt: skip
        record_opt_out(conn, ["gua-1"], "all", "sms_reply",
                       {"message_sid": "SMstop", "text": "STOP", "at": long_ago.isoformat()},
                       long_ago)  # fmt: skip
        for key, seen in (("old", long_ago), ("new", lately)):
            conn.execute(insert(QuarantinedRecord).values(
                source="roster", entity="users", record_key=f"u-{key}", location="users.csv:9",
                reason="duplicate_key", detail="sourcedId repeated", payload=NAME_AND_BIRTH,
                fingerprint=len(key) * 7 + seen.day, first_seen=seen, last_seen=seen,
                times_seen=2))  # fmt: skip
        # A teacher had referred the student of the old case: the referral as sent (who, the
        # note) goes with the case, and so does the token that showed its status.
        referral = conn.execute(insert(PersonReferral).values(
            public_id="ref_old", received_at=long_ago, received_on=long_ago.date(),
            fingerprint="f" * 64, referrer_name="Ms. Okonkwo", referrer_role="teacher",
            referrer_email="okonkwo@example.org", relationship="math teacher",
            concerns=["attendance"], note="Xiomara has been missing first period",
            urgency="soon", family_contact_ok=True, identification={"local_id": "1001"},
            match="local_id", state="matched", student_id="stu-1", case_id=old,
            referrer_status="closed",
        ).returning(PersonReferral.id)).scalar_one()  # fmt: skip
        conn.execute(insert(ReferralStatusToken).values(
            token_sha256="0" * 64, person_referral_id=referral, created_at=long_ago))  # fmt: skip
        # Another that staff rejected long ago (no case), and one still in the queue.
        for public_id, state in (("ref_rejected", "rejected"), ("ref_waiting", "unmatched")):
            conn.execute(insert(PersonReferral).values(
                public_id=public_id, received_at=long_ago, received_on=long_ago.date(),
                fingerprint=public_id.ljust(64, "0"), referrer_name="A. Neighbor",
                referrer_role="community_partner", relationship="neighbor",
                concerns=["housing"], note="the family may be losing their apartment",
                urgency="routine", family_contact_ok=False, identification={"first_name": "X"},
                match="none", state=state, referrer_status="closed",
                resolved_at=long_ago if state == "rejected" else None,
            ))  # fmt: skip
    ids = {"old": old, "recent": recent, "notice": notice, "other": other.id}
    return config, engine, ids


def test_retention_purges_what_is_past_its_time_and_keeps_disclosures_and_consent(
    db_url: str, tmp_path: Path
) -> None:
    config, engine, ids = district_after_a_year(db_url, tmp_path)
    old = ids["old"]
    disclosures_before = count(engine, Disclosure)
    old_disclosures = count(engine, Disclosure, Disclosure.student_id == "stu-1")
    consent_before = count(engine, ConsentEvent)
    assert old_disclosures >= 2 and consent_before == 1  # the task and the family text

    dry = cli(config, "retention", "run", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert "Dry run: nothing was purged" in dry.output
    would = lines_of(dry.output)
    assert would["cases"] == 1
    assert would["quarantined records"] == 1
    assert would["texts received from families"] == 1
    assert would["follow-up answers"] == 1
    assert would["message text kept in outbox items"] == 1
    assert would["addresses in delivery errors"] == 1
    assert would["person referrals as sent (referrer, note)"] == 1
    assert would["referral status tokens"] == 1
    assert would["rejected person referrals (referrer, note)"] == 1
    assert count(engine, Case, Case.id == old) == 1  # nothing changed yet

    done = cli(config, "retention", "run")

    assert done.exit_code == 0, done.output
    purged = lines_of(done.output)
    assert {k: purged[k] for k in would} == would, "the dry run said what the run did"
    # The old closed case and what identified the student in it are gone...
    assert count(engine, Case, Case.id == old) == 0
    assert count(engine, Referral, Referral.case_id == old) == 0
    assert count(engine, CaseEvent, CaseEvent.case_id == old) == 0
    assert count(engine, OutboxItem, OutboxItem.case_id == old) == 0
    assert count(engine, ReferralStatusToken) == 0
    with engine.connect() as conn:  # the queue waits for a person; the rest went
        assert list(conn.execute(select(PersonReferral.public_id)).scalars()) == ["ref_waiting"]
    # ...the recent closed case and the open one stay whole...
    assert count(engine, Case) == 2
    assert count(engine, Referral, Referral.case_id == ids["recent"]) == 1
    # ...and the record of disclosures and the consent evidence are all kept.
    assert count(engine, Disclosure) == disclosures_before
    assert count(engine, ConsentEvent) == consent_before
    with engine.connect() as conn:
        kept = conn.execute(
            select(Disclosure.case_id, Disclosure.purpose, Disclosure.outbox_id).where(
                Disclosure.student_id == "stu-1"
            )
        ).all()
        assert {(c, p) for c, p, _ in kept} == {(old, "task_upsert"), (old, "family_notice")}
        quarantined = dict(
            conn.execute(select(QuarantinedRecord.record_key, QuarantinedRecord.payload)).all()
        )
        reasons = set(conn.execute(select(QuarantinedRecord.reason)).scalars())
        bodies = dict(conn.execute(select(InboundMessage.provider_id, InboundMessage.body)).all())
        reply = conn.execute(select(CaseReply.text)).scalar_one()
        other = conn.execute(
            select(OutboxItem.result).where(OutboxItem.id == ids["other"])
        ).scalar_one()
        evidence = conn.execute(select(ConsentEvent.evidence)).scalar_one()
    assert quarantined == {"u-old": {}, "u-new": NAME_AND_BIRTH} and reasons == {"duplicate_key"}
    assert bodies == {"SMold": "", "SMnew": "is this about Evangelina?"}
    assert reply == ""
    assert "body" not in other and other["channel"] and other["body_digest"]
    assert evidence["text"] == "STOP"  # consent evidence is never blanked
    assert purged["disclosure records"] == disclosures_before  # shown as kept

    # A parent's request after the purge still lists what left the system, with the case.
    exported = cli(config, "export-disclosures", "--student", "1001", "--format", "json")
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.stdout)
    assert document["student_id"] == "stu-1"
    assert len(document["disclosures"]) == old_disclosures
    assert {d["case_id"] for d in document["disclosures"]} == {old}

    again = lines_of(cli(config, "retention", "run").output)
    purgeable = [k for k in would if k not in ("disclosure records", "consent events")]
    assert {k: again[k] for k in purgeable} == dict.fromkeys(purgeable, 0)  # never twice
    engine.dispose()


def test_a_record_quarantined_again_after_its_purge_shows_as_it_arrived(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    from connectors.base import RawRow
    from service.ingest import quarantine
    from service.retention import run_retention

    settings = settings_for(db_url, tmp_path, tmp_path / "out")
    raw = RawRow("users.csv:9", {**NAME_AND_BIRTH, "sourcedId": "u-1"})
    with engine.begin() as conn:
        quarantine(conn, "roster", "users", raw, "duplicate_key", "sourcedId repeated")
        conn.execute(update(QuarantinedRecord).values(last_seen=utcnow() - timedelta(days=200)))

    report = run_retention(engine, settings)

    assert report.counts[("quarantine payloads", "quarantined records")] == 1
    with engine.begin() as conn:
        assert conn.execute(select(QuarantinedRecord.payload)).scalar_one() == {}
        # The source still sends the bad record: the row shows it again, as it arrived.
        quarantine(conn, "roster", "users", raw, "duplicate_key", "sourcedId repeated")
        row = conn.execute(select(QuarantinedRecord.__table__)).one()
    assert row.payload == {**NAME_AND_BIRTH, "sourcedId": "u-1"}
    assert row.payload_purged_at is None and row.times_seen == 2


def test_retention_settings_are_checked_with_their_keys() -> None:
    import pytest

    from service.config import parse_settings
    from service.errors import ConfigError
    from tests.conftest import raw_config_for

    defaults = parse_settings(raw_config_for("sqlite://", Path("d"), Path("o")), "d.yaml")
    assert (defaults.retention.quarantine_payload_days, defaults.retention.message_body_days,
            defaults.retention.closed_case_days) == (90, 90, 365)  # fmt: skip
    forever = raw_config_for("sqlite://", Path("d"), Path("o"),
                             retention={"closed_case_days": None})  # fmt: skip
    assert parse_settings(forever, "d.yaml").retention.closed_case_days is None

    raw = raw_config_for("sqlite://", Path("d"), Path("o"),
                         retention={"closed_case_days": 7, "keep_logs": True})  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, "d.yaml")
    problems = str(caught.value)
    assert "d.yaml: retention.keep_logs: unknown key" in problems
    assert "retention.closed_case_days: 7 is shorter than cases.cooldown_days (30)" in problems
