"""Dispatch benchmark: how fast the outbox turns intents into deliveries to a local sink.

    python bench/bench_dispatch.py [--students 5000] [--databases sqlite,postgres]
                                   [--workers 1,3] [--batch-size N]
                                   [--workdir bench/.data-dispatch]

Generates a synthetic district, syncs and evaluates it once per database (not timed), then, for
each worker count, runs that many dispatcher processes on a fresh copy of the evaluated
database until the outbox is empty. Every item goes the whole way: a fenced claim, send-time
policy and rendering against the database, the JSON Lines file sinks (the family channel
commits `sending` before it writes, as SMS and email must; each sink takes a claimed batch in
one write and one fsync), and the delivered mark with its delivery link and disclosure record.

The time is the dispatch alone: each worker has started, imported and loaded the configuration
before the clock starts (that start-up, 1.5 to 2.5 s here, is the same for any outbox size).
Prints one JSON line per run, then a table with items/s (everything settled: delivered,
suppressed, superseded), deliveries/s, deliveries/s per worker and the workers' CPU per item,
against issue 10's target of 1,000 deliveries/s per worker. Several workers share a SQLite file
through its write lock; deployments run several only on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.dispatch_rig import (  # noqa: E402
    DispatchRun,
    database_copy,
    dispatch_workers,
    evaluated,
    scratch_database,
)
from tests.conftest import raw_config_for  # noqa: E402
from tools.synthetic import generate_district  # noqa: E402

TARGET_PER_WORKER = 1000  # deliveries/s, issue 10


def outcome_counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, status, COUNT(*) FROM outbox GROUP BY 1, 2"))
            return {f"{k}/{s}": n for k, s, n in rows}
    finally:
        engine.dispose()


def bench(
    kind: str, workers: list[int], batch_size: int | None, workdir: Path, data: Path
) -> list[dict[str, Any]]:
    run_dir = workdir / kind
    results = []
    with scratch_database(kind, run_dir) as url:
        raw = raw_config_for(url, data, run_dir / "out")
        if batch_size:
            raw["outbox"]["batch_size"] = batch_size
        evaluated(raw, run_dir)
        queued = sum(outcome_counts(url).values())
        for n in workers:
            with database_copy(kind, url, run_dir, f"w{n}") as copy:
                config = run_dir / f"district-w{n}.yaml"
                copied = raw_config_for(copy, data, run_dir / f"out-w{n}")
                copied["outbox"] = raw["outbox"]
                config.write_text(yaml.safe_dump(copied), encoding="utf-8")
                run = dispatch_workers(config, n)
                left = outcome_counts(copy)
            results.append(summary(kind, queued, run, left))
            print(json.dumps(results[-1]), flush=True)
    return results


def summary(kind: str, queued: int, run: DispatchRun, outcomes: dict[str, int]) -> dict[str, Any]:
    return {
        "database": kind,
        "workers": run.workers,
        "items": queued,
        "settled": run.settled,
        "delivered": run.delivered,
        "seconds": round(run.seconds, 2),
        "items_per_second": round(run.settled / run.seconds, 1),
        "deliveries_per_second": round(run.delivered / run.seconds, 1),
        "deliveries_per_second_per_worker": round(run.delivered / run.seconds / run.workers, 1),
        "worker_cpu_ms_per_item": round(1000 * run.cpu_seconds / max(run.settled, 1), 2),
        "lost_claims": run.lost_claims,
        "outcomes": outcomes,
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| database | workers | items | seconds | items/s | deliveries/s "
        "| per worker | worker CPU ms/item |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {r['database']} | {r['workers']} | {r['settled']:,} | {r['seconds']} "
        f"| {r['items_per_second']:,.0f} | {r['deliveries_per_second']:,.0f} "
        f"| {r['deliveries_per_second_per_worker']:,.0f} | {r['worker_cpu_ms_per_item']} |"
        for r in results
    ]
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--students", type=int, default=5_000)
    ap.add_argument("--databases", default="sqlite,postgres")
    ap.add_argument("--workers", default="1,3", help="worker counts, comma-separated")
    ap.add_argument("--batch-size", type=int, help="outbox.batch_size (default: the config's)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".data-dispatch")
    args = ap.parse_args()
    data = args.workdir / f"district-{args.students}"
    if not (data / "oneroster" / "manifest.csv").exists():
        generate_district(data, students=args.students, seed=7)
    workers = [int(n) for n in args.workers.split(",")]
    results = []
    for kind in args.databases.split(","):
        results += bench(kind, workers, args.batch_size, args.workdir, data)
    print()
    print(table(results))
    print(f"\ntarget (issue 10): {TARGET_PER_WORKER:,} deliveries/s per worker, to a local sink")


if __name__ == "__main__":
    main()
