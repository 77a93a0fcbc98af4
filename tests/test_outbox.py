"""The outbox: a crash at any point loses nothing and duplicates nothing a person would see.

Crashes are real (a dispatcher subprocess killed with SIGKILL by a sink, a lease that runs out),
sinks are test-only connector kinds registered like third-party plugins (`tests/plugins/kinds.py`),
and every assertion is about what reached the family's phone or the staff tool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Engine, insert, select, text, update

import tests.plugins.kinds  # noqa: F401  (registers the test-only kinds in this process)
from service.cli import main
from service.config import Settings, parse_settings
from service.delivery import Deliverer
from service.models import ContactPreference, Disclosure, OutboxItem
from service.outbox import Dispatcher, claim, dispatch
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.builders import TinyDistrict
from tests.conftest import ROOT, raw_config_for
from tools.synthetic import generate_district

CLI = [sys.executable, "-m", "service.cli"]
PLUGIN_ENV = {"CASEBRIDGE_PLUGINS": "tests.plugins.kinds", "PYTHONPATH": str(ROOT)}
CHICAGO = ZoneInfo("America/Chicago")


def casebridge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PLUGIN_ENV}
    return subprocess.run(
        [*CLI, "--config", str(config), *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def keys(path: Path) -> Counter[str]:
    return Counter(r["idempotency_key"] for r in lines(path))


def items(engine: Engine, kind: str | None = None) -> list[OutboxItem]:
    with engine.connect() as conn:
        q = select(OutboxItem.__table__).order_by(OutboxItem.id)
        if kind:
            q = q.where(OutboxItem.kind == kind)
        return [OutboxItem(**dict(r)) for r in conn.execute(q).mappings()]


def statuses(engine: Engine, kind: str | None = None) -> Counter[str]:
    return Counter(i.status for i in items(engine, kind))


def sms_channel(**options: Any) -> dict[str, Any]:
    return {"name": "sms", "kind": "test_sms", "path": "test-sms.jsonl", **options}


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def district(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=21)
    return data


def evaluated(db_url: str, data: Path, out: Path, **overrides: Any) -> tuple[Settings, Engine]:
    settings = parse_settings(raw_config_for(db_url, data, out, **overrides), "t.yaml", data)
    engine = open_engine(settings)
    assert not [r.error for r in run_sync(engine, settings) if r.error]
    run_evaluate(engine, settings)
    return settings, engine


# -- crashes and concurrent workers ------------------------------------------------------------


@pytest.mark.parametrize("crash", ["before_write", "after_write"])
def test_a_worker_killed_mid_send_to_a_non_idempotent_channel_never_sends_twice(
    db_url: str, district: Path, tmp_path: Path, crash: str
) -> None:
    out = tmp_path / "out"
    channel = sms_channel(crash=crash, crash_marker="crashed")
    overrides = {"channels": [channel], "outbox": {"lease_seconds": 1, "batch_size": 5}}
    raw = raw_config_for(db_url, district, out, **overrides)
    config = write(tmp_path / "d.yaml", raw)
    _settings, engine = evaluated(db_url, district, out, **overrides)
    queued = len(items(engine, "family_notice"))
    assert queued > 3

    killed = casebridge(config, "dispatch")
    assert killed.returncode == -9, killed.stderr  # SIGKILL, mid-send
    [left] = [i for i in items(engine) if i.status == "sending"]
    written_before = keys(out / "test-sms.jsonl")
    assert written_before[left.idempotency_key] == (1 if crash == "after_write" else 0)

    time.sleep(1.2)  # the dead worker's lease runs out; nobody checks its PID
    finished = casebridge(config, "dispatch")
    assert finished.returncode == 0, finished.stderr
    assert "reconciled after a crash" in finished.stdout
    sent = keys(out / "test-sms.jsonl")
    assert max(sent.values()) == 1  # nothing twice...
    notices = items(engine, "family_notice")
    assert {i.status for i in notices} <= {"delivered", "suppressed"}
    assert sum(sent.values()) == sum(1 for i in notices if i.status == "delivered")  # ...or lost
    reconciled = next(i for i in notices if i.id == left.id)
    assert reconciled.status == "delivered"
    assert reconciled.reason is None or "not sent" in (reconciled.reason or "")


@pytest.mark.parametrize("crash", ["before_write", "after_write"])
def test_a_worker_killed_mid_batch_to_a_batching_channel_never_sends_twice(
    db_url: str, district: Path, tmp_path: Path, crash: str
) -> None:
    out = tmp_path / "out"
    channel = sms_channel(crash=crash, crash_marker="crashed", batch=True)
    overrides = {"channels": [channel], "outbox": {"lease_seconds": 1, "batch_size": 20}}
    config = write(tmp_path / "d.yaml", raw_config_for(db_url, district, out, **overrides))
    _settings, engine = evaluated(db_url, district, out, **overrides)

    killed = casebridge(config, "dispatch")
    assert killed.returncode == -9, killed.stderr  # SIGKILL around the batch's one write
    left = [i for i in items(engine, "family_notice") if i.status == "sending"]
    assert len(left) > 1  # the whole batch was committed `sending` before the call
    written = keys(out / "test-sms.jsonl")
    assert {written[i.idempotency_key] for i in left} == {1 if crash == "after_write" else 0}

    time.sleep(1.2)  # the dead worker's lease runs out
    finished = casebridge(config, "dispatch")
    assert finished.returncode == 0, finished.stderr
    sent = keys(out / "test-sms.jsonl")
    assert max(sent.values()) == 1  # nothing twice...
    notices = items(engine, "family_notice")
    assert {i.status for i in notices} <= {"delivered", "suppressed"}
    assert sum(sent.values()) == sum(1 for i in notices if i.status == "delivered")  # ...or lost
    after = {i.id: i.status for i in notices}
    assert {after[i.id] for i in left} == {"delivered"}


def test_a_batch_whose_claim_was_partly_lost_sends_and_marks_only_what_it_still_holds(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings, engine = evaluated(db_url, district, out)
    first_token, first = claim(engine, 8, 60)
    with engine.begin() as conn:  # the first worker paused past its lease...
        conn.execute(update(OutboxItem).values(claimed_until=datetime(2000, 1, 1, tzinfo=UTC)))
    second_token, second = claim(engine, 3, 60)  # ...and another worker took three of its items
    taken = {i.id for i in second}
    assert taken < {i.id for i in first}

    late = Dispatcher(engine, Deliverer(engine, settings), settings.outbox)
    late.deliver(first, first_token)

    assert late.report.lost_claims == 3
    after = {i.id: i for i in items(engine)}
    assert {(after[i].status, after[i].claim_token) for i in taken} == {("pending", second_token)}
    kept = [after[i.id] for i in first if i.id not in taken]
    assert {i.status for i in kept} <= {"delivered", "suppressed", "superseded"}
    assert late.report.delivered == sum(1 for i in kept if i.status == "delivered") > 0
    written = Counter[str]()
    for sink in ("tasks.jsonl", "family-sms.jsonl", "family-email.jsonl"):
        written += keys(out / sink)
    assert not [i for i in taken if written[after[i].idempotency_key]]  # nothing sent for them
    assert all(written[i.idempotency_key] == 1 for i in kept if i.status == "delivered")


def test_a_provider_that_cannot_answer_after_a_crash_is_asked_again_never_resent(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    channel = sms_channel(crash="after_write", crash_marker="crashed")
    overrides = {"channels": [channel], "outbox": {"lease_seconds": 1, "base_delay_seconds": 0}}
    config = write(tmp_path / "d.yaml", raw_config_for(db_url, district, out, **overrides))
    _, engine = evaluated(db_url, district, out, **overrides)
    assert casebridge(config, "dispatch").returncode == -9
    [left] = [i for i in items(engine) if i.status == "sending"]
    time.sleep(1.2)

    down = {**overrides, "channels": [{**channel, "reconcile_down": True}]}
    settings = parse_settings(raw_config_for(db_url, district, out, **down), "t", district)
    first = run_dispatch(engine, settings)

    [still] = [i for i in items(engine) if i.id == left.id]
    assert still.status in ("sending", "needs_review")  # never back to pending
    assert "reconcile: message list answered 503" in (still.last_error or still.reason or "")
    assert keys(out / "test-sms.jsonl")[left.idempotency_key] == 1
    assert first.delivered > 0  # the rest of the batch went out
    if still.status == "sending":
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))
        assert casebridge(config, "dispatch").returncode == 0
        [done] = [i for i in items(engine) if i.id == left.id]
        assert done.status == "delivered"
    assert max(keys(out / "test-sms.jsonl").values()) == 1


def test_an_unknowable_outcome_waits_for_a_person_then_resolves(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    channel = sms_channel(crash="after_write", crash_marker="crashed", reconcile_unknown=True)
    overrides = {"channels": [channel], "outbox": {"lease_seconds": 1, "batch_size": 5}}
    config = write(tmp_path / "d.yaml", raw_config_for(db_url, district, out, **overrides))
    _, engine = evaluated(db_url, district, out, **overrides)
    assert casebridge(config, "dispatch").returncode == -9
    time.sleep(1.2)
    assert casebridge(config, "dispatch").returncode == 0
    [parked] = [i for i in items(engine) if i.status == "needs_review"]
    assert keys(out / "test-sms.jsonl")[parked.idempotency_key] == 1  # it did go out, once

    listed = casebridge(config, "outbox", "list", "--status", "needs_review")
    assert listed.returncode == 0, listed.stderr
    assert str(parked.id) in listed.stdout and "reconcile" in listed.stdout

    resolved = casebridge(
        config, "outbox", "resolve", str(parked.id), "--outcome", "sent", "--note", "seen in log"
    )
    assert resolved.returncode == 0, resolved.stderr
    assert casebridge(config, "dispatch").returncode == 0
    assert keys(out / "test-sms.jsonl")[parked.idempotency_key] == 1
    with engine.connect() as conn:
        status, reason = conn.execute(
            select(OutboxItem.status, OutboxItem.reason).where(OutboxItem.id == parked.id)
        ).one()
        disclosed = conn.execute(
            select(Disclosure.recipient_kind).where(Disclosure.outbox_id == parked.id)
        ).scalars().all()  # fmt: skip
    assert status == "delivered" and "seen in log" in reason
    assert disclosed == ["family"]


def test_two_dispatchers_with_a_lease_shorter_than_a_slow_send_deliver_each_item_once(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers share a database on PostgreSQL; SQLite is single-process")
    out = tmp_path / "out"
    overrides = {
        "channels": [sms_channel(delay_seconds=1.5)],
        "outbox": {"lease_seconds": 1, "batch_size": 3},
    }
    config = write(tmp_path / "d.yaml", raw_config_for(db_url, district, out, **overrides))
    _, engine = evaluated(db_url, district, out, **overrides)
    queued = len(items(engine, "family_notice"))
    env = {**os.environ, **PLUGIN_ENV}
    workers = [
        subprocess.Popen(
            [*CLI, "--config", str(config), "dispatch"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    sent = keys(out / "test-sms.jsonl")
    assert max(sent.values()) == 1, "an SMS went out twice"
    notices = items(engine, "family_notice")
    assert len(notices) == queued
    assert {i.status for i in notices} <= {"delivered", "suppressed"}, "an item was lost"
    assert sum(sent.values()) == sum(1 for i in notices if i.status == "delivered")
    # Both workers did part of the work: the claims really were shared.
    assert all("to sms" in o for o, _ in outputs), outputs


def test_a_worker_whose_lease_expired_cannot_mark(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings, engine = evaluated(db_url, district, out)
    first_token, first = claim(engine, 1, 60)
    with engine.begin() as conn:  # the first worker paused past its lease
        conn.execute(update(OutboxItem).values(claimed_until=datetime(2000, 1, 1, tzinfo=UTC)))
    second_token, second = claim(engine, 1, 60)
    assert [i.id for i in second] == [i.id for i in first] and second_token != first_token

    late = Dispatcher(engine, Deliverer(engine, settings), settings.outbox)
    late.one(first[0], first_token)
    assert late.report.lost_claims == 1 and late.report.delivered == 0
    [item] = [i for i in items(engine) if i.id == first[0].id]
    assert (item.status, item.claim_token) == ("pending", second_token)

    owner = Dispatcher(engine, Deliverer(engine, settings), settings.outbox)
    owner.one(second[0], second_token)
    assert owner.report.delivered == 1


# -- taxonomy, plugins ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["one_per_call", "bulk"])
def test_a_sink_that_raises_dead_letters_after_its_attempts_and_the_rest_is_delivered(
    db_url: str, district: Path, tmp_path: Path, batch: bool
) -> None:
    out = tmp_path / "out"
    first_case = 1  # a fresh database numbers cases from 1
    tracker = {"name": "tracker", "kind": "test_recording", "fail_cases": [first_case]}
    overrides = {
        "destinations": [{**tracker, "batch": batch}],
        "outbox": {"max_attempts": 3, "base_delay_seconds": 0},
    }
    settings, engine = evaluated(db_url, district, out, **overrides)
    cases_with_tasks = {i.case_id for i in items(engine, "task_upsert")}
    assert first_case in cases_with_tasks and len(cases_with_tasks) > 3

    report = run_dispatch(engine, settings)

    [dead] = [i for i in items(engine, "task_upsert") if i.status == "dead"]
    assert dead.case_id == first_case and dead.attempts == 3
    assert dead.last_error and dead.last_error.startswith("RuntimeError: SDK bug")
    recorded = lines(out / "recorded-tasks.jsonl")
    assert {r["task"]["case_id"] for r in recorded} == cases_with_tasks - {first_case}
    assert report.dead == 1 and report.retried == 2
    assert statuses(engine, "task_upsert") == Counter(
        {"delivered": len(cases_with_tasks) - 1, "dead": 1}
    )

    listed = CliRunner().invoke(
        main,
        [
            "--config",
            str(write(tmp_path / "c.yaml", raw_config_for(db_url, district, out, **overrides))),
            "outbox",
            "list",
            "--status",
            "dead",
        ],
    )
    assert listed.exit_code == 0, listed.output
    assert "RuntimeError" in listed.output and str(dead.id) in listed.output


def test_an_unknown_connector_kind_names_the_known_ones(tmp_path: Path) -> None:
    raw = raw_config_for("sqlite://", tmp_path, tmp_path)
    raw["destinations"] = [{"name": "x", "kind": "plannr"}]
    config = write(tmp_path / "bad.yaml", raw)
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    assert result.exit_code == 2
    assert "destinations[0].kind: unknown kind 'plannr'" in result.output
    assert "file" in result.output and "test_recording" in result.output


# -- send-time policy ----------------------------------------------------------------------------


def family(root: Path) -> tuple[TinyDistrict, list[date]]:
    d = TinyDistrict(root)
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", guardians=("g1", "g2"), given="Ana")
    d.guardian("g1", ("s1",), language="es", sms="(212) 555-0101", email="rosa@example.org")
    d.guardian("g2", ("s1",), sms="(212) 555-0102", given="Luis")
    for day in days[2:10]:
        d.absent("1001", day)
    d.write()
    return d, days


def test_an_opt_out_between_evaluation_and_dispatch_is_honoured(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = family(tmp_path / "data")
    settings = make_settings(d.root)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    now = datetime.now(UTC)
    with engine.begin() as conn:  # g1 texted STOP; g2 said "stop everything" on the phone
        conn.execute(insert(ContactPreference).values(contact_id="g1", sms_opted_out_at=now))
        conn.execute(insert(ContactPreference).values(contact_id="g2", all_opted_out_at=now))

    report = run_dispatch(engine, settings)

    out = settings.resolve(settings.output_dir)
    assert lines(out / "family-sms.jsonl") == []
    # g1 stopped texts, not email: the same notice goes by email instead.
    assert [m["message"]["to"] for m in lines(out / "family-email.jsonl")] == ["rosa@example.org"]
    by_contact = {i.contact_id: i for i in items(engine, "family_notice")}
    assert (by_contact["g2"].status, by_contact["g2"].reason) == ("suppressed", "opted_out")
    assert by_contact["g1"].status == "delivered"
    assert report.suppressed == {"opted_out": 1}


def test_a_message_due_in_quiet_hours_waits_for_the_window_then_goes(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = family(tmp_path / "data")
    window = {"sending_window": {"start": "08:00", "end": "21:00"}}
    settings = make_settings(d.root, policy=window)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    # Pinned to a night ahead of the real clock, so items queued now are already due.
    night_day = datetime.now(CHICAGO).date() + timedelta(days=2)
    late = datetime.combine(night_day, datetime.min.time(), tzinfo=CHICAGO).replace(hour=23)

    night = dispatch(engine, Deliverer(engine, settings, clock=lambda: late), settings.outbox)

    out = settings.resolve(settings.output_dir)
    assert night.deferred == {"quiet_hours": 2} and night.delivered == 1  # the task is not held
    assert lines(out / "family-sms.jsonl") == []
    opening = late.replace(hour=8) + timedelta(days=1)
    for notice in items(engine, "family_notice"):
        assert notice.status == "pending" and notice.reason == "deferred: quiet_hours"
        due = notice.next_attempt_at
        assert (due if due.tzinfo else due.replace(tzinfo=UTC)) == opening

    morning = opening + timedelta(minutes=1)
    day = dispatch(engine, Deliverer(engine, settings, clock=lambda: morning), settings.outbox)

    assert day.delivered == 2
    assert sorted(m["message"]["to"] for m in lines(out / "family-sms.jsonl")) == [
        "+12125550101",
        "+12125550102",
    ]


def guardian_of_siblings(root: Path) -> tuple[TinyDistrict, list[date]]:
    """Three absent siblings with one guardian, g1, reachable by text: three notices for g1."""
    d = TinyDistrict(root)
    d.school()
    days = d.school_days("sch-1", 80)
    siblings = ("s1", "s2", "s3")
    for n, sid in enumerate(siblings, 1):
        d.student(sid, f"100{n}", guardians=("g1",), given=f"Kid{n}")
        for day in days[2:11]:
            d.absent(f"100{n}", day)
    d.guardian("g1", siblings, sms="(212) 555-0101")
    d.write()
    return d, days


@pytest.mark.parametrize("rule", ["family_cap", "resource_repeat"])
def test_a_guardian_of_siblings_claimed_in_one_batch_still_gets_the_cap_and_no_repeats(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, rule: str
) -> None:
    d, days = guardian_of_siblings(tmp_path / "data")
    policy: dict[str, Any] = {"sending_window": None}
    if rule == "family_cap":  # every notice has something new to say; only the cap holds them
        policy |= {"family_cap": {"messages": 2, "days": 7}, "resource_repeat_days": 0}
    else:
        policy |= {"family_cap": {"messages": 9, "days": 7}}
    settings = make_settings(d.root, policy=policy)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    assert len(items(engine, "family_notice")) == 3  # all three fit in the first claimed batch

    run_dispatch(engine, settings)

    texts = lines(settings.resolve(settings.output_dir) / "family-sms.jsonl")
    outcome = Counter((i.status, i.reason) for i in items(engine, "family_notice"))
    if rule == "family_cap":
        assert len(texts) == 2
        assert outcome == {("delivered", None): 2, ("pending", "deferred: family_cap"): 1}
    else:  # the siblings' notices name the same resources: the first one told them all
        assert len(texts) == 1
        assert outcome == {("delivered", None): 1, ("suppressed", "already_sent"): 2}


def test_a_contacts_notices_are_claimed_by_one_worker_at_a_time(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d, days = guardian_of_siblings(tmp_path / "data")
    settings = make_settings(d.root)
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    first, *others = items(engine, "family_notice")
    assert len(others) == 2
    with engine.begin() as conn:  # only g1's first notice is due yet
        conn.execute(
            update(OutboxItem)
            .where(OutboxItem.id != first.id)
            .values(next_attempt_at=datetime(2100, 1, 1, tzinfo=UTC))
        )
    token, held = claim(engine, 50, 60)
    assert [i.id for i in held] == [first.id]
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))

    _, elsewhere = claim(engine, 50, 60)  # another worker, while the first holds g1's notice
    assert elsewhere and not {i.id for i in others} & {i.id for i in elsewhere}

    Dispatcher(engine, Deliverer(engine, settings), settings.outbox).deliver(held, token)
    _, later = claim(engine, 50, 60)  # the first notice is marked: g1's others are free
    assert {i.id for i in others} <= {i.id for i in later}


def test_a_template_with_an_unknown_placeholder_fails_check_config(tmp_path: Path) -> None:
    raw = raw_config_for("sqlite://", tmp_path, tmp_path)
    raw["templates"]["family_notice"]["es"] = "{{ scool }}: recursos: {{ resources_text }}"
    raw["templates"]["family_notice_subject"]["en"] = "Resources {% if %}"
    config = write(tmp_path / "district.yaml", raw)
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    assert result.exit_code == 2, result.output
    assert f"{config}: templates.family_notice.es: unknown placeholder" in result.output
    assert "scool" in result.output
    assert f"{config}: templates.family_notice_subject.en: template error" in result.output


# -- what existed before, kept -------------------------------------------------------------------


def test_a_failing_sink_is_retried_with_backoff_then_dead_lettered(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "tasks.jsonl").mkdir(parents=True)  # the task file cannot be written: transient
    overrides = {"outbox": {"max_attempts": 2, "base_delay_seconds": 60}}
    settings, engine = evaluated(db_url, district, out, **overrides)
    first = run_dispatch(engine, settings)
    assert first.retried > 0 and first.delivered > 0  # family messages still go out
    assert statuses(engine, "task_upsert") == {"pending": first.retried}
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))  # make them due
        errors = conn.execute(
            text("SELECT DISTINCT last_error FROM outbox WHERE status = 'pending'")
        )
        assert all("cannot write" in e for (e,) in errors)
    second = run_dispatch(engine, settings)
    assert second.dead == first.retried and statuses(engine)["pending"] == 0
    assert {i.attempts for i in items(engine) if i.status == "dead"} == {2}


def test_every_delivery_records_a_disclosure(db_url: str, district: Path, tmp_path: Path) -> None:
    settings, engine = evaluated(db_url, district, tmp_path / "out")
    run_dispatch(engine, settings)
    with engine.connect() as conn:
        delivered = conn.execute(text("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'"))
        disclosed = conn.execute(
            text("SELECT recipient_kind, COUNT(*) FROM disclosures GROUP BY recipient_kind")
        ).all()
        n = delivered.scalar_one()
    kinds = dict(disclosed)
    assert n > 0 and sum(kinds.values()) == n
    assert set(kinds) == {"staff_tool", "family"}
