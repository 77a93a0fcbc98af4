"""Dispatch benchmark: how fast the outbox turns intents into deliveries (file sinks).

    python bench/bench_dispatch.py [--students 20000] [--databases sqlite,postgres]
                                   [--workers 1] [--workdir bench/.data-dispatch]

Generates a synthetic district, syncs and evaluates it (not timed), then times `dispatch`:
every item is claimed under a fenced lease, planned against the database (send-time policy,
rendering), delivered to the JSON Lines sinks (non-idempotent channels commit `sending` first)
and marked with its disclosure. With `--workers N` (PostgreSQL), N dispatcher processes share
the outbox. Prints items per second and the mix of outcomes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import raw_config_for  # noqa: E402
from tools.synthetic import generate_district  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "--config", str(config), *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip


def outcome_counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, status, COUNT(*) FROM outbox GROUP BY 1, 2"))
        return {f"{k}/{s}": n for k, s, n in rows}


def bench(kind: str, students: int, workers: int, workdir: Path, data: Path) -> dict[str, object]:
    run_dir = workdir / kind
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    name = None
    if kind == "sqlite":
        url = f"sqlite:///{run_dir / 'casebridge.db'}"
    else:
        name = f"cb_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        url = f"{PG_URL}/{name}"
    try:
        raw = raw_config_for(url, data, run_dir / "out")
        config = run_dir / "district.yaml"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        cli(config, "db", "upgrade")
        cli(config, "sync")
        cli(config, "evaluate")
        queued = sum(outcome_counts(url).values())
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "service.cli", "--config", str(config), "dispatch"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers if kind == "postgres" else 1)
        ]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"dispatch failed: {err[-2000:]}")
        seconds = time.perf_counter() - started
        return {
            "database": kind,
            "workers": len(procs),
            "items": queued,
            "seconds": round(seconds, 2),
            "items_per_second": round(queued / seconds, 1),
            "outcomes": outcome_counts(url),
        }
    finally:
        if name:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--students", type=int, default=20_000)
    ap.add_argument("--databases", default="sqlite,postgres")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".data-dispatch")
    args = ap.parse_args()
    data = args.workdir / f"district-{args.students}"
    if not (data / "oneroster" / "manifest.csv").exists():
        generate_district(data, students=args.students, seed=7)
    for kind in args.databases.split(","):
        print(json.dumps(bench(kind, args.students, args.workers, args.workdir, data)), flush=True)


if __name__ == "__main__":
    main()
