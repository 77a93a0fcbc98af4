"""Import, re-import and evaluation benchmark for casebridge, against a bare bulk-load baseline.

    python bench/bench_import.py [--students 100000] [--databases sqlite,postgres]
                                 [--workdir bench/.data] [--scale-check] [--keep] [--check]

Every measured step runs in its own child process, so each peak RSS belongs to that step alone.
See bench/README.md for what each figure means and the last measured numbers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "config" / "district.yaml"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED = 7
AS_OF = date(2026, 11, 20)

# The OneRoster files the importer maps (manifest.csv and categories.csv are not imported).
ONEROSTER_FILES = (
    "orgs.csv",
    "academicSessions.csv",
    "courses.csv",
    "classes.csv",
    "roles.csv",
    "users.csv",
    "enrollments.csv",
    "lineItems.csv",
    "results.csv",
)
SIS_KEYS = ("calendar", "attendance", "discipline")  # their file names come from the config
CANONICAL_TABLES = (
    "schools",
    "academic_sessions",
    "courses",
    "classes",
    "user_roles",
    "students",
    "contacts",
    "student_contacts",
    "enrollments",
    "line_items",
    "grades",
    "calendar_days",
    "attendance_events",
    "discipline_incidents",
)
EXPORT_BATCH = 10_000  # rows per pickled batch: the loader never holds a whole table

# Project targets.
MAX_IMPORT_OVER_BARE = 2.0
MAX_REIMPORT_OVER_IMPORT = 0.40
MAX_EVALUATE_SECONDS = 10.0
MAX_PEAK_RSS_MB = 500.0

RSS_MARK = "@@BENCH_MAXRSS_KB="
# Runs the real CLI entry point (the `casebridge` console script is service.cli:main) in-process
# and reports the process's own peak RSS, so the figure is this step's and nobody else's.
CLI_WRAPPER = f"""
import resource, sys
from service.cli import main
rc = 0
try:
    main(args=sys.argv[1:], prog_name="casebridge")
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
peak = max(resource.getrusage(r).ru_maxrss
           for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
sys.stderr.write("\\n{RSS_MARK}%d\\n" % peak)
sys.exit(rc)
"""


# -- child processes ----------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    peak_kb: int
    stdout: str
    stderr: str
    rows: int | None = None
    rows_label: str = ""
    load_before: float = 0.0  # 1-min load average when the step started: is the box shared?
    code: str = ""  # fingerprint of the project sources when the step started

    @property
    def peak_mb(self) -> float:
        return self.peak_kb * 1024 / 1e6  # ru_maxrss is in KiB on Linux; report 10^6 bytes

    @property
    def rate(self) -> float | None:
        return self.rows / self.seconds if self.rows and self.seconds > 0 else None


class StepFailed(RuntimeError):
    pass


def python_exe() -> str:
    # The project venv has casebridge installed; fall back to whoever runs us.
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def run_child(name: str, argv: list[str]) -> Step:
    env = dict(os.environ, COLUMNS="160")  # wide enough that rich does not elide table cells
    env.pop("DATABASE_URL", None)  # the written config holds a literal URL; keep it that way
    load = os.getloadavg()[0]
    code = code_fingerprint()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    match = re.search(rf"{re.escape(RSS_MARK)}(\d+)", proc.stderr)
    stderr = re.sub(rf"\n?{re.escape(RSS_MARK)}\d+\n?", "", proc.stderr)
    if proc.returncode != 0 or match is None:
        raise StepFailed(
            f"{name} failed (exit {proc.returncode}): {' '.join(argv[-4:])}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}"
        )
    if code_fingerprint() != code:  # edited while the child ran: it may have loaded either
        code = f"{code}->{code_fingerprint()}"
    return Step(
        name, seconds, int(match.group(1)), proc.stdout, stderr, load_before=load, code=code
    )


def run_cli(name: str, config: Path | None, *args: str) -> Step:
    prefix = ["--config", str(config)] if config else []
    return run_child(name, [python_exe(), "-c", CLI_WRAPPER, *prefix, *args])


# -- the code under test -----------------------------------------------------------------------


def code_fingerprint() -> str:
    """A digest of the project's Python sources: the code may be edited while a run is going."""
    h = hashlib.blake2b(digest_size=6)
    for package in ("service", "connectors", "mappings", "jobs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


# -- the synthetic district ---------------------------------------------------------------------


def ensure_district(workdir: Path, students: int) -> Path:
    """Generate once per size: the generator is deterministic, so a finished folder is reusable."""
    out = workdir / f"district-{students}"
    marker = out / ".bench-generated.json"
    wanted = {"students": students, "seed": SEED, "as_of": AS_OF.isoformat()}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"district: reusing {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)
    print(f"district: generating {students:,} students into {out} ...", flush=True)
    step = run_cli(
        "generate",
        None,
        "generate",
        "--students",
        str(students),
        "--seed",
        str(SEED),
        "--as-of",
        AS_OF.isoformat(),
        "--out",
        str(out),
    )
    print(f"district: generated in {step.seconds:.1f} s")
    marker.write_text(json.dumps(wanted))  # written last: a killed generation is redone
    return out


def base_config() -> dict[str, Any]:
    with BASE_CONFIG.open(encoding="utf-8") as fh:
        loaded: dict[str, Any] = yaml.safe_load(fh)
    return loaded


def imported_files(district: Path) -> list[Path]:
    """Every file the two configured sources read."""
    files = [district / "oneroster" / name for name in ONEROSTER_FILES]
    for src in base_config()["sources"]:
        if src["kind"] == "sis_csv":
            files += [district / "sis" / src[key]["file"] for key in SIS_KEYS if key in src]
    return files


def csv_rows(district: Path) -> dict[str, int]:
    """Data rows (records, not lines, minus the header) per imported file; cached per district."""
    cache = district / ".bench-csv-rows.json"
    if cache.exists():
        cached: dict[str, int] = json.loads(cache.read_text())
        return cached
    counts: dict[str, int] = {}
    for path in imported_files(district):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            counts[path.relative_to(district).as_posix()] = sum(
                1 for rec in reader if rec and any(v.strip() for v in rec)
            )
    cache.write_text(json.dumps(counts, indent=1))
    return counts


# -- databases ----------------------------------------------------------------------------------


@dataclass
class Database:
    kind: str  # sqlite | postgres
    url: str  # as written into the casebridge config
    path: Path | None = None  # SQLite file
    name: str | None = None  # PostgreSQL database
    admin_url: str = PG_ADMIN_URL

    @property
    def conninfo(self) -> str:
        return self.url  # plain postgresql:// URIs are valid libpq conninfo

    def create(self) -> None:
        if self.path is not None:
            self.drop()
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        if self.path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def count(self, table: str) -> int:
        if self.path is not None:
            with closing(sqlite3.connect(self.path)) as sconn:
                return int(sconn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        with psycopg.connect(self.conninfo) as pconn:
            row = pconn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.path is not None:
            with closing(sqlite3.connect(self.path)) as sconn:
                return list(sconn.execute(sql).fetchall())
        with psycopg.connect(self.conninfo) as pconn:
            return list(pconn.execute(sql).fetchall())


def make_database(kind: str, workdir: Path, students: int, role: str, admin_url: str) -> Database:
    if kind == "sqlite":
        path = (workdir / f"bench-{students}-{role}.db").resolve()
        return Database(kind, f"sqlite:///{path}", path=path)
    name = f"casebridge_bench_{os.getpid()}_{role}"
    base = admin_url.rsplit("/", 1)[0]
    return Database(kind, f"{base}/{name}", name=name, admin_url=admin_url)


def write_config(workdir: Path, db: Database, district: Path, tag: str) -> Path:
    """The example config, unchanged except for where the data is, goes and is read from."""
    cfg = base_config()
    cfg["database"]["url"] = db.url
    for src in cfg["sources"]:
        sub = {"oneroster_csv": "oneroster", "sis_csv": "sis"}[src["kind"]]
        src["path"] = str((district / sub).resolve())
    cfg["output_dir"] = str((workdir / f"out-{tag}").resolve())
    cfg["as_of"] = AS_OF
    path = workdir / f"config-{tag}.yaml"
    with path.open("w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False, allow_unicode=True)
    return path


# -- export and bare load -----------------------------------------------------------------------


def export_tables(db: Database, out: Path) -> dict[str, int]:
    """Dump each canonical table as a stream of pickled row-tuple batches, plus its columns."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {}
    for table in CANONICAL_TABLES:
        with (out / f"{table}.pickle").open("wb") as fh:
            columns, rows = _dump_table(db, table, fh)
        manifest[table] = {"columns": columns, "rows": rows}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {t: int(m["rows"]) for t, m in manifest.items()}


def _dump_table(db: Database, table: str, fh: Any) -> tuple[list[str], int]:
    rows = 0
    if db.path is not None:
        with closing(sqlite3.connect(db.path)) as sconn:
            cur = sconn.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            while batch := cur.fetchmany(EXPORT_BATCH):
                pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
                rows += len(batch)
        return columns, rows
    with psycopg.connect(db.conninfo) as pconn, pconn.cursor(name=f"export_{table}") as pcur:
        # A server-side cursor streams the table instead of materialising it client-side.
        pcur.execute(f"SELECT * FROM {table}")
        columns = [d.name for d in pcur.description or ()]
        while batch := pcur.fetchmany(EXPORT_BATCH):
            pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
            rows += len(batch)
    return columns, rows


def _batches(path: Path) -> Iterator[list[tuple[Any, ...]]]:
    with path.open("rb") as fh:
        while True:
            try:
                yield pickle.load(fh)
            except EOFError:
                return


def bare_load_main(argv: list[str]) -> None:
    """Child process: load the exported rows the plainest fast way the database offers."""
    ap = argparse.ArgumentParser(prog="bench_import.py _bare_load")
    ap.add_argument("--kind", choices=("sqlite", "postgres"), required=True)
    ap.add_argument("--target", required=True, help="SQLite file or PostgreSQL conninfo")
    ap.add_argument("--export", type=Path, required=True)
    args = ap.parse_args(argv)
    manifest = json.loads((args.export / "manifest.json").read_text())
    loaded: dict[str, int] = {}
    if args.kind == "sqlite":
        conn = sqlite3.connect(args.target, timeout=30, isolation_level=None)
        # The same PRAGMAs service/db.py sets on every connection.
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "temp_store=MEMORY",
            "cache_size=-65536",
        ):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN")
        for table, meta in manifest.items():
            cols = meta["columns"]
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            n = 0
            for batch in _batches(args.export / f"{table}.pickle"):
                conn.executemany(sql, batch)
                n += len(batch)
            loaded[table] = n
        conn.execute("COMMIT")
        conn.close()
    else:
        with psycopg.connect(args.target) as pconn, pconn.cursor() as cur:
            for table, meta in manifest.items():
                n = 0
                with cur.copy(f"COPY {table} ({', '.join(meta['columns'])}) FROM STDIN") as copy:
                    for batch in _batches(args.export / f"{table}.pickle"):
                        for row in batch:
                            copy.write_row(row)
                        n += len(batch)
                loaded[table] = n
            # Leaving the `with` commits: one transaction for every table.
    print(json.dumps(loaded))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stderr.write(f"\n{RSS_MARK}{peak}\n")


def run_bare_load(db: Database, export: Path) -> Step:
    target = str(db.path) if db.path is not None else db.conninfo
    argv = [
        python_exe(),
        str(Path(__file__).resolve()),
        "_bare_load",
        "--kind",
        db.kind,
        "--target",
        target,
        "--export",
        str(export),
    ]
    return run_child("bare load", argv)


# -- reading what the CLI did -------------------------------------------------------------------


def sync_totals(db: Database, sources: int) -> dict[str, int]:
    """Totals of the latest sync's per-entity stats, from the runs the importer records."""
    rows = db.query(f"SELECT stats FROM sync_runs ORDER BY id DESC LIMIT {sources}")
    totals: dict[str, int] = {}
    for (stats,) in rows:
        entities = json.loads(stats) if isinstance(stats, str) else stats
        for s in entities.values():
            for key in ("read", "inserted", "updated", "deactivated", "unchanged", "ignored"):
                totals[key] = totals.get(key, 0) + int(s[key])
            totals["quarantined"] = totals.get("quarantined", 0) + sum(s["quarantined"].values())
    return totals


def table_count(stdout: str, label: str) -> int | None:
    """A count from one of the CLI's summary tables (`students evaluated │ 20,000`)."""
    match = re.search(rf"{re.escape(label)}\s*\S?\s*([\d,]+)", stdout)
    return int(match.group(1).replace(",", "")) if match else None


# -- one database -------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    students: int
    csv_rows: int
    steps: dict[str, Step] = field(default_factory=dict)
    sync1: dict[str, int] = field(default_factory=dict)
    sync2: dict[str, int] = field(default_factory=dict)
    canonical_rows: int = 0
    students_evaluated: int | None = None
    cases_opened: int | None = None
    checks: list[tuple[str, str, str, bool]] = field(default_factory=list)
    wall_seconds: float = 0.0
    code: tuple[str, str] = ("", "")  # fingerprint of the project sources before, after


def bench_database(kind: str, args: argparse.Namespace, district: Path) -> Result:
    workdir: Path = args.workdir
    counts = csv_rows(district)
    result = Result(kind, args.students, sum(counts.values()))
    started = time.perf_counter()
    code_before = code_fingerprint()
    main_db = make_database(kind, workdir, args.students, "import", args.pg_admin_url)
    bare_db = make_database(kind, workdir, args.students, "bare", args.pg_admin_url)
    try:
        main_db.create()
        cfg = write_config(workdir, main_db, district, f"{kind}-{args.students}-import")
        print(f"[{kind}] config {cfg}; database {main_db.url}", flush=True)
        run_cli("db upgrade", cfg, "db", "upgrade")  # untimed: schema creation is not the point
        startup = run_cli("cli startup", cfg, "check-config")
        result.steps["startup"] = startup

        print(f"[{kind}] first import ...", flush=True)
        sync1 = run_cli("first import", cfg, "sync")
        sync1.rows, sync1.rows_label = result.csv_rows, "CSV rows"
        result.steps["sync1"] = sync1
        result.sync1 = sync_totals(main_db, len(base_config()["sources"]))
        print(f"[{kind}] first import: {sync1.seconds:.1f} s", flush=True)

        # Baseline: the very rows the import wrote, loaded with nothing but the driver.
        export = workdir / f"export-{kind}-{args.students}"
        exported = export_tables(main_db, export)
        result.canonical_rows = sum(exported.values())
        bare_db.create()
        bare_cfg = write_config(workdir, bare_db, district, f"{kind}-{args.students}-bare")
        run_cli("db upgrade (bare)", bare_cfg, "db", "upgrade")  # same tables, keys, indexes
        print(f"[{kind}] bare load of {result.canonical_rows:,} rows ...", flush=True)
        bare = run_bare_load(bare_db, export)
        bare.rows, bare.rows_label = result.canonical_rows, "table rows"
        result.steps["bare"] = bare
        mismatched = {t: n for t, n in exported.items() if bare_db.count(t) != n}
        if mismatched:
            raise StepFailed(f"bare load row counts differ from the export: {mismatched}")
        bare_db.drop()  # before the next steps: a second big database would skew page cache
        shutil.rmtree(export, ignore_errors=True)
        print(f"[{kind}] bare load: {bare.seconds:.1f} s", flush=True)

        print(f"[{kind}] re-import ...", flush=True)
        sync2 = run_cli("re-import", cfg, "sync")
        sync2.rows, sync2.rows_label = result.csv_rows, "CSV rows"
        result.steps["sync2"] = sync2
        result.sync2 = sync_totals(main_db, len(base_config()["sources"]))
        print(f"[{kind}] re-import: {sync2.seconds:.1f} s", flush=True)

        print(f"[{kind}] evaluate ...", flush=True)
        ev = run_cli("evaluate", cfg, "evaluate")
        result.students_evaluated = table_count(ev.stdout, "students evaluated")
        result.cases_opened = table_count(ev.stdout, "cases opened")
        if result.students_evaluated is None:  # the table changed shape: ask the database
            result.students_evaluated = main_db.count("student_indicators")
        ev.rows, ev.rows_label = result.students_evaluated, "students"
        result.steps["evaluate"] = ev
        print(f"[{kind}] evaluate: {ev.seconds:.1f} s", flush=True)
    finally:
        if not args.keep:
            for db in (main_db, bare_db):
                try:
                    db.drop()
                except (psycopg.Error, OSError) as exc:
                    print(f"[{kind}] could not drop {db.url}: {exc}", file=sys.stderr)
    result.wall_seconds = time.perf_counter() - started
    result.code = (code_before, code_fingerprint())
    result.checks = checks(result)
    return result


def checks(r: Result) -> list[tuple[str, str, str, bool]]:
    """(measure, value, target, passed) for each project target."""
    s = r.steps
    out: list[tuple[str, str, str, bool]] = []
    ratio = s["sync1"].seconds / s["bare"].seconds
    out.append(
        (
            "import time / bare load time",
            f"{ratio:.2f}",
            f"<= {MAX_IMPORT_OVER_BARE}",
            ratio <= MAX_IMPORT_OVER_BARE,
        )
    )
    ratio = s["sync2"].seconds / s["sync1"].seconds
    out.append(
        (
            "re-import time / first import time",
            f"{ratio:.3f}",
            f"< {MAX_REIMPORT_OVER_IMPORT}",
            ratio < MAX_REIMPORT_OVER_IMPORT,
        )
    )
    ev = s["evaluate"].seconds
    out.append(
        (
            "evaluation seconds",
            f"{ev:.1f}",
            f"< {MAX_EVALUATE_SECONDS:g}",
            ev < MAX_EVALUATE_SECONDS,
        )
    )
    for key in ("sync1", "sync2", "evaluate", "bare"):
        mb = s[key].peak_mb
        out.append(
            (
                f"peak RSS {s[key].name}",
                f"{mb:.0f} MB",
                f"< {MAX_PEAK_RSS_MB:g} MB",
                mb < MAX_PEAK_RSS_MB,
            )
        )
    return out


# -- printing -----------------------------------------------------------------------------------


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def print_result(r: Result, verbose: bool) -> None:
    title = (
        f"{r.kind}: {r.students:,} students, {r.csv_rows:,} CSV data rows in "
        f"{len(ONEROSTER_FILES) + len(SIS_KEYS)} files"
    )
    print(f"\n{'=' * len(title)}\n{title}\n{'=' * len(title)}")
    print(f"{'step':<30}{'seconds':>9}{'rows':>13}  {'(of)':<11}{'rows/s':>10}{'peak RSS MB':>13}")
    for key in ("startup", "sync1", "sync2", "evaluate", "bare"):
        st = r.steps[key]
        label = {
            "startup": "cli startup (check-config)",
            "sync1": "first import (sync)",
            "sync2": "re-import (sync, unchanged)",
            "evaluate": "evaluate",
            "bare": "bare bulk load (baseline)",
        }[key]
        rate = f"{st.rate:,.0f}" if st.rate else "-"
        print(
            f"{label:<30}{st.seconds:>9.2f}{fmt_int(st.rows):>13}  {st.rows_label:<11}"
            f"{rate:>10}{st.peak_mb:>13.1f}"
        )
    how = (
        "sqlite3 executemany, one transaction, the service's PRAGMAs"
        if r.kind == "sqlite"
        else "psycopg COPY ... FROM STDIN with write_row, one transaction"
    )
    print(
        "  import rows = CSV data rows of the files both sources read; bare-load rows = rows "
        f"of the {len(CANONICAL_TABLES)} canonical tables the first import wrote.\n"
        "  Bare load time INCLUDES reading those rows back from the pickled export on disk "
        f"(as the import includes reading its CSV); it is {how}.\n"
        "  Every step's time includes interpreter start-up and imports (see cli startup)."
    )
    loads = ", ".join(f"{st.name} {st.load_before:.2f}" for st in r.steps.values())
    print(f"  1-min load average as each step started ({os.cpu_count()} CPUs): {loads}")
    for name, totals in (("first import", r.sync1), ("re-import", r.sync2)):
        parts = ", ".join(f"{k} {v:,}" for k, v in totals.items())
        print(f"  {name} (sync_runs totals): {parts}")
    print(
        f"  evaluate: {fmt_int(r.students_evaluated)} students evaluated, "
        f"{fmt_int(r.cases_opened)} cases opened"
    )
    print("\nTargets")
    for measure, value, target, ok in r.checks:
        print(f"  {measure:<36}{value:>10}  {target:<10} {'PASS' if ok else 'FAIL'}")
    print(f"\n({r.kind} total wall time including set-up and export: {r.wall_seconds:.0f} s)")
    codes = {st.code for st in r.steps.values()} | set(r.code)
    if len(codes) > 1:
        which = ", ".join(f"{st.name} {st.code}" for st in r.steps.values())
        print(
            "WARNING: the project's sources changed during this run, so the steps may have "
            f"measured different code (fingerprint as each step started: {which})."
        )
    if verbose:
        for key in ("sync1", "sync2", "evaluate"):
            print(f"\n--- casebridge output: {r.steps[key].name} ---")
            print(r.steps[key].stdout.rstrip())


def save_json(r: Result, workdir: Path) -> Path:
    path = workdir / f"results-{r.kind}-{r.students}.json"
    data = {
        "database": r.kind,
        "students": r.students,
        "code_fingerprint": list(r.code),
        "csv_rows": r.csv_rows,
        "canonical_rows": r.canonical_rows,
        "students_evaluated": r.students_evaluated,
        "cases_opened": r.cases_opened,
        "sync1": r.sync1,
        "sync2": r.sync2,
        "steps": {
            k: {
                "seconds": round(s.seconds, 3),
                "rows": s.rows,
                "peak_rss_mb": round(s.peak_mb, 1),
                "load_before": round(s.load_before, 2),
                "code_fingerprint": s.code,
            }
            for k, s in r.steps.items()
        },
        "checks": [{"measure": m, "value": v, "target": t, "pass": ok} for m, v, t, ok in r.checks],
    }
    path.write_text(json.dumps(data, indent=1))
    return path


# -- scale check --------------------------------------------------------------------------------


def scale_check(args: argparse.Namespace) -> bool:
    """First import on SQLite at two sizes: peak RSS should stay flat as the district grows."""
    rows: list[tuple[int, int, Step]] = []
    for students in args.scale_sizes:
        district = ensure_district(args.workdir, students)
        n = sum(csv_rows(district).values())
        db = make_database("sqlite", args.workdir, students, "scale", args.pg_admin_url)
        try:
            db.create()
            cfg = write_config(args.workdir, db, district, f"sqlite-{students}-scale")
            run_cli("db upgrade", cfg, "db", "upgrade")
            print(f"[scale] first import of {students:,} students ...", flush=True)
            step = run_cli("first import", cfg, "sync")
            step.rows = n
        finally:
            if not args.keep:
                db.drop()
        rows.append((students, n, step))
    print("\nScale check: first import on SQLite")
    print(f"{'students':>10}{'CSV rows':>12}{'seconds':>10}{'rows/s':>10}{'peak RSS MB':>13}")
    for students, n, st in rows:
        print(
            f"{students:>10,}{n:>12,}{st.seconds:>10.1f}{st.rate or 0:>10,.0f}{st.peak_mb:>13.1f}"
        )
    (s0, _, a), (s1, _, b) = rows[0], rows[-1]
    growth = b.peak_mb / a.peak_mb
    print(
        f"peak RSS x{growth:.2f} for x{s1 / s0:.1f} students "
        f"(flat memory means close to x1.00); largest {b.peak_mb:.0f} MB, target "
        f"< {MAX_PEAK_RSS_MB:g} MB: {'PASS' if b.peak_mb < MAX_PEAK_RSS_MB else 'FAIL'}"
    )
    return b.peak_mb < MAX_PEAK_RSS_MB


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--students", type=int, default=100_000)
    ap.add_argument("--databases", default="sqlite,postgres", help="comma list: sqlite,postgres")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".data")
    ap.add_argument(
        "--pg-admin-url", default=PG_ADMIN_URL, help="where to CREATE/DROP the throwaway databases"
    )
    ap.add_argument(
        "--scale-check",
        action="store_true",
        help="only run the SQLite first import at --scale-sizes and compare peak RSS",
    )
    ap.add_argument("--scale-sizes", default="20000,100000", help="two sizes for --scale-check")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    ap.add_argument("--quiet", action="store_true", help="omit the CLI's own summary tables")
    ap.add_argument("--check", action="store_true", help="exit 1 when any target FAILs")
    args = ap.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(args.databases) - {"sqlite", "postgres"}
    if unknown:
        ap.error(f"unknown database kind(s): {', '.join(sorted(unknown))}")
    args.scale_sizes = [int(s) for s in args.scale_sizes.split(",")]
    if len(args.scale_sizes) < 2:
        ap.error("--scale-sizes needs two sizes")
    args.workdir = args.workdir.resolve()
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_bare_load"]:  # the timed child of run_bare_load
        bare_load_main(argv[1:])
        return 0
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code = code_fingerprint()
    print(f"code under test: fingerprint {code} of {ROOT}/{{service,connectors,mappings,jobs}}")
    if args.scale_check:
        ok = scale_check(args)
        print(f"\nwhole run: {time.perf_counter() - started:.0f} s")
        if code_fingerprint() != code:
            print("WARNING: the project's sources changed during this run.")
        return 0 if ok or not args.check else 1
    district = ensure_district(args.workdir, args.students)
    counts = csv_rows(district)
    print("CSV data rows per imported file: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    results: list[Result] = []
    for kind in args.databases:
        try:
            r = bench_database(kind, args, district)
        except (StepFailed, psycopg.OperationalError) as exc:
            print(f"\n[{kind}] benchmark failed: {exc}", file=sys.stderr)
            return 2
        print_result(r, verbose=not args.quiet)
        print(f"(results saved to {save_json(r, args.workdir)})")
        results.append(r)
    failed = [(r.kind, c[0]) for r in results for c in r.checks if not c[3]]
    print(
        f"\nwhole run: {time.perf_counter() - started:.0f} s; "
        f"{len(failed)} target(s) missed: {failed or 'none'}"
    )
    if code_fingerprint() != code:
        print("WARNING: the project's sources changed during this run; rerun for clean numbers.")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
