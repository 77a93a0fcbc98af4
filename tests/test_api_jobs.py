"""Sync status per source, and jobs asked for through the API and run by `casebridge worker`."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_config
from sqlalchemy import Engine, insert, select, update

from service.cli import main
from service.clock import utcnow
from service.job_requests import claim_next, finish, request_job
from service.models import JobRequest, SyncRun
from tests.api_world import World, build_world


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    return build_world(engine, db_url, tmp_path)


def job(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(JobRequest.__table__).where(JobRequest.id == job_id)).one()


def test_sync_status_shows_each_source_and_hides_what_an_error_quoted(world: World) -> None:
    admin = world.headers("it", "admin")
    assert world.get("/sync/status", {}).status_code == 401
    assert world.get("/sync/status", world.headers("dash", "cases:read")).status_code == 403

    ok = {s["source"]: s for s in world.get("/sync/status", admin).get_json()["sources"]}

    assert list(ok) == ["roster", "sis-export"]
    roster = ok["roster"]
    assert (roster["kind"], roster["last_run"]["outcome"]) == ("oneroster_csv", "ok")
    assert roster["last_run"]["rows"]["read"] == 27 and roster["last_run"]["rows"]["inserted"] == 26
    assert 0 <= roster["lag_seconds"] < 600
    assert roster["quarantined_open"] == 0 and roster["cursors"] == []

    with world.engine.begin() as conn:
        conn.execute(insert(SyncRun).values(
            source="sis-export", started_at=utcnow(), finished_at=utcnow(),
            stats={"error": "unexpected KeyError: 'Ana Lopez'"},
        ))  # fmt: skip
    failed = world.get("/sync/status", admin)
    sis = {s["source"]: s for s in failed.get_json()["sources"]}["sis-export"]
    run = sis["last_run"]
    assert (run["outcome"], run["error"]) == ("failed", "unexpected KeyError")
    assert "Ana" not in failed.get_data(as_text=True)
    # Lag counts from the last run that worked, not from the failure.
    assert sis["lag_seconds"] >= ok["sis-export"]["lag_seconds"]


def test_a_requested_job_is_run_once_by_a_worker(world: World, db_url: str, tmp_path: Path) -> None:
    admin = world.headers("it lead", "admin")
    c = world.client
    assert c.post("/jobs/sync").status_code == 401
    assert c.post("/jobs/sync", headers=world.headers("dash", "cases:write")).status_code == 403
    assert c.post("/jobs/reindex", headers=admin).status_code == 422

    first = c.post("/jobs/evaluate", headers=admin)
    second = c.post("/jobs/evaluate", headers=admin)

    assert first.status_code == second.status_code == 202
    assert first.headers["Location"] == f"/jobs/{first.get_json()['id']}"
    assert (first.get_json()["state"], first.get_json()["joined"]) == ("requested", False)
    assert second.get_json()["id"] == first.get_json()["id"] and second.get_json()["joined"]
    assert first.get_json()["requested_by"] == "it lead"
    dispatch = c.post("/jobs/dispatch", headers=admin).get_json()["id"]
    assert c.get(first.headers["Location"]).status_code == 401
    assert (
        c.get(first.headers["Location"], headers=world.headers("r", "cases:read")).status_code
        == 403
    )
    waiting = c.get(first.headers["Location"], headers=admin).get_json()
    assert (waiting["state"], waiting["started_at"]) == ("requested", None)

    config = write_config(tmp_path / "district.yaml", db_url, world.settings.base_dir,
                          tmp_path / "out")  # fmt: skip
    ran = CliRunner().invoke(main, ["--config", str(config), "worker", "--once"])

    assert ran.exit_code == 0, ran.output
    assert "ran 2 requested job(s)" in ran.output
    done = c.get(first.headers["Location"], headers=admin).get_json()
    assert (done["state"], done["outcome"], done["attempts"]) == ("succeeded", "ok", 1)
    assert done["result"]["students_evaluated"] == 3 and done["finished_at"]
    delivered = c.get(f"/jobs/{dispatch}", headers=admin).get_json()
    assert delivered["state"] == "succeeded" and delivered["result"]["delivered"] == 4
    # Finished: the next request is a new run.
    assert c.post("/jobs/evaluate", headers=admin).get_json()["id"] != first.get_json()["id"]
    assert c.get("/jobs/999999", headers=admin).status_code == 404


def test_a_job_never_runs_beside_itself_and_a_dead_workers_job_is_taken_over(
    world: World,
) -> None:
    engine = world.engine
    first = request_job(engine, "sync", "it")
    running = claim_next(engine, holder="worker-a")
    assert running is not None and running.id == first.id
    queued = request_job(engine, "sync", "it")  # asked again while it runs: one more run
    assert queued.id != first.id and not queued.joined

    assert claim_next(engine, holder="worker-b") is None  # not beside the running one

    assert finish(engine, running, "succeeded", "ok", {})
    follow_up = claim_next(engine, holder="worker-b")
    assert follow_up is not None and follow_up.id == queued.id
    # worker-b dies: its lease runs out and another worker runs the job again.
    with engine.begin() as conn:
        conn.execute(update(JobRequest).where(JobRequest.id == queued.id)
                     .values(lease_until=utcnow() - timedelta(seconds=1)))  # fmt: skip
    taken_over = claim_next(engine, holder="worker-c")
    assert taken_over is not None and (taken_over.id, taken_over.attempts) == (queued.id, 2)
    assert not finish(engine, follow_up, "succeeded", "late", {})  # fenced: too late
    assert job(engine, queued.id).holder == "worker-c"


def test_concurrent_workers_claim_one_request_once(world: World) -> None:
    requested = request_job(world.engine, "dispatch", "it")
    claims: list[Any] = []
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        start.wait()
        claims.append(claim_next(world.engine, holder=name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    won = [c for c in claims if c is not None]
    assert [c.id for c in won] == [requested.id]
    assert job(world.engine, requested.id).state == "running"
