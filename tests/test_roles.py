"""Scale-out on PostgreSQL: workers and schedulers as separate OS processes, some killed.

Three `casebridge worker`s and two `casebridge scheduler`s share one database. A worker and the
leading scheduler are killed with SIGKILL mid-run; the standby scheduler takes the lead, and in
the end every outbox item reached the sink exactly once and no schedule slot fired twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.config import parse_settings
from service.pipeline import open_engine
from tests.conftest import ROOT, raw_config_for
from tests.test_outbox import CLI, PLUGIN_ENV, keys, lines, write
from tools.synthetic import generate_district


def wait_for(what: str, check: Callable[[], bool], seconds: float = 90) -> None:
    """Poll until `check` holds; the deadline only keeps a broken run from hanging CI."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_workers_and_schedulers_killed_mid_run_lose_and_repeat_nothing(
    db_url: str, tmp_path: Path
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several processes share a database on PostgreSQL; SQLite is one process")
    data, out = tmp_path / "data", tmp_path / "out"
    generate_district(data, students=60, seed=21)
    overrides = {
        "channels": [{"name": "sms", "kind": "test_sms", "path": "test-sms.jsonl",
                      "delay_seconds": 0.3}],
        "outbox": {"lease_seconds": 1, "batch_size": 2},
        "schedules": {"sync_cron": "*/3 * * * * *", "dispatch_interval_seconds": 1,
                      "standby_poll_seconds": 0.5, "heartbeat_seconds": 0.5},
    }  # fmt: skip
    raw = raw_config_for(db_url, data, out, **overrides)
    config = write(tmp_path / "district.yaml", raw)
    engine = open_engine(parse_settings(raw, "t", data))
    env = {**os.environ, **PLUGIN_ENV}

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, "--config", str(config), *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    schedulers = [start("scheduler")]
    wait_for(
        "a leader", lambda: scalar(engine, "SELECT holder FROM scheduler_heartbeat") is not None
    )
    schedulers.append(start("scheduler"))
    workers = [start("worker", "--interval", "0.5") for _ in range(3)]
    procs = schedulers + workers
    try:
        wait_for(
            "deliveries under way",
            lambda: (
                (scalar(engine, "SELECT COUNT(*) FROM outbox WHERE status = 'delivered'") or 0) >= 3
            ),
        )
        leader = scalar(engine, "SELECT holder FROM scheduler_heartbeat")
        by_pid = {p.pid: p for p in schedulers}
        leading = by_pid[int(leader.rsplit(":", 1)[1])]
        leading.send_signal(signal.SIGKILL)
        workers[0].send_signal(signal.SIGKILL)
        standby = next(p for p in schedulers if p is not leading)

        wait_for(
            "the standby to lead",
            lambda: scalar(engine, "SELECT holder FROM scheduler_heartbeat").endswith(
                f":{standby.pid}"
            ),
        )
        wait_for(
            "a nightly slot fired by the new leader",
            lambda: (scalar(engine, "SELECT COUNT(*) FROM job_runs WHERE holder LIKE :h "
                                    "AND finished_at IS NOT NULL", h=f"%:{standby.pid}") or 0) >= 1,
        )  # fmt: skip
        wait_for(
            "the outbox to drain",
            lambda: (
                scalar(engine, "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sending')")
                == 0
            ),
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p in workers else signal.SIGKILL)
        for p in procs:
            p.wait(timeout=60)

    assert leading.returncode == -9 and workers[0].returncode == -9
    assert [w.returncode for w in workers[1:]] == [0, 0]  # SIGTERM: a clean stop
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT job, slot, holder FROM job_runs")).all()
        outcome = Counter(
            dict(conn.execute(text("SELECT status, COUNT(*) FROM outbox GROUP BY status")).all())
        )
    assert len({(job, slot) for job, slot, _ in runs}) == len(runs)  # no slot fired twice
    assert {h.rsplit(":", 1)[1] for _, _, h in runs} == {str(leading.pid), str(standby.pid)}
    assert set(outcome) <= {"delivered", "suppressed"}, outcome
    sms = keys(out / "test-sms.jsonl")
    assert sms and max(sms.values()) == 1  # no text twice
    creates = Counter(r["subject"] for r in lines(out / "tasks.jsonl") if r["op"] == "create")
    assert creates and max(creates.values()) == 1  # no task twice
    delivered_family = scalar(
        engine, "SELECT COUNT(*) FROM outbox WHERE kind = 'family_notice' AND status = 'delivered'"
    )
    assert sum(sms.values()) == delivered_family  # nothing lost


def test_a_schedule_slot_fires_once_whoever_fires_it(engine: Engine) -> None:
    from datetime import UTC, datetime

    from jobs.scheduler import fire_once, latest_slot
    from service.config import cron_trigger

    trigger = cron_trigger("0 2 * * *", "America/Chicago")
    now = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)  # 02:30 in Chicago
    slot = latest_slot(trigger, now)
    assert slot is not None and slot.astimezone(UTC) == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    ran: list[str] = []
    assert fire_once(engine, "nightly", slot, lambda: ran.append("first")) is True
    assert fire_once(engine, "nightly", slot, lambda: ran.append("again")) is False
    assert ran == ["first"]
    assert scalar(engine, "SELECT outcome FROM job_runs") == "ok"
