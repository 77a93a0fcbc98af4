"""OneRoster REST 1.1 (OAuth 1.0a) and 1.2 (OAuth2 scopes) against a real local server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.config import Settings, parse_settings
from service.pipeline import open_engine, run_sync
from tests.conftest import raw_config_for, write_config
from tests.fixtures.http_server import Fault
from tests.fixtures.oneroster_server import OneRosterServer, load_from_csv
from tools.synthetic import generate_district

TABLES = ("schools", "students", "contacts", "student_contacts", "enrollments", "grades")


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("or") / "data"
    generate_district(data, students=60, seed=8)
    return data


def rest_source(base_url: str, version: str = "1.2", auth: str = "oauth2", **extra: Any) -> dict:
    return {"kind": "oneroster_rest", "name": "sis-api", "base_url": base_url, "version": version,
            "auth": auth, "client_id": "cid", "client_secret": "csecret", "page_size": 40,
            "http": {"backoff_base_seconds": 0.01, "max_attempts": 5}, **extra}  # fmt: skip


def settings_with(db_url: str, data: Path, out: Path, source: dict) -> Settings:
    raw = raw_config_for(db_url, data, out, sources=[source])
    return parse_settings(raw, "rest.yaml", data)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t} WHERE active")).scalar_one()
                for t in TABLES}  # fmt: skip


def csv_counts(db_url: str, data: Path, out: Path) -> dict[str, int]:
    """The same district through the CSV source: the reference a REST pull must match."""
    raw = raw_config_for(db_url, data, out)
    raw["sources"] = [raw["sources"][0]]
    settings = parse_settings(raw, "csv.yaml", data)
    engine = open_engine(settings, upgrade=True)  # a fresh reference database
    run_sync(engine, settings)
    return counts(engine)


@pytest.fixture
def server_12(district: Path) -> Iterator[OneRosterServer]:
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.2"), version="1.2")
    server.start()
    yield server
    server.stop()


def test_12_with_oauth2_scopes_lands_what_the_csv_lands(
    db_url: str, district: Path, tmp_path: Path, server_12: OneRosterServer
) -> None:
    expected = csv_counts(f"sqlite:///{tmp_path / 'ref.db'}", district, tmp_path / "o1")
    settings = settings_with(db_url, district, tmp_path / "out", rest_source(server_12.base_url))
    engine = open_engine(settings)
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert counts(engine) == expected
    assert sum(report.quarantined().values()) == 0
    # Gradebook calls went to the gradebook service with a token carrying its scope.
    assert any("/gradebook/v1p2/results" in p for p in server_12.paths())


def test_11_with_oauth1_signatures(db_url: str, district: Path, tmp_path: Path) -> None:
    server = OneRosterServer(load_from_csv(district / "oneroster", "1.1"), version="1.1",
                             auth="oauth1")  # fmt: skip
    server.start()
    try:
        expected = csv_counts(f"sqlite:///{tmp_path / 'ref.db'}", district, tmp_path / "o1")
        source = rest_source(server.base_url, version="1.1", auth="oauth1")
        settings = settings_with(db_url, district, tmp_path / "out", source)
        engine = open_engine(settings)
        [report] = run_sync(engine, settings)
        assert report.error is None, report.error
        assert counts(engine) == expected
        assert all(r.status == 200 for r in server.requests)  # every signature verified
    finally:
        server.stop()


def test_a_delta_reads_only_changes_and_applies_tobedeleted(
    db_url: str, district: Path, tmp_path: Path, server_12: OneRosterServer
) -> None:
    settings = settings_with(db_url, district, tmp_path / "out", rest_source(server_12.base_url))
    engine = open_engine(settings)
    run_sync(engine, settings)
    students = [u for u in server_12.records("students")]
    renamed, removed = students[0]["sourcedId"], students[1]["sourcedId"]
    time.sleep(2.5)  # the watermark is the server clock minus skew: change after it
    server_12.update("users", renamed, familyName="Renamed")
    server_12.mark_deleted("users", removed)
    [report] = run_sync(engine, settings)
    users = report.entities["users"]
    assert (users.read, users.updated) == (2, 2)
    assert report.entities["enrollments"].read == 0
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT last_name FROM students WHERE student_id = :s"), {"s": renamed}
        ).scalar_one()
        gone = conn.execute(
            text("SELECT active FROM students WHERE student_id = :s"), {"s": removed}
        ).scalar_one()
    assert row == "Renamed" and not gone


def test_faults_are_retried_and_never_taken_as_data(
    db_url: str, district: Path, tmp_path: Path, server_12: OneRosterServer
) -> None:
    expected = csv_counts(f"sqlite:///{tmp_path / 'ref.db'}", district, tmp_path / "o1")
    server_12.faults += [
        Fault("/users", status=429, retry_after=1),
        Fault("/enrollments", status=502, times=2),
        Fault("/enrollments", status=503),
        Fault("/classes", kind="html"),
        Fault("/results", kind="truncated"),
        Fault("/orgs", kind="drop"),
    ]
    settings = settings_with(db_url, district, tmp_path / "out", rest_source(server_12.base_url))
    engine = open_engine(settings)
    started = time.monotonic()
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert counts(engine) == expected
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert all(f.times == 0 for f in server_12.faults)


def test_a_token_that_expires_mid_pull_is_refreshed(
    db_url: str, district: Path, tmp_path: Path, server_12: OneRosterServer
) -> None:
    settings = settings_with(db_url, district, tmp_path / "out", rest_source(server_12.base_url))
    engine = open_engine(settings)
    server_12.faults.append(Fault("/enrollments", kind="delay", delay=0.0))
    original = server_12.take_fault

    def expire_then(path: str) -> Fault | None:
        if "/enrollments" in path and server_12.token_requests == 1:
            server_12.expire_tokens()
        return original(path)

    server_12.take_fault = expire_then  # type: ignore[method-assign]
    [report] = run_sync(engine, settings)
    assert report.error is None, report.error
    assert server_12.token_requests == 2
    assert counts(engine)["enrollments"] > 0


def test_a_sync_killed_mid_pull_resumes_to_the_same_data(
    db_url: str, district: Path, tmp_path: Path, server_12: OneRosterServer
) -> None:
    """SIGKILL the CLI halfway through, then sync again: same rows as one clean run."""
    expected = csv_counts(f"sqlite:///{tmp_path / 'ref.db'}", district, tmp_path / "o1")
    server_12.page_delay = 0.05
    source = rest_source(server_12.base_url)
    config = write_config(tmp_path / "c.yaml", db_url, district, tmp_path / "out", sources=[source])
    command = [sys.executable, "-m", "service.cli", "--config", str(config), "sync"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(server_12.paths(lambda r: "/enrollments" in r.path)) < 8:
            assert proc.poll() is None, "the sync finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    settings = parse_settings(raw_config_for(db_url, district, tmp_path / "out", sources=[source]),
                              "c.yaml", district)  # fmt: skip
    engine = open_engine(settings)
    assert counts(engine)["enrollments"] < expected["enrollments"]  # it really stopped halfway
    server_12.page_delay = 0.0
    before = len(server_12.paths(lambda r: "/users" in r.path))
    [report] = run_sync(engine, settings)
    assert report.error is None
    assert counts(engine) == expected
    # Users had finished before the kill: the resumed run asks only for changes since.
    assert report.entities["users"].read == 0
    assert len(server_12.paths(lambda r: "/users" in r.path)) - before == 1
