"""Referral intake benchmark: `POST /referrals` under `casebridge serve` (gunicorn).

    python bench/bench_referrals.py [--students 2000] [--databases postgres,sqlite]
                                    [--workers 2] [--threads 4] [--clients 2]
                                    [--connections 8] [--seconds 20]

Generates a synthetic district, syncs and evaluates it (not timed), creates a
`referrals:create` token, and starts `casebridge serve` on a free local port. Then
`--clients` load processes, `--connections` keep-alive connections in all, post referrals
for `--seconds` after a 3 s warm-up. Every request is a different referral: four in five
name a real student by local id (recorded; the worker then joins or opens the case and
queues its staff tasks), one in five names nobody the district knows (the unmatched queue);
half give consent to contact the family. Prints requests/s and latency percentiles (the
client's wall time per request, connection reuse included), the answers by status, then times
the worker's placement of the recorded referrals on their cases, and shows what the database
holds afterwards, against issue 10's target: 300 requests/s with p99 under 100 ms.

The load processes run on the same cores as the server; their CPU is printed, so a reader
can see how much of the machine the client took. The referral rate limit is raised for the
run: the bench measures the route, not the limiter's refusals.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import yaml  # noqa: E402

from bench.dispatch_rig import evaluated, scratch_database  # noqa: E402
from tests.conftest import raw_config_for  # noqa: E402
from tools.synthetic import generate_district  # noqa: E402

TARGET_RPS = 300
TARGET_P99_MS = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def student_ids(url: str) -> list[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT local_id FROM students WHERE local_id IS NOT NULL ORDER BY local_id"
            return [r[0] for r in conn.execute(text(query))]
    finally:
        engine.dispose()


def referral(n: int, client: int, students: list[str]) -> dict[str, Any]:
    """The n-th referral of a connection: a real student four times in five."""
    if n % 5 == 4:
        student: dict[str, Any] = {"first_name": f"Nobody{client}", "last_name": f"Known{n}"}
    else:
        student = {"local_id": students[(n * 7919 + client * 104729) % len(students)]}
    return {
        # A different referrer each time: the same referrer, student, concerns and day would
        # be a repeat of the first referral (answered, not recorded again).
        "referrer": {"name": f"Teacher {client}-{n}", "role": "teacher",
                     "relationship": "math teacher", "email": f"t{client}-{n}@example.org"},
        "student": student,
        "concerns": ["attendance", "basic_needs"] if n % 3 else ["academics"],
        "note": f"bench referral {client}-{n}: missing class, seems hungry",
        "urgency": ("routine", "soon", "urgent")[n % 3],
        "family_contact_consent": n % 2 == 0,
    }  # fmt: skip


def connection_loop(
    base: str, token: str, client: int, students: list[str], start: float, stop: float,
    out: list[tuple[float, float, int]],
) -> None:  # fmt: skip
    """One keep-alive connection posting back to back; (sent at, seconds, status) per request."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    n = 0
    while True:
        now = time.time()
        if now >= stop:
            return
        body = referral(n, client, students)
        t0 = time.perf_counter()
        try:
            status = session.post(f"{base}/referrals", json=body, headers=headers, timeout=30)
            code = status.status_code
        except requests.RequestException:
            code = 0
        elapsed = time.perf_counter() - t0
        if now >= start:  # the warm-up is not counted
            out.append((now, elapsed, code))
        n += 1


