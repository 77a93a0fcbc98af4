"""The schedules besides the nightly run: follow-ups (the case plan between evaluations),
an extra evaluation, resource refresh and retention, each fired once per slot by the leader."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from jobs.scheduler import Scheduler
from service.cases import follow_up_cases
from service.cli import main
from service.clock import utcnow
from service.config import Settings
from service.models import Case, CaseEvent, JobRun, OutboxItem, QuarantinedRecord
from service.pipeline import run_evaluate, run_sync
from tests.builders import TinyDistrict
from tests.conftest import write_config


def tasks_for(engine: Engine, case_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(OutboxItem.idempotency_key)
                .where(OutboxItem.case_id == case_id, OutboxItem.kind == "task_upsert")
                .order_by(OutboxItem.id)
            ).scalars()
        )


def absent_district(root: Path) -> tuple[TinyDistrict, list]:  # type: ignore[type-arg]
    d = TinyDistrict(root)
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001")
    for day in days[2:8]:
        d.absent("1001", day)
    d.write()
    return d, days


def test_follow_ups_between_evaluations_send_a_due_check_in_once_and_change_nothing_else(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    _, days = absent_district(tmp_path / "data")
    settings = make_settings(tmp_path / "data", channels=[], cases={"check_in_every": 5})
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[19])  # the case opens
    with engine.connect() as conn:
        case_id, revision = conn.execute(select(Case.id, Case.revision)).one()
    before = tasks_for(engine, case_id)

    early = follow_up_cases(engine, settings, days[22])  # no check-in due yet
    assert (early.cases_updated, early.tasks_enqueued) == (0, 0)
    assert tasks_for(engine, case_id) == before

    due = follow_up_cases(engine, settings, days[24])  # five school days: a check-in
    again = follow_up_cases(engine, settings, days[24])
    assert (due.cases_updated, again.cases_updated) == (1, 0)
    with engine.connect() as conn:
        status, new_revision, recovered = conn.execute(
            select(Case.status, Case.revision, Case.recovered_since)
        ).one()
        check_ins = conn.execute(
            select(func.count()).where(CaseEvent.case_id == case_id, CaseEvent.kind == "check_in")
        ).scalar_one()
    assert (status, new_revision, recovered, check_ins) == ("open", revision + 1, None, 1)
    new = tasks_for(engine, case_id)[len(before) :]
    assert new and all(key.endswith(f":rev-{revision + 1}") for key in new)

    # The evaluation that follows does not repeat the check-in the schedule sent.
    run_evaluate(engine, settings, days[24])
    with engine.connect() as conn:
        assert conn.execute(select(Case.revision)).scalar_one() == revision + 1


def test_the_follow_ups_command_reports_what_it_queued(db_url: str, tmp_path: Path) -> None:
    _, days = absent_district(tmp_path / "data")
    config = write_config(
        tmp_path / "district.yaml", db_url, tmp_path / "data", tmp_path / "out",
        channels=[], cases={"check_in_every": 5},
    )  # fmt: skip
    runner = CliRunner()
    base = ["--config", str(config)]
    assert runner.invoke(main, [*base, "db", "upgrade"]).exit_code == 0
    assert runner.invoke(main, [*base, "sync"]).exit_code == 0
    assert runner.invoke(main, [*base, "evaluate", "--as-of", str(days[19])]).exit_code == 0
    result = runner.invoke(main, [*base, "follow-ups", "--as-of", str(days[24])])
    assert result.exit_code == 0, result.output
    assert "1 cases with a check-in due" in result.output
    assert "1 task updates queued" in result.output


def test_the_leader_fires_each_configured_schedule_once_per_slot(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    _, days = absent_district(tmp_path / "data")
    hourly = "0 * * * *"  # one slot per hour: both calls below fall in it
    settings = make_settings(
        tmp_path / "data", channels=[], retention={"quarantine_payload_days": 1},
        as_of=days[19].isoformat(),  # the district's school year, whatever today is
        schedules={"follow_up_cron": hourly, "retention_cron": hourly,
                   "evaluate_cron": hourly},
    )  # fmt: skip
    run_sync(engine, settings)
    with engine.begin() as conn:  # a quarantined record whose payload is past its 1 day
        old = utcnow() - timedelta(days=3)
        conn.execute(
            QuarantinedRecord.__table__.insert().values(
                source="sis", entity="students", record_key="bad-1", reason="no id",
                payload={"givenName": "Planted"}, fingerprint=1, first_seen=old, last_seen=old,
            )
        )  # fmt: skip
    scheduler = Scheduler(engine, settings)
    assert set(scheduler.crons) == {"evaluate", "follow-ups", "retention"}
    assert scheduler.leadership.try_acquire()  # only the leader fires (PostgreSQL: the lock)
    try:
        for name in scheduler.crons:
            scheduler._run_cron(name)
            scheduler._run_cron(name)  # the same minute: the slot is taken
    finally:
        scheduler.leadership.release()

    with engine.connect() as conn:
        runs = conn.execute(select(JobRun.job, JobRun.outcome)).all()
        payload = conn.execute(
            select(QuarantinedRecord.payload).where(QuarantinedRecord.record_key == "bad-1")
        ).scalar_one()
        cases = conn.execute(select(func.count()).select_from(Case)).scalar_one()
    assert sorted(runs) == [("evaluate", "ok"), ("follow-ups", "ok"), ("retention", "ok")]
    assert payload == {}, "retention blanked the old payload"
    assert cases == 1, "the scheduled evaluation opened the case"


def test_schedules_left_out_of_the_configuration_are_not_run(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    absent_district(tmp_path / "data")
    settings = make_settings(tmp_path / "data", channels=[],
                             schedules={"retention_cron": None})  # fmt: skip
    assert Scheduler(engine, settings).crons == {}
