"""The outbox: a crash at any point loses nothing and duplicates nothing a person would see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from service.config import parse_settings
from service.pipeline import open_engine, run_dispatch
from tests.conftest import raw_config_for, write_config
from tools.synthetic import generate_district

CLI = [sys.executable, "-m", "service.cli"]


def casebridge(
    config: Path, *args: str, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CASEBRIDGE_FAULT_INJECT", None)
    if fault:
        env["CASEBRIDGE_FAULT_INJECT"] = fault
    return subprocess.run(
        [*CLI, "--config", str(config), *args], capture_output=True, text=True, env=env, timeout=120
    )


def jsonl_keys(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["idempotency_key"] for line in path.read_text().splitlines())


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            dict(conn.execute(text("SELECT status, COUNT(*) FROM outbox GROUP BY status")).all())
        )


@pytest.fixture
def district(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    generate_district(data, students=60, seed=21)
    return data


@pytest.mark.parametrize("fault", ["before_delivery", "after_delivery"])
def test_a_dispatcher_killed_mid_delivery_delivers_everything_exactly_once(
    db_url: str, district: Path, tmp_path: Path, fault: str
) -> None:
    out = tmp_path / "out"
    config = write_config(tmp_path / "district.yaml", db_url, district, out)
    assert casebridge(config, "sync").returncode == 0
    assert casebridge(config, "evaluate").returncode == 0  # cases and outbox rows committed
    crashed = casebridge(config, "dispatch", fault=fault)
    assert crashed.returncode == 75, crashed.stderr  # the process died mid-delivery
    files = [out / "tasks.jsonl", out / "family-sms.jsonl", out / "family-email.jsonl"]
    written = sum(sum(jsonl_keys(f).values()) for f in files)
    assert written == (1 if fault == "after_delivery" else 0)
    finished = casebridge(config, "dispatch")
    assert finished.returncode == 0, finished.stderr
    engine = open_engine(parse_settings(raw_config_for(db_url, district, out), "t.yaml", district))
    counts = statuses(engine)
    assert set(counts) == {"delivered"}
    keys: Counter[str] = Counter()
    for f in files:
        keys.update(jsonl_keys(f))
    assert sum(keys.values()) == counts["delivered"]  # every item once...
    assert max(keys.values()) == 1  # ...and none twice
    again = casebridge(config, "run")
    assert again.returncode == 0
    assert sum(sum(jsonl_keys(f).values()) for f in files) == sum(keys.values())


def test_a_failing_sink_is_retried_with_backoff_then_dead_lettered(
    db_url: str, district: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "tasks.jsonl").mkdir(parents=True)  # the task file cannot be written: transient
    raw = raw_config_for(
        db_url, district, out, outbox={"max_attempts": 2, "base_delay_seconds": 60}
    )
    settings = parse_settings(raw, "t.yaml", district)
    config = write_config(tmp_path / "d.yaml", db_url, district, out, outbox=raw["outbox"])
    assert casebridge(config, "sync").returncode == 0
    assert casebridge(config, "evaluate").returncode == 0
    engine = open_engine(settings)
    first = run_dispatch(engine, settings)
    tasks = statuses(engine)
    assert first.retried > 0 and first.delivered > 0  # family messages still go out
    assert tasks["pending"] == first.retried
    with engine.connect() as conn:
        conn.execute(text("UPDATE outbox SET next_attempt_at = created_at"))  # make them due
        conn.commit()
        errors = conn.execute(
            text("SELECT DISTINCT last_error FROM outbox WHERE status = 'pending'")
        )
        assert all("cannot write" in e for (e,) in errors)
    second = run_dispatch(engine, settings)
    assert second.dead == first.retried and statuses(engine)["pending"] == 0
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT DISTINCT attempts FROM outbox WHERE status = 'dead'"))
        assert [a for (a,) in attempts] == [2]


def test_every_delivery_records_a_disclosure(db_url: str, district: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = write_config(tmp_path / "district.yaml", db_url, district, out)
    assert casebridge(config, "run").returncode == 0
    settings = parse_settings(raw_config_for(db_url, district, out), "t.yaml", district)
    engine = open_engine(settings)
    with engine.connect() as conn:
        delivered = conn.execute(text("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'"))
        disclosed = conn.execute(
            text("SELECT recipient_kind, COUNT(*) FROM disclosures GROUP BY recipient_kind")
        ).all()
        n = delivered.scalar_one()
    kinds = dict(disclosed)
    assert n > 0 and sum(kinds.values()) == n
    assert set(kinds) == {"staff_tool", "family"}