def load_process(
    base: str, token: str, first_client: int, connections: int, students: list[str],
    start: float, stop: float, results: Any,
) -> None:  # fmt: skip
    samples: list[tuple[float, float, int]] = []
    threads = [
        threading.Thread(target=connection_loop,
                         args=(base, token, first_client + i, students, start, stop, samples))
        for i in range(connections)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put({"samples": samples, "cpu": usage.ru_utime + usage.ru_stime})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def wait_healthy(base: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"casebridge serve exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("casebridge serve did not answer /healthz in time")


def database_after(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    queries = {
        "person referrals": "SELECT COUNT(*) FROM person_referrals",
        "  matched": "SELECT COUNT(*) FROM person_referrals WHERE state = 'matched'",
        "  unmatched": "SELECT COUNT(*) FROM person_referrals WHERE state = 'unmatched'",
        "  on a case": "SELECT COUNT(*) FROM person_referrals WHERE case_id IS NOT NULL",
        "task items queued (pending)": (
            "SELECT COUNT(*) FROM outbox WHERE kind = 'task_upsert' AND status = 'pending'"
        ),
        "family notices queued": (
            "SELECT COUNT(*) FROM outbox WHERE kind = 'family_notice' AND status = 'pending'"
        ),
    }
    try:
        with engine.connect() as conn:
            return {k: int(conn.execute(text(q)).scalar_one()) for k, q in queries.items()}
    finally:
        engine.dispose()


def time_placement(config: Path) -> dict[str, Any]:
    """What the worker does next: put every recorded referral whose student was found on its
    case (`place_received`, batches of 200), timed in a child process like a worker's pass."""
    code = (
        "import json, sys, time\n"
        "from service.config import load_settings\n"
        "from service.pipeline import open_engine\n"
        "from service.referrals import place_received\n"
        "settings = load_settings(sys.argv[1])\n"
        "engine = open_engine(settings)\n"
        "t = time.perf_counter()\n"
        "n = place_received(engine, settings)\n"
        "print(json.dumps({'placed': n, 'seconds': time.perf_counter() - t}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    result = json.loads(out)
    seconds = max(result["seconds"], 1e-9)
    return {
        "placed": result["placed"],
        "placement_seconds": round(seconds, 2),
        "placed_per_s": round(result["placed"] / seconds, 1),
    }


def bench_one(kind: str, args: argparse.Namespace, district: Path) -> dict[str, Any]:
    run_dir = Path(args.workdir) / f"run-{kind}"
    with scratch_database(kind, run_dir) as url:
        raw = raw_config_for(url, district, run_dir / "out")
        raw.setdefault("api", {})["referral_rate_limit"] = "1000000 per minute"
        config = evaluated(raw, run_dir)
        # Dispatch is not part of this bench: the queued tasks stay pending and are counted.
        token = subprocess.run(
            [sys.executable, "-m", "service.cli", "--config", str(config), "token", "create",
             "--name", "bench-form", "--scope", "referrals:create"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        secret = next(w for w in token.split() if w.startswith("cbt_"))
        students = student_ids(url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(config), "serve",
             "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
             "--threads", str(args.threads), "--access-log", "off"],
            cwd=ROOT, text=True, stdout=subprocess.DEVNULL,
            stderr=(run_dir / "serve.log").open("w"),  # kept: a 5xx is explained there
        )  # fmt: skip
        try:
            wait_healthy(base, server)
            load_before = os.getloadavg()[0]
            start = time.time() + 3.0  # warm-up: connections open, workers import lazily
            stop = start + args.seconds
            results: Any = mp.Queue()
            per_client = [args.connections // args.clients] * args.clients
            per_client[0] += args.connections - sum(per_client)
            procs = []
            first = 0
            for count in per_client:
                p = mp.Process(
                    target=load_process,
                    args=(base, secret, first, count, students, start, stop, results),
                )
                p.start()  # fmt: skip
                procs.append(p)
                first += count
            gathered = [results.get() for _ in procs]
            for p in procs:
                p.join()
        finally:
            server.terminate()
            server.wait(timeout=60)
        placement = time_placement(config)
        samples = [s for g in gathered for s in g["samples"]]
        ok = [s for s in samples if s[2] == 201]
        latencies_ms = [s[1] * 1000 for s in ok]
        statuses: dict[str, int] = {}
        for _, _, code in samples:
            statuses[str(code)] = statuses.get(str(code), 0) + 1
        return {
            "database": kind,
            "gunicorn": f"{args.workers} workers x {args.threads} threads",
            "connections": args.connections,
            "seconds": args.seconds,
            "requests": len(samples),
            "created": len(ok),
            "statuses": statuses,
            "requests_per_s": round(len(ok) / args.seconds, 1),
            "p50_ms": round(percentile(latencies_ms, 50), 1),
            "p95_ms": round(percentile(latencies_ms, 95), 1),
            "p99_ms": round(percentile(latencies_ms, 99), 1),
            "mean_ms": round(statistics.fmean(latencies_ms), 1) if latencies_ms else None,
            "client_cpu_s": round(sum(g["cpu"] for g in gathered), 1),
            "load_before": round(load_before, 2),
            **placement,
            "database_after": database_after(url),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--databases", default="postgres,sqlite")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / ".data-referrals"))
    args = parser.parse_args()
    district = Path(args.workdir) / f"district-{args.students}"
    if not (district / ".complete").exists():
        generate_district(district, students=args.students, seed=7)
        (district / ".complete").write_text("ok")
    rows = []
    for kind in args.databases.split(","):
        row = bench_one(kind, args, district)
        print(json.dumps(row))
        rows.append(row)
    print()
    print("| database | gunicorn | conns | requests/s | p50 ms | p95 ms | p99 ms | statuses "
          "| client CPU s | result |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = (
            "PASS" if r["requests_per_s"] >= TARGET_RPS and r["p99_ms"] < TARGET_P99_MS
            else "FAIL"
        )  # fmt: skip
        print(f"| {r['database']} | {r['gunicorn']} | {r['connections']} | "
              f"{r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['statuses']} | {r['client_cpu_s']} | {verdict} |")  # fmt: skip
    print()
    for r in rows:
        print(f"{r['database']}: the worker then placed {r['placed']} referrals on their cases "
              f"in {r['placement_seconds']} s ({r['placed_per_s']}/s)")  # fmt: skip
    for r in rows:
        print(f"\n{r['database']}, afterwards:", yaml.safe_dump(r["database_after"]).strip())
    print(f"\nTarget (issue 10): {TARGET_RPS} requests/s, p99 under {TARGET_P99_MS:.0f} ms.")


if __name__ == "__main__":
    main()
