"""What the dispatch benches share: a scratch database, a district synced and evaluated, and N
`casebridge dispatch` processes timed until the outbox is empty."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "--config", str(config), *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip


@contextmanager
def scratch_database(kind: str, run_dir: Path) -> Iterator[str]:
    """An empty SQLite file or PostgreSQL database in a clean `run_dir`, dropped afterwards."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if kind == "sqlite":
        yield f"sqlite:///{run_dir / 'casebridge.db'}"
        return
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_URL}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def evaluated(raw: dict[str, Any], run_dir: Path) -> Path:
    """Write the config, migrate, sync and evaluate (not timed); the config's path."""
    config = run_dir / "district.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cli(config, "db", "upgrade")
    cli(config, "sync")
    cli(config, "evaluate")
    return config


def timed_dispatch(config: Path, workers: int) -> float:
    """Seconds for `workers` dispatch processes to empty the outbox together."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(config), "dispatch"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"dispatch failed: {err[-2000:]}")
    return time.perf_counter() - started
