"""Case tasks by email to the case manager, the daily digest, and the case plan, through a real
local SMTP server (aiosmtpd) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time, timedelta
from email.message import Message
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select, update

from connectors.smtp import message_id
from jobs.scheduler import fire_once, latest_slot
from jobs.tasks import digest_job
from service.config import Settings, cron_trigger
from service.models import Case, CaseEvent, Disclosure, OutboxItem
from service.pipeline import run_dispatch, run_evaluate, run_sync
from service.task_view import build_task, disclosed_categories
from tests.builders import TinyDistrict
from tests.test_families_email import Inbox, smtp  # noqa: F401  (the fixture)

FROM = "cases@district.example.org"
OKAFOR, RIVERA = "dokafor@district.example.org", "arivera@district.example.org"


def mail(port: int, **options: Any) -> list[dict[str, Any]]:
    return [{"name": "mail", "kind": "email", "host": "127.0.0.1", "port": port,
             "security": "none", "from_address": FROM, "from_name": "casebridge",
             **options}]  # fmt: skip


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def tasks(inbox: Inbox, to: str) -> list[Message]:
    return [m for m in inbox.to(to) if not str(m["Subject"]).startswith("Case digest")]


def digests(inbox: Inbox, to: str) -> list[Message]:
    return [m for m in inbox.to(to) if str(m["Subject"]).startswith("Case digest")]


def test_the_case_manager_gets_one_email_per_revision_and_none_on_replay(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:  # fmt: skip
    inbox, port = smtp
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", given="Zoe")
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root, destinations=mail(port), channels=[])
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[55])
    run_dispatch(engine, settings)
    [first] = tasks(inbox, OKAFOR)  # least loaded of the two at school 101
    with engine.connect() as conn:
        case_id = conn.execute(select(Case.id)).scalar_one()
    assert first["Subject"] == f"[case-{case_id}] Support case opened"
    assert first["Message-ID"] == message_id(f"task:mail:case-{case_id}:rev-1", FROM)
    text = body(first)
    assert "Zoe Lopez (local id 1001)" in text and "missed 6 of" in text

    d.grade("s1", "Mathematics", 41)  # a new reason joins the case: revision 2
    d.write()
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[55])
    run_dispatch(engine, settings)
    first, second = tasks(inbox, OKAFOR)
    assert second["Subject"] == f"[case-{case_id}] Support case updated (revision 2)"
    assert second["In-Reply-To"] == first["Message-ID"]
    assert "failing 1 core course" in body(second)

    # Replay the whole outbox: every revision was delivered already, nothing is mailed again.
    with engine.begin() as conn:
        conn.execute(update(OutboxItem).values(status="pending", attempts=0, reason=None,
                                               next_attempt_at=OutboxItem.created_at))  # fmt: skip
    replay = run_dispatch(engine, settings)
    assert replay.delivered == 0
    assert len(inbox.messages) == 2
    with engine.connect() as conn:
        recipients = conn.execute(select(Disclosure.recipient)).scalars().all()
    assert recipients == ["staff tool mail", "staff tool mail"]


def test_a_lost_answer_is_parked_for_review_never_sent_twice(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:  # fmt: skip
    inbox, port = smtp
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001")
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root, destinations=mail(port), channels=[])
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[55])
    # A worker committed `sending` and died: SMTP cannot say whether it took the message.
    with engine.begin() as conn:
        conn.execute(update(OutboxItem).values(status="sending", sending_at=OutboxItem.created_at,
                                               result={"subject": "case-1"}))  # fmt: skip
    run_dispatch(engine, settings)
    assert inbox.messages == []
    with engine.connect() as conn:
        assert conn.execute(select(OutboxItem.status)).scalars().all() == ["needs_review"]


def _at(day: Any, hour: int, zone: str) -> datetime:
    return datetime.combine(day, time(hour), ZoneInfo(zone))


def _date_events(engine: Engine, after_id: int, moment: datetime) -> int:
    """Date the evaluation's case events as if it ran at `moment` (the nightly run)."""
    with engine.begin() as conn:
        conn.execute(update(CaseEvent).where(CaseEvent.id > after_id).values(at=moment))
        return int(conn.execute(select(CaseEvent.id).order_by(CaseEvent.id.desc())).scalar() or 0)


