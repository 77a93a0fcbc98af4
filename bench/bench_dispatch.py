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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_rig import evaluated, scratch_database, timed_dispatch  # noqa: E402
from tests.conftest import raw_config_for  # noqa: E402
from tools.synthetic import generate_district  # noqa: E402


def outcome_counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, status, COUNT(*) FROM outbox GROUP BY 1, 2"))
        return {f"{k}/{s}": n for k, s, n in rows}


def bench(kind: str, students: int, workers: int, workdir: Path, data: Path) -> dict[str, object]:
    run_dir = workdir / kind
    with scratch_database(kind, run_dir) as url:
        config = evaluated(raw_config_for(url, data, run_dir / "out"), run_dir)
        queued = sum(outcome_counts(url).values())
        workers = workers if kind == "postgres" else 1
        seconds = timed_dispatch(config, workers)
        return {
            "database": kind,
            "workers": workers,
            "items": queued,
            "seconds": round(seconds, 2),
            "items_per_second": round(queued / seconds, 1),
            "outcomes": outcome_counts(url),
        }


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
