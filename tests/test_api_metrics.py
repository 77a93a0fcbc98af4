"""What a monitoring system sees: Prometheus metrics read from the database at scrape time,
request latency by route template, and destinations' circuits in /readyz and /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, settings_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, update

from connectors.destinations.http_base import CircuitBreaker
from service.api import create_app
from service.clock import utcnow
from service.models import OutboxItem
from service.pipeline import run_dispatch
from tests.api_world import World, build_world
from tests.test_api import closed_port


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    return build_world(engine, db_url, tmp_path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_what_the_database_holds_without_a_token(world: World) -> None:
    run_dispatch(world.engine, world.settings)
    with world.engine.begin() as conn:  # one task dead, one notice held back by policy
        first_task = conn.execute(
            select(OutboxItem.id).where(OutboxItem.kind == "task_upsert").order_by(OutboxItem.id)
        ).scalars().first()  # fmt: skip
        conn.execute(update(OutboxItem).where(OutboxItem.id == first_task)
                     .values(status="dead", reason="permanent error"))  # fmt: skip
        conn.execute(update(OutboxItem).where(OutboxItem.kind == "family_notice")
                     .values(status="suppressed", reason="opted_out"))  # fmt: skip
    reader = world.headers("dash", "cases:read")
    case = world.case_of["s1"]
    assert world.get(f"/cases/{case}", reader).status_code == 200
    assert world.get("/cases/999999", reader).status_code == 404

    answer = world.client.get("/metrics")

    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    found = samples(answer.get_data(as_text=True))
    assert value(found, "casebridge_metrics_database_up") == 1
    assert value(found, "casebridge_outbox_items", target="tasks", status="delivered") == 2
    assert value(found, "casebridge_deliveries_total", target="tasks") == 2
    assert value(found, "casebridge_delivery_failures_total", target="tasks") == 1
    assert value(found, "casebridge_suppressions_total", reason="opted_out") == 1
    assert value(found, "casebridge_rule_hits_total", rule="core-course-failure") == 2
    assert value(found, "casebridge_rule_hits_total", rule="chronic-absence") == 1
    assert value(found, "casebridge_sync_rows", source="roster", count="read") == 27
    assert value(found, "casebridge_sync_last_run_failed", source="roster") == 0
    assert 0 <= (value(found, "casebridge_sync_lag_seconds", source="sis-export") or -1) < 600
    # Latency by the route's template: one series for every case, not one per case id.
    route = "/cases/<int:case_id>"
    hist = "casebridge_http_request_duration_seconds_count"
    assert value(found, hist, route=route, method="GET", status="200") == 1
    assert value(found, hist, route=route, method="GET", status="404") == 1
    text = answer.get_data(as_text=True)
    assert "/cases/999999" not in text
    for student in ("Ana", "Ben", "Cai", "s1", "1001"):
        assert f'"{student}"' not in text and f"{student} " not in text


def test_due_items_report_their_age_by_target(world: World) -> None:
    with world.engine.begin() as conn:  # the waiting tasks have been due for an hour
        conn.execute(update(OutboxItem).where(OutboxItem.kind == "task_upsert")
                     .values(next_attempt_at=utcnow() - timedelta(hours=1)))  # fmt: skip

    found = samples(world.client.get("/metrics").get_data(as_text=True))

    age = value(found, "casebridge_outbox_oldest_due_age_seconds", target="tasks",
                status="pending")  # fmt: skip
    assert age is not None and 3600 <= age < 3600 + 600
    assert value(found, "casebridge_outbox_items", target="tasks", status="pending") == 3


def test_metrics_can_be_moved_or_turned_off(engine: Engine, db_url: str, tmp_path: Path) -> None:
    off = settings_for(db_url, tmp_path / "d", tmp_path / "o", api={"metrics_path": None})
    client = create_app(off, engine).test_client()
    assert client.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").get_json()["paths"]

    moved = settings_for(db_url, tmp_path / "d", tmp_path / "o",
                         api={"metrics_path": "/internal/metrics"})  # fmt: skip
    client = create_app(moved, engine).test_client()
    assert client.get("/internal/metrics").status_code == 200
    assert client.get("/metrics").status_code == 404


def test_a_paused_destination_shows_in_readyz_and_metrics_but_the_api_stays_ready(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    hooks = {"name": "hooks", "kind": "webhook", "url": f"http://127.0.0.1:{closed_port()}/h",
             "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "max_attempts": 1,
             "breaker_failures": 2, "breaker_pause_seconds": 600}  # fmt: skip
    world = build_world(engine, db_url, tmp_path, destinations=[hooks], channels=[])

    run_dispatch(world.engine, world.settings)  # the worker's breaker opens on the refusals

    ready = world.client.get("/readyz")
    assert ready.status_code == 200  # still serving referrals, webhooks and status reports
    circuits = ready.get_json()["checks"]["destinations"]
    assert circuits["status"] == "degraded"
    [paused] = circuits["open"]
    assert (paused["target"], paused["failures"], paused["trial_due"]) == ("hooks", 2, False)
    found = samples(world.client.get("/metrics").get_data(as_text=True))
    assert value(found, "casebridge_destination_circuit_open", target="hooks") == 1

    # A later trial call succeeds in some worker: the circuit closes for everyone.
    breaker = CircuitBreaker("hooks", failures=1, pause=0.0)
    breaker.failure()
    breaker.success()
    assert world.client.get("/readyz").get_json()["checks"]["destinations"] == {
        "status": "ok",
        "open": [],
    }
    found = samples(world.client.get("/metrics").get_data(as_text=True))
    assert value(found, "casebridge_destination_circuit_open", target="hooks") == 0


def test_with_a_multiprocess_directory_each_process_latency_is_summed(tmp_path: Path) -> None:
    """gunicorn workers are separate processes: with PROMETHEUS_MULTIPROC_DIR each writes its
    samples to the directory and a scrape in any of them sums all of them. (No database: the
    health check's 503 is as good a request as any.)"""
    shared = tmp_path / "prom"
    shared.mkdir()
    db_url = f"sqlite:///{tmp_path / 'empty.db'}"
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from pathlib import Path
        from conftest import settings_for
        from service import db
        from service.api import create_app
        tmp = Path({str(tmp_path)!r})
        app = create_app(settings_for({db_url!r}, tmp / "d", tmp / "o"), db.make_engine({db_url!r}))
        for _ in range(3):
            app.test_client().get("/healthz")
    """)  # fmt: skip
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    for _ in range(2):  # two "workers"
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(shared))
    found = samples(generate_latest(registry).decode())
    hist = "casebridge_http_request_duration_seconds_count"
    assert value(found, hist, route="/healthz", method="GET", status="503") == 6
