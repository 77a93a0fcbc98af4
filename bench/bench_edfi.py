"""Pull a 100,000-student district from a local Ed-Fi ODS-shaped server: casebridge vs
edfi-api-client, same server, same run, same page size, each ODS page answered after a delay.

    python bench/bench_edfi.py [--students 100000] [--page-delay 0.1] [--concurrency 4]

casebridge runs as the real CLI (`casebridge sync`, SQLite, writing every record); the baseline
is edfi-api-client's own pager (change-version stepping with reverse offsets, the pattern its
docs recommend) reading the same resources, without storing them. Politeness is equal in page
size and retries; casebridge keeps at most `--concurrency` requests in flight, edfi-api-client one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.edfi_server import EdFiServer  # noqa: E402
from tests.fixtures.grand_bend import synthetic_edfi  # noqa: E402

RESOURCES = [
    "schools", "sessions", "gradingPeriods", "calendarDates", "students", "contacts",
    "studentContactAssociations", "studentSchoolAssociations", "studentSchoolAttendanceEvents",
    "studentSectionAttendanceEvents", "grades", "disciplineIncidents",
    "studentDisciplineIncidentBehaviorAssociations", "disciplineActions",
]  # fmt: skip


def write_config(base_url: str, work: Path, concurrency: int) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "district.yaml").read_text())
    raw["database"] = {"url": f"sqlite:///{work / 'bench.db'}"}
    raw["output_dir"] = str(work / "out")
    raw["sources"] = [
        {
            "kind": "edfi",
            "name": "ods",
            "base_url": base_url,
            "client_key": "key",
            "client_secret": "secret",
            "page_size": 500,
            "http": {"concurrency": concurrency},
        }
    ]
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def casebridge_sync(config: Path) -> tuple[float, dict[str, Any]]:
    """One `casebridge sync` in a child process; returns seconds and what it read."""
    code = (
        "import json, sys\n"
        "from service.config import load_settings\n"
        "from service.pipeline import open_engine, run_sync\n"
        f"s = load_settings({str(config)!r})\n"
        "[r] = run_sync(open_engine(s), s)\n"
        # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still counts the parent's pages
        # (here the server's 900 MB of data), VmHWM is this program's own peak.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps({'error': r.error, 'read': r.total('read'),"
        " 'rss_mb': int(hwm.split()[1]) / 1024}))\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])


def edfi_api_client_pull(base_url: str, newest: int) -> tuple[float, int]:
    code = (
        "import sys, logging\n"
        "from edfi_api_client import EdFiClient\n"
        f"c = EdFiClient({base_url!r}, 'key', 'secret', api_mode='shared_instance')\n"
        "n = 0\n"
        f"for name in {RESOURCES!r}:\n"
        "    r = c.resource(name, params={'minChangeVersion': 0,"
        f" 'maxChangeVersion': {newest}}})\n"
        "    n += sum(1 for _ in r.get_rows(page_size=500, step_change_version=True,"
        " change_version_step_size=200000, retry_on_failure=True))\n"
        "print(n)\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--page-delay", type=float, default=0.1, help="seconds per ODS page")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--touch", type=float, default=0.01, help="fraction changed before delta")
    args = parser.parse_args()

    started = time.perf_counter()
    data = synthetic_edfi(args.students, seed=7)
    records = sum(len(data.get(r, [])) for r in RESOURCES)
    print(f"district: {args.students:,} students, {records:,} records "
          f"(built in {time.perf_counter() - started:.1f} s)")  # fmt: skip
    server = EdFiServer(data, page_delay=args.page_delay, token_ttl=3600)
    base_url = server.start()
    print(f"server: {base_url}, {args.page_delay * 1000:.0f} ms per page, 500 records per page")
    try:
        with tempfile.TemporaryDirectory(prefix="cb-edfi-bench-") as tmp:
            work = Path(tmp)
            config = write_config(base_url, work, args.concurrency)
            subprocess.run([sys.executable, "-m", "service.cli", "--config", str(config),
                            "db", "upgrade"], check=True, capture_output=True)  # fmt: skip
            ours, info = casebridge_sync(config)
            assert info["error"] is None, info["error"]
            theirs, their_records = edfi_api_client_pull(base_url, server.newest_change_version)
            touched = 0
            for name in ("students", "contacts", "studentSchoolAttendanceEvents",
                         "studentSchoolAssociations"):  # fmt: skip
                touched += len(server.touch_fraction(name, args.touch, seed=11))
            delta, delta_info = casebridge_sync(config)
    finally:
        server.stop()
    rows = [
        ("casebridge full sync (stored)", ours, info["read"], info["rss_mb"]),
        ("edfi-api-client full pull (not stored)", theirs, their_records, None),
        (f"casebridge incremental, {args.touch:.0%} changed", delta, delta_info["read"],
         delta_info["rss_mb"]),
    ]  # fmt: skip
    print(f"\n{'step':<42}{'seconds':>10}{'records':>12}{'records/s':>12}{'peak MB':>10}")
    for name, seconds, n, rss in rows:
        mb = f"{rss:.0f}" if rss else "-"
        print(f"{name:<42}{seconds:>10.1f}{n:>12,}{n / seconds:>12,.0f}{mb:>10}")
    speedup = (info["read"] / ours) / (their_records / theirs)
    print(f"\nthroughput vs edfi-api-client: {speedup:.1f}x (target >= 3x) "
          f"{'PASS' if speedup >= 3 else 'FAIL'}")  # fmt: skip
    share = delta / ours
    print(f"incremental / full time: {share:.1%} (target < 5%) {'PASS' if share < 0.05 else 'FAIL'}"
          f"; records changed {touched:,}, read {delta_info['read']:,}")  # fmt: skip
    print(f"bench process peak RSS (server + data): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
