"""Cases: one per student, reasons join, recovery closes, relapse reopens, load-balanced."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

from service.config import Settings
from service.models import Case, OutboxItem, Referral
from service.pipeline import run_dispatch, run_evaluate, run_sync
from tests.builders import TinyDistrict


def outbox(engine: Engine, kind: str | None = None) -> list[OutboxItem]:
    with engine.connect() as conn:
        q = select(OutboxItem.__table__).order_by(OutboxItem.id)
        if kind:
            q = q.where(OutboxItem.kind == kind)
        return [OutboxItem(**dict(r)) for r in conn.execute(q).mappings()]


def sent(settings: Settings, file: str) -> list[dict[str, Any]]:
    """What reached the staff tool or the family (the file sinks), in order."""
    path = settings.resolve(settings.output_dir) / file
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cases(engine: Engine) -> list[Case]:
    with engine.connect() as conn:
        return [Case(**dict(r)) for r in conn.execute(select(Case.__table__)).mappings()]


def district(root: Path) -> tuple[TinyDistrict, list[date]]:
    d = TinyDistrict(root)
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", guardians=("g1", "g2", "g3", "g4"), given="Ana")
    d.guardian("g1", ("s1",), language="es", sms="(212) 555-0101", given="Rosa")
    d.guardian("g2", ("s1",), email="dad@example.org", given="Luis")  # email only
    d.guardian("g3", ("s1",), sms="(212) 555-0103", dnc=True)  # do not contact
    d.guardian("g4", ("s1",), sms="(212) 555-0104", role="relatedContact")  # not a guardian
    return d, days


def test_one_case_per_student_and_a_new_reason_joins_it(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = district(tmp_path / "data")
    as_of = days[55]  # inside the second grading period, where the grade below lands
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root)
    run_sync(engine, settings)
    first = run_evaluate(engine, settings, as_of)
    assert (first.cases_opened, first.referrals_created) == (1, 1)
    [case] = cases(engine)
    assert (case.status, case.revision, case.severity) == ("open", 1, "high")
    # A notice is queued for each guardian (not g4, who is not one); policy decides at send.
    assert sorted(n.contact_id for n in outbox(engine, "family_notice")) == ["g1", "g2", "g3"]
    dispatched = run_dispatch(engine, settings)
    assert dispatched.suppressed == {"do_not_contact": 1}
    # Spanish-speaking guardian by SMS, the email-only guardian by email; nobody else.
    sms, email = sent(settings, "family-sms.jsonl"), sent(settings, "family-email.jsonl")
    assert [(m["message"]["to"], m["message"]["language"]) for m in sms] == [("+12125550101", "es")]
    assert [(m["message"]["to"], m["message"]["language"]) for m in email] == [
        ("dad@example.org", "en")
    ]
    assert "Ride to School" in sms[0]["message"]["body"]
    assert "Ride to School" in email[0]["message"]["body"]

    d.grade("s1", "Mathematics", 41)
    d.write()
    run_sync(engine, settings)
    second = run_evaluate(engine, settings, as_of)
    assert (second.cases_opened, second.cases_updated, second.referrals_created) == (0, 1, 1)
    [case] = cases(engine)
    assert case.revision == 2
    with engine.connect() as conn:
        reasons = conn.execute(
            select(Referral.rule_id, Referral.rule_version, Referral.evidence)
            .where(Referral.case_id == case.id)
            .order_by(Referral.id)
        ).all()
    assert [r.rule_id for r in reasons] == ["chronic-absence", "core-course-failure"]
    assert reasons[1].evidence["indicators"]["core_course_failures"] == 1
    tasks = outbox(engine, "task_upsert")
    assert [t.idempotency_key for t in tasks] == [
        f"task:tasks:case-{case.id}:rev-1",
        f"task:tasks:case-{case.id}:rev-2",
    ]
    run_dispatch(engine, settings)
    written = sent(settings, "tasks.jsonl")
    # Created once, then the same task updated: the tool's id is kept.
    assert [w["op"] for w in written] == ["create", "update"]
    assert written[0]["task_id"] == written[1]["task_id"]
    assert [r["rule_id"] for r in written[1]["task"]["reasons"]] == [
        "chronic-absence",
        "core-course-failure",
    ]
    # Only the new resource (tutoring) goes to the family, once per reachable guardian.
    sms, email = sent(settings, "family-sms.jsonl"), sent(settings, "family-email.jsonl")
    assert len(sms) == len(email) == 2
    assert "Homework Help" in sms[1]["message"]["body"]
    assert "Ride to School" not in sms[1]["message"]["body"]

    third = run_evaluate(engine, settings, as_of)
    assert (third.cases_opened, third.cases_updated, third.referrals_created) == (0, 0, 0)
    assert len(outbox(engine)) == 8


def test_recovery_closes_and_a_relapse_within_the_cooldown_reopens_the_same_case(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = district(tmp_path / "data")
    for day in days[2:5]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[19])
    d.absences.clear()  # the SIS corrected the record: no absences after all
    d.write()
    # An attendance file that empties out is refused unless staff confirm it is meant.
    run_sync(engine, settings, allow_deactivation=True)
    recovering = run_evaluate(engine, settings, days[20])
    assert recovering.cases_recovering == 1 and cases(engine)[0].status == "open"
    closing_day = days[20] + timedelta(days=settings.cases.recovery_days)
    closed = run_evaluate(engine, settings, closing_day)
    assert closed.cases_closed == 1
    [case] = cases(engine)
    assert case.status == "closed" and case.close_reason == "recovered"
    run_dispatch(engine, settings)
    assert sent(settings, "tasks.jsonl")[-1]["task"]["status"] == "closed"

    for day in days[30:40]:
        d.absent("1001", day)
    d.write()
    run_sync(engine, settings)
    relapse = run_evaluate(engine, settings, days[45])
    assert (relapse.cases_opened, relapse.cases_reopened) == (0, 1)
    [case] = cases(engine)
    assert (case.status, case.reopen_count) == ("open", 1)
    run_dispatch(engine, settings)
    last_task = sent(settings, "tasks.jsonl")[-1]
    assert (last_task["task"]["status"], last_task["task"]["revision"]) == ("open", 3)
    assert last_task["op"] == "update"
    # The family already heard about these resources: no second notice for the same reason.
    assert len(outbox(engine, "family_notice")) == 3


def test_after_the_cooldown_a_relapse_is_a_new_case(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = district(tmp_path / "data")
    for day in days[2:5]:
        d.absent("1001", day)
    d.write()
    settings = make_settings(d.root, cases={"cooldown_days": 0, "recovery_days": 0})
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[19])
    d.absences.clear()
    d.write()
    run_sync(engine, settings, allow_deactivation=True)
    run_evaluate(engine, settings, days[20])  # recovering
    run_evaluate(engine, settings, days[21])  # closed
    for day in days[22:40]:
        d.absent("1001", day)
    d.write()
    run_sync(engine, settings)
    report = run_evaluate(engine, settings, days[45])
    assert report.cases_opened == 1
    assert sorted(c.status for c in cases(engine)) == ["closed", "open"]


def test_case_managers_are_assigned_least_loaded_first(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school("sch-1", "101", "Oak Grove")
    d.school("sch-9", "999", "No caseload school")
    days = d.school_days("sch-1", 25)
    d.school_days("sch-9", 25)
    for i in range(5):
        d.student(f"s{i}", f"{i}")
        for day in days[:4]:
            d.absent(f"{i}", day)
    d.student("x1", "900", school="sch-9")
    for day in days[:4]:
        d.absent("900", day)
    d.write()
    settings = make_settings(d.root)
    run_sync(engine, settings)
    report = run_evaluate(engine, settings, days[-1])
    assert report.cases_opened == 6 and report.unassigned == 1
    with engine.connect() as conn:
        load = dict(
            conn.execute(
                text("SELECT COALESCE(assignee_id, '-'), COUNT(*) FROM cases GROUP BY assignee_id")
            ).all()
        )
    # cm-rivera and cm-okafor both cover school 101; the school with no caseload is unassigned.
    assert load.pop("-") == 1
    assert sorted(load) == ["cm-okafor", "cm-rivera"] and sorted(load.values()) == [2, 3]
    run_dispatch(engine, settings)
    task = next(
        t for t in sent(settings, "tasks.jsonl") if t["task"]["student"]["student_id"] == "x1"
    )
    assert task["task"]["assignee"] is None


def test_a_rule_can_mix_general_support_so_the_list_does_not_point_at_the_reason(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = district(tmp_path / "data")
    d.grade("s1", "Mathematics", 41)  # failing math, no absences
    d.write()
    base = make_settings(d.root)
    rules = [r.model_dump() for r in base.rules]
    for rule in rules:
        rule["mix_general_support"] = rule["id"] == "core-course-failure"
    policy = {"sending_window": None, "general_support": ["basic-needs", "counseling"]}
    settings = make_settings(d.root, rules=rules, policy=policy)
    run_sync(engine, settings)
    report = run_evaluate(engine, settings, days[55])
    assert report.flagged_by_rule == {"core-course-failure": 1}
    run_dispatch(engine, settings)

    [text] = [m["message"]["body"] for m in sent(settings, "family-sms.jsonl")]
    # Tutoring alone would say "failing"; mixed with food and counseling it says "support".
    assert "Homework Help" in text
    assert "Food Pantry" in text and "Family Counseling" in text


def test_mixing_general_support_needs_the_categories_to_mix(tmp_path: Path) -> None:
    import pytest

    from service.config import parse_settings
    from service.errors import ConfigError
    from tests.conftest import raw_config_for

    raw = raw_config_for("sqlite://", tmp_path, tmp_path)
    raw["rules"][1]["mix_general_support"] = True
    with pytest.raises(ConfigError) as failed:
        parse_settings(raw, "d.yaml", tmp_path)
    assert "d.yaml: rules[1].mix_general_support: policy.general_support names no" in str(
        failed.value
    )
    raw["policy"]["general_support"] = ["housing"]
    with pytest.raises(ConfigError) as failed:
        parse_settings(raw, "d.yaml", tmp_path)
    assert "policy.general_support: no resource has category ['housing']" in str(failed.value)
