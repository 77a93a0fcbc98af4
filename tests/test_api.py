"""The HTTP API's health check: what a load balancer or uptime monitor sees."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from conftest import settings_for
from sqlalchemy import Engine, create_engine

from service import db
from service.api import create_app

SECRET = "Sup3r-S3cret-pw"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthz_reports_ok_and_the_schema_revision(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    head = ScriptDirectory.from_config(db.alembic_config(db_url)).get_current_head()
    client = create_app(settings, engine).test_client()

    response = client.get("/healthz")

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["schema_revision"] == head


@pytest.fixture(params=["sqlite", "postgres"])
def unreachable(request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    """A URL (with a password, for PostgreSQL) and an engine that cannot connect."""
    if request.param == "sqlite":
        # /proc does not allow creating directories: the file can never be opened.
        url = "sqlite:////proc/nonexistent/casebridge-x.db"
        eng = create_engine(url)
    else:
        url = f"postgresql+psycopg://casebridge:{SECRET}@127.0.0.1:{closed_port()}/casebridge"
        eng = db.make_engine(url, connect_args={"connect_timeout": 3})
    yield url, eng
    eng.dispose()


def test_healthz_is_503_without_leaking_the_connection_string(
    unreachable: tuple[str, Engine], tmp_path: Path
) -> None:
    url, eng = unreachable
    settings = settings_for(url, tmp_path / "data", tmp_path / "out")
    client = create_app(settings, eng).test_client()

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert response.get_json()["status"] != "ok"
    for leak in (SECRET, url, "casebridge-x.db", "/proc/nonexistent", "127.0.0.1", "psycopg"):
        assert leak not in body, f"/healthz body reveals {leak!r}: {body}"


def test_readyz_follows_the_scheduler_heartbeat(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from jobs.scheduler import beat
    from service.models import SchedulerHeartbeat

    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    client = create_app(settings, engine).test_client()

    first = client.get("/readyz")
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["checks"]["scheduler"] == "no scheduler has led yet"

    beat(engine, datetime.now(UTC))
    assert client.get("/readyz").get_json()["checks"]["scheduler"]["fresh"] is True
    with engine.begin() as conn:  # the leader died an hour ago and nobody took over
        conn.execute(
            SchedulerHeartbeat.__table__.update().values(
                beat_at=datetime.now(UTC) - timedelta(hours=1)
            )
        )
    stale = client.get("/readyz")
    assert stale.status_code == 503
    assert stale.get_json()["checks"]["scheduler"]["fresh"] is False


def test_readyz_says_when_the_database_is_behind_the_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    settings = settings_for(url, tmp_path / "data", tmp_path / "out")
    client = create_app(settings, create_engine(url)).test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "Run `casebridge db upgrade` first" in answer.get_json()["checks"]["database"]
