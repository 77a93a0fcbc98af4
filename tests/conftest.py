"""Fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a throwaway database per test on the local server. Without a server they
skip with a reason; under CI=true they fail instead, because CI must prove both databases.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import Engine

from service import db
from service import logging as cb_logging
from service.config import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "config" / "district.yaml"
PG_ADMIN_DSN = os.environ.get(
    "CASEBRIDGE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL = os.environ.get("CASEBRIDGE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")

_pg_state: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A command run in-process configures logging for the process: undo it after each test."""
    yield
    cb_logging.reset()


def _pg_problem() -> str | None:
    if "problem" not in _pg_state:
        try:
            with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
                _pg_state["problem"] = None
        except psycopg.Error as exc:
            _pg_state["problem"] = f"no PostgreSQL server answers at {PG_ADMIN_DSN}: {exc}"
    return _pg_state["problem"]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'casebridge.db'}"
        db.upgrade(url)
        yield url
        return
    problem = _pg_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests, but {problem}")
        pytest.skip(problem)
    name = f"cb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{PG_URL}/{name}"
    try:
        db.upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


def example_config() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))


def raw_config_for(db_url: str, data_dir: Path, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The shipped example configuration as a mapping, pointed at `data_dir` and a database."""
    raw = copy.deepcopy(example_config())
    raw["database"] = {"url": db_url}
    raw["output_dir"] = str(out_dir)
    for source in raw["sources"]:
        sub = "oneroster" if source["kind"] == "oneroster_csv" else "sis"
        source["path"] = str(data_dir / sub)
    # Tests run at any hour: quiet hours are tested on their own, with a pinned clock.
    raw.setdefault("policy", {})["sending_window"] = None
    for key, value in overrides.items():
        raw[key] = value
    return raw


def settings_for(db_url: str, data_dir: Path, out_dir: Path, **overrides: Any) -> Settings:
    raw = raw_config_for(db_url, data_dir, out_dir, **overrides)
    return parse_settings(raw, "test-config.yaml", data_dir)


def write_config(path: Path, db_url: str, data_dir: Path, out_dir: Path, **overrides: Any) -> Path:
    """The same configuration as a YAML file, for tests that run the real CLI."""
    path.write_text(yaml.safe_dump(raw_config_for(db_url, data_dir, out_dir, **overrides)))
    return path


@pytest.fixture
def make_settings(db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def build(data_dir: Path, **overrides: Any) -> Settings:
        return settings_for(db_url, data_dir, tmp_path / "out", **overrides)

    return build