def test_a_digest_in_the_district_morning_lists_exactly_the_new_and_changed_cases(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:  # fmt: skip
    inbox, port = smtp
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", given="Zoe")
    d.student("s2", "1002", given="Ben")
    d.student("s3", "1003", given="Cy")  # never flagged: never in a digest
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root, destinations=mail(port, digest=True), channels=[])
    zone = settings.district.timezone
    trigger = cron_trigger(settings.schedules.digest_cron, zone)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[55])
    last = _date_events(engine, 0, _at(days[56], 2, zone))  # the nightly run

    # The morning after: the slot is 07:00 district time, fired once whoever fires it.
    slot = latest_slot(trigger, _at(days[56], 8, zone))
    assert slot is not None and (slot.date(), slot.hour) == (days[56], 7)
    assert fire_once(engine, "digest", slot, lambda: digest_job(engine, settings, slot))
    assert not fire_once(engine, "digest", slot, lambda: digest_job(engine, settings, slot))
    run_dispatch(engine, settings)
    [morning] = digests(inbox, OKAFOR)
    assert morning["Subject"] == f"Case digest {days[56]}: 1 new, 0 changed, 0 closed"
    text = body(morning)
    assert "Zoe Lopez (local id 1001)" in text and "Ben" not in text and "Cy" not in text
    assert digests(inbox, RIVERA) == []  # no cases: nothing to say, nothing sent

    # A quiet day: nothing changed, nothing sent.
    quiet = latest_slot(trigger, _at(days[57], 8, zone))
    assert quiet is not None
    digest_job(engine, settings, quiet)
    run_dispatch(engine, settings)
    assert len(digests(inbox, OKAFOR)) == 1 and digests(inbox, RIVERA) == []

    # Overnight: Zoe's case gets a new reason, Ben gets a case (the other case manager's).
    d.grade("s1", "Mathematics", 41)
    for day in days[40:50]:
        d.absent("1002", day)
    d.write()
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[58])
    _date_events(engine, last, _at(days[58], 2, zone))
    slot = latest_slot(trigger, _at(days[58], 9, zone))
    assert slot is not None
    digest_job(engine, settings, slot)
    run_dispatch(engine, settings)
    okafor, rivera = digests(inbox, OKAFOR)[-1], digests(inbox, RIVERA)
    assert okafor["Subject"] == f"Case digest {days[58]}: 0 new, 1 changed, 0 closed"
    assert "Zoe Lopez (local id 1001)" in body(okafor) and "new reason" in body(okafor)
    assert "Ben" not in body(okafor)
    [rivera_mail] = rivera
    assert rivera_mail["Subject"] == f"Case digest {days[58]}: 1 new, 0 changed, 0 closed"
    assert "Ben Lopez (local id 1002)" in body(rivera_mail) and "Zoe" not in body(rivera_mail)
    assert "new reason" not in body(rivera_mail)
    with engine.connect() as conn:
        kinds = conn.execute(
            select(OutboxItem.status, OutboxItem.reason).where(OutboxItem.kind == "digest")
        ).all()
        named = conn.execute(
            select(Disclosure.student_id).where(Disclosure.recipient.like("case manager%"))
        ).scalars().all()  # fmt: skip
    assert sorted(s for s, _ in kinds) == ["delivered"] * 3 + ["suppressed"] * 6
    assert sorted(named) == ["s1", "s1", "s2"]


def test_the_task_shows_progress_check_ins_and_a_close_suggestion_after_recovery(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:  # fmt: skip
    inbox, port = smtp
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", given="Zoe")
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    plan = {"check_in_every": 5, "suggest_close_after_days": 3}
    settings = make_settings(d.root, destinations=mail(port), channels=[], cases=plan)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[19])  # 6 of 20 days missed: the case opens
    run_dispatch(engine, settings)
    [opened] = tasks(inbox, OKAFOR)
    assert f"Next check-in due: {days[24]} (every 5 school days)" in body(opened)
    assert "Progress" not in body(opened) and "Suggestion" not in body(opened)

    # The SIS corrects the old absences; one new absence after the case opened.
    d.absences.clear()
    d.absent("1001", days[22])
    d.write()
    run_sync(engine, settings, allow_deactivation=True)
    run_evaluate(engine, settings, days[24])  # recovered, and the first check-in is due
    run_dispatch(engine, settings)
    check_in = tasks(inbox, OKAFOR)[-1]
    assert "revision 2" in str(check_in["Subject"])
    assert (f"Progress (as of {days[24]}): attended 80% of school days since the case opened "
            "(missed 1 of 5) vs 70% at opening (missed 6 of 20)") in body(check_in)  # fmt: skip
    assert f"Next check-in due: {days[29]}" in body(check_in)
    assert "Suggestion" not in body(check_in)

    run_evaluate(engine, settings, days[25])  # recovered for 3 days: suggest closing, once
    run_evaluate(engine, settings, days[25])
    run_dispatch(engine, settings)
    suggested = tasks(inbox, OKAFOR)[-1]
    assert len(tasks(inbox, OKAFOR)) == 3
    assert (f"Suggestion: The indicators have recovered since {days[24]} (3 days): consider "
            "closing the case.") in body(suggested)  # fmt: skip
    with engine.connect() as conn:
        case = conn.execute(select(Case.status, Case.recovered_since, Case.revision)).one()
    assert tuple(case) == ("open", days[24], 3)  # the plan never clears the recovery


def test_the_progress_line_counts_failures_cleared_and_check_ins_in_calendar_days(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001")
    d.grade("s1", "Mathematics", 41)  # failing in the second grading period
    d.write()
    plan = {"check_in_every": 7, "check_in_unit": "days"}
    settings = make_settings(d.root, channels=[], cases=plan)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[50])
    d.grades.clear()
    d.grade("s1", "Mathematics", 85)  # the grade came up
    d.write()
    run_sync(engine, settings, allow_deactivation=True)
    run_evaluate(engine, settings, days[55])
    with engine.connect() as conn:
        case_id = conn.execute(select(Case.id)).scalar_one()
        task = build_task(conn, settings, case_id)
    assert task is not None
    assert task["progress"]["text"] == (
        "attended 100% of school days since the case opened (missed 0 of 5) vs 100% at opening "
        "(missed 0 of 51); failing 1 course at opening, 0 now (1 cleared)"
    )
    assert task["progress"]["categories"] == ["attendance", "grades"]
    assert {"attendance", "grades"} <= set(disclosed_categories(task))
    # Every 7 calendar days from the day the case opened: the first check-in has passed.
    assert task["next_check_in_due"] == (days[50] + timedelta(days=14)).isoformat()
