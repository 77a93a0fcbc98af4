"""What the dispatch benches share: a scratch database, a district synced and evaluated, copies
of it to run the same outbox again, and N dispatcher processes timed until the outbox is empty
(`casebridge dispatch` as a whole, or only the dispatch inside already started workers)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@contextmanager
def database_copy(kind: str, url: str, run_dir: Path, label: str) -> Iterator[str]:
    """A copy of the database at `url` (an evaluated district), dropped afterwards: each run
    starts from the same outbox."""
    if kind == "sqlite":
        source = Path(url.removeprefix("sqlite:///"))
        target = run_dir / f"copy-{label}.db"
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        yield f"sqlite:///{target}"
        return
    template = url.rsplit("/", 1)[1]
    name = f"{template}_{label}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
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


# A worker: starts, loads the configuration and opens the database, says "ready", waits for the
# go, then times one `dispatch` pass until nothing is due.
WORKER = """
import json, sys, time
from service.config import load_settings
from service.pipeline import open_engine, run_dispatch
settings = load_settings(sys.argv[1])
engine = open_engine(settings)
print("ready", flush=True)
sys.stdin.readline()
started, cpu = time.perf_counter(), time.process_time()
r = run_dispatch(engine, settings)
print(json.dumps({
    "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
    "delivered": r.delivered, "lost_claims": r.lost_claims, "dead": r.dead,
    "settled": r.delivered + r.superseded + sum(r.suppressed.values())
               + sum(r.deferred.values()) + r.dead + r.needs_review,
}), flush=True)
"""


@dataclass
class DispatchRun:
    workers: int
    seconds: float  # from the go until the last worker finished
    settled: int  # items each worker delivered, suppressed, superseded, deferred or dead-lettered
    delivered: int
    lost_claims: int
    cpu_seconds: float  # the workers' own CPU time (not the database server's)


def dispatch_workers(config: Path, workers: int) -> DispatchRun:
    """Start `workers` dispatcher processes, let them all go at once, and time the dispatch
    alone (interpreter start-up, imports and configuration loading are not in it)."""
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config)],
            cwd=ROOT,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
            text=True,
        )
        for _ in range(workers)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"worker failed to start: {p.communicate()[1][-2000:]}")
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"dispatch failed: {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    seconds = time.perf_counter() - started
    return DispatchRun(
        workers=workers,
        seconds=seconds,
        settled=sum(r["settled"] for r in reports),
        delivered=sum(r["delivered"] for r in reports),
        lost_claims=sum(r["lost_claims"] for r in reports),
        cpu_seconds=sum(r["cpu_seconds"] for r in reports),
    )
